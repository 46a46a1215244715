"""Scores by parcel size and the 10 m version of a 2.5 m map, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from s2agri.tasks.metrics import Confusion
from s2agri.tasks.resolution import coarse_prediction, parcel_sizes, size_group_confusions


def test_parcel_sizes_counts_each_parcel() -> None:
    index = np.array([[-1, 0, 0], [1, 1, 1], [2, -1, 1]])
    assert parcel_sizes(index).tolist() == [[0, 2, 2], [4, 4, 4], [1, 0, 4]]
    assert parcel_sizes(np.full((2, 2), -1)).tolist() == [[0, 0], [0, 0]]


def test_size_groups_split_pixels_and_skip_background_and_not_declared() -> None:
    sizes = np.array([[0, 2, 2], [5, 5, 5], [5, 5, 0]])
    truth = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    pred = np.array([[0, 1, 1], [1, 0, 0], [0, 1, 1]], bool)
    not_declared = np.zeros((3, 3), bool)
    not_declared[2, 0] = True
    groups = size_group_confusions(truth, pred, sizes, not_declared, small_px=3)
    # small: (0,1) tp, (0,2) fp; large: (1,0) tp, (1,1) fn, (1,2) tn, (2,1) fp; (2,0) not declared
    assert groups["small"] == Confusion(tp=1, fp=1, fn=0, tn=0)
    assert groups["large"] == Confusion(tp=1, fp=1, fn=1, tn=1)


def test_coarse_prediction_averages_blocks_then_repeats() -> None:
    proba = np.zeros((4, 8))
    proba[:2, :4] = 1.0  # block 0: mean 0.5 -> True at 0.5
    proba[0, 4] = 1.0  # block 1: mean 1/16 -> False
    out = coarse_prediction(proba, threshold=0.5)
    assert out.shape == (4, 8) and out[:, :4].all() and not out[:, 4:].any()
    assert not coarse_prediction(proba, threshold=0.6).any()
    with pytest.raises(ValueError, match="multiples of 4"):
        coarse_prediction(np.zeros((5, 8)))
