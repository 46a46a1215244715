"""Object scores of predicted parcels: hand-made label images with known matches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine

from s2agri.tasks.objects import (
    ObjectCounts,
    object_counts,
    object_scores,
    predicted_objects,
    reference_objects,
)


def test_exact_split_and_merged_fields_by_hand() -> None:
    reference = np.zeros((10, 30), np.int64)
    reference[:, 0:10] = 1  # field A, 100 px: predicted exactly
    reference[:, 12:20] = 2  # field B, 80 px: split in three predictions (24, 24, 32 px)
    reference[:, 22:26] = 3  # fields C and D (40 px each) merged in one prediction of 100 px
    reference[:, 26:30] = 4
    predicted = np.zeros_like(reference)
    predicted[:, 0:10] = 1
    predicted[:3, 12:20] = 2
    predicted[3:6, 12:20] = 3
    predicted[6:, 12:20] = 4
    predicted[:, 20:30] = 5
    counts = object_counts(reference, predicted)
    assert (counts.n_reference, counts.n_predicted, counts.matched) == (4, 5, 1)
    assert counts.ious == [1.0]  # B's best IoU is 32 / 80, C's and D's 40 / 100: below 0.5
    scores = object_scores(counts)
    assert scores["object_precision"] == pytest.approx(1 / 5) and scores["object_recall"] == 0.25
    assert scores["object_f1"] == pytest.approx(2 * 1 / 9) and scores["median_iou"] == 1.0
    # over-segmentation 1 - best intersection / reference: A 0, B 1 - 32/80, C 0, D 0
    assert scores["over_segmentation"] == pytest.approx((0 + 0.6 + 0 + 0) / 4)
    # under-segmentation 1 - best intersection / best prediction: A 0, B 1 - 32/32, C and D 1 - 40/100
    assert scores["under_segmentation"] == pytest.approx((0 + 0 + 0.6 + 0.6) / 4)


def test_iou_threshold_and_one_to_one_matching() -> None:
    reference = np.zeros((4, 10), np.int64)
    reference[:, :4] = 1  # 16 px
    predicted = np.zeros_like(reference)
    predicted[:, :6] = 1  # IoU 16 / 24 = 0.667: a match
    counts = object_counts(reference, predicted)
    assert counts.matched == 1 and counts.ious == [pytest.approx(2 / 3)]
    predicted[:, :9] = 1  # IoU 16 / 36 = 0.444: no match
    assert object_counts(reference, predicted).matched == 0


def test_no_prediction_and_no_reference() -> None:
    reference = np.zeros((5, 5), np.int64)
    reference[1:3, 1:3] = 1
    empty = np.zeros_like(reference)
    scores = object_scores(object_counts(reference, empty))
    assert scores["object_recall"] == 0.0 and math.isnan(scores["object_precision"])
    assert (
        scores["object_f1"] == 0.0
        and scores["over_segmentation"] == 1.0
        and scores["under_segmentation"] == 0.0
    )
    scores = object_scores(object_counts(empty, reference))
    assert scores["n_reference"] == 0 and math.isnan(scores["object_recall"])


def test_counts_pool_over_boxes() -> None:
    pooled = ObjectCounts(3, 2, 1, [0.8], 0.5, 0.1) + ObjectCounts(1, 4, 1, [0.6], 0.0, 0.3)
    scores = object_scores(pooled)
    assert (pooled.n_reference, pooled.n_predicted, pooled.matched) == (4, 6, 2)
    assert scores["object_f1"] == pytest.approx(2 * 2 / 10) and scores["median_iou"] == pytest.approx(0.7)


def test_reference_objects_are_8_connected_and_small_ones_dropped() -> None:
    cultivated = np.zeros((30, 30), bool)
    cultivated[0:10, 0:10] = True
    cultivated[10:20, 10:20] = True  # touches the first one diagonally: one 8-connected object
    cultivated[25:27, 25:27] = True  # 4 px: below the 160 px of 0.1 ha
    labels = reference_objects(cultivated)
    assert labels.max() == 1 and (labels > 0).sum() == 200
    assert reference_objects(cultivated, min_pixels=4).max() == 2


def test_predicted_objects_rasterise_polygons_on_the_grid() -> None:
    transform = Affine(2.5, 0, 1000.0, 0, -2.5, 2000.0)  # 2.5 m pixels from (1000, 2000) down
    field = shapely.box(1000, 1950, 1050, 2000)  # 20 x 20 px in the top-left corner
    tiny = shapely.box(1100, 1990, 1105, 1995)  # 2 x 2 px
    labels = predicted_objects([field, tiny], transform, (40, 60))
    assert labels.max() == 1 and (labels[:20, :20] == 1).all() and (labels > 0).sum() == 400
    not_declared = np.zeros((40, 60), bool)
    not_declared[:20, :15] = True  # 75 % of the field
    assert predicted_objects([field], transform, (40, 60), not_declared=not_declared).max() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        object_counts(labels, labels[:10])
