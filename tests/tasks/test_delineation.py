"""Delineation targets: extent, boundary (outlines and gaps between fields) and distance, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from eolearn.core import EOPatch

from s2agri.tasks import contract
from s2agri.tasks.delineation import (
    TARGET_BOUNDARY,
    TARGET_DISTANCE,
    TARGET_EXTENT,
    DelineationTargetsTask,
    delineation_targets,
)


def two_fields() -> np.ndarray:
    """Two 6 x 5 px fields two pixels apart (the reference's -2.5 m buffer leaves such gaps)."""
    mask = np.zeros((10, 16), bool)
    mask[2:8, 2:7] = True
    mask[2:8, 9:14] = True
    return mask


def test_extent_boundary_and_distance_by_hand() -> None:
    mask = two_fields()
    extent, boundary, distance = delineation_targets(mask)
    np.testing.assert_array_equal(extent, mask)
    # field outlines: the rims of both rectangles
    assert (
        boundary[2, 2:7].all()
        and boundary[7, 2:7].all()
        and boundary[2:8, 2].all()
        and boundary[2:8, 6].all()
    )
    assert not boundary[3:7, 3:6].any()  # interiors
    # the 2-pixel gap (columns 7-8) between the fields is boundary along the fields' rows
    assert boundary[2:8, 7:9].all()
    # background away from two fields is not: left of field 1, the corners of the box
    assert not boundary[2:8, 0].any() and not boundary[0, 0] and not boundary[9, 15]
    # distance: 1 at each field's core, 1 / peak at its rim, 0 outside
    assert distance.dtype == np.float32 and distance[~mask].max() == 0
    # field 1 (6 x 5): edt peaks at 3 (rows 4-5, column 4); its rim pixels are at 1
    assert distance[4, 4] == pytest.approx(1.0) and distance[2, 4] == pytest.approx(1 / 3)
    assert distance[4, 11] == pytest.approx(1.0)


def test_fields_apart_by_more_than_the_gap_have_no_boundary_between() -> None:
    mask = np.zeros((8, 20), bool)
    mask[2:6, 2:6] = True
    mask[2:6, 12:16] = True  # 6 px apart
    _, boundary, _ = delineation_targets(mask)
    assert not boundary[:, 7:11].any()


def test_task_writes_the_three_targets_and_rejects_bad_input() -> None:
    patch = EOPatch()
    patch[contract.CULTIVATED] = two_fields()[..., None]
    DelineationTargetsTask().execute(patch)
    assert patch[TARGET_EXTENT].shape == (10, 16, 1) and patch[TARGET_EXTENT].dtype == bool
    assert patch[TARGET_BOUNDARY].dtype == bool and patch[TARGET_DISTANCE].dtype == np.float32
    with pytest.raises(ValueError, match="gap_px"):
        DelineationTargetsTask(gap_px=0)
    with pytest.raises(ValueError, match="expected"):
        delineation_targets(np.zeros((2, 3, 4), bool))
