"""Choosing the decision threshold of a pixel model on held-out training boxes."""

from __future__ import annotations

import numpy as np
import pytest

from s2agri.tasks.metrics import Confusion, mcc
from s2agri.workflows.train import (
    THRESHOLD_GRID,
    box_sample_weights,
    choose_threshold,
    validation_boxes,
)


def test_validation_boxes_are_spread_and_leave_two_to_fit() -> None:
    names = [f"box-{i:03d}" for i in range(8)]
    assert validation_boxes(names, 0.25) == ["box-002", "box-005"]
    assert validation_boxes(names[:3], 0.25) == ["box-001"]
    assert validation_boxes(names[:3], 0.9) == ["box-001"]  # two boxes always stay to fit on
    assert validation_boxes(names[:2], 0.5) == [] and validation_boxes(names, 0.0) == []


def test_sample_weights_undo_balanced_sampling(tmp_path) -> None:
    """4 cultivated and 2 background samples standing for 10 and 90 pixels of weight 1 and 2."""
    path = tmp_path / "box.npz"
    y = np.array([1, 1, 1, 1, 0, 0], np.uint8)
    weight = np.array([1, 1, 1, 1, 2, 2], np.float32)
    np.savez(path, y=y, weight=weight, population=np.array([90, 10]))
    labels, stands_for, counts = box_sample_weights(path)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(stands_for, [2.5, 2.5, 2.5, 2.5, 90.0, 90.0])
    assert counts.tolist() == [2, 4]


def test_the_threshold_maximises_weighted_mcc() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([0.1, 0.35, 0.62, 0.45, 0.7, 0.9])
    weight = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    threshold, scores = choose_threshold(y, proba, weight)
    # thresholds in (0.35, 0.45] keep every cultivated sample and one false positive (0.62)
    c = Confusion(tp=3, fp=1, fn=0, tn=2)
    assert scores["weighted_mcc"] == pytest.approx(round(mcc(c), 4))
    assert 0.35 < threshold <= 0.45 and threshold in THRESHOLD_GRID
    # at 0.5: tp 2 (0.7, 0.9), fp 1 (0.62), fn 1 (0.45), tn 2
    assert scores["weighted_mcc_at_0.5"] == pytest.approx(round(mcc(Confusion(tp=2, fp=1, fn=1, tn=2)), 4))
    # a heavy weight on the 0.62 background sample moves the threshold above it
    heavy = weight.copy()
    heavy[2] = 50.0
    assert 0.62 < choose_threshold(y, proba, heavy)[0] <= 0.7
