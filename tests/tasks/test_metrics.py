"""Weighted confusion counts and scores against scikit-learn and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from s2agri.tasks.metrics import (
    SCORE_KEYS,
    Confusion,
    accuracy,
    box_confusions,
    box_scores,
    confusion,
    f1,
    mcc,
    pool_confusions,
    pool_scores,
    summarise,
)
from s2agri.tasks.weights import weight_map


def random_box(seed: int, shape: tuple[int, int] = (60, 50)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, a noisy prediction of it, and a NOT_DECLARED mask."""
    rng = np.random.default_rng(seed)
    truth = rng.random(shape) < 0.4
    pred = np.where(rng.random(shape) < 0.25, ~truth, truth)
    not_declared = rng.random(shape) < 0.1
    return truth, pred, not_declared


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(5000) < 0.3
    pred = np.where(rng.random(5000) < 0.3, ~truth, truth)
    weights = rng.gamma(2.0, size=5000)
    weights[rng.random(5000) < 0.1] = 0
    c = confusion(truth, pred, weights)
    assert mcc(c) == pytest.approx(matthews_corrcoef(truth, pred, sample_weight=weights), abs=1e-12)
    assert f1(c) == pytest.approx(f1_score(truth, pred, sample_weight=weights), abs=1e-12)
    assert accuracy(c) == pytest.approx(accuracy_score(truth, pred, sample_weight=weights), abs=1e-12)
    unweighted = confusion(truth, pred)
    assert mcc(unweighted) == pytest.approx(matthews_corrcoef(truth, pred), abs=1e-12)
    assert f1(unweighted) == pytest.approx(f1_score(truth, pred), abs=1e-12)
    assert accuracy(unweighted) == pytest.approx(accuracy_score(truth, pred), abs=1e-12)


def test_hand_computed_confusion() -> None:
    truth = np.array([[True, True], [False, False]])
    pred = np.array([[True, False], [True, False]])
    weights = np.array([[2.0, 3.0], [5.0, 7.0]])
    c = confusion(truth, pred, weights)
    assert c == Confusion(tp=2.0, fp=5.0, fn=3.0, tn=7.0)
    assert c.total == 17.0
    assert mcc(c) == pytest.approx((2 * 7 - 5 * 3) / math.sqrt(7 * 5 * 12 * 10))
    assert f1(c) == pytest.approx(4 / 12)
    assert accuracy(c) == pytest.approx(9 / 17)
    assert confusion(truth, pred) == Confusion(1.0, 1.0, 1.0, 1.0)
    excluded = confusion(truth, pred, weights, exclude=np.array([[False, True], [False, False]]))
    assert excluded == Confusion(tp=2.0, fp=5.0, fn=0.0, tn=7.0)


def test_degenerate_cases_follow_sklearn() -> None:
    truth = np.array([True, False, True, False, False])
    none = np.zeros(5, dtype=bool)
    c = confusion(truth, none)
    assert mcc(c) == 0.0 == matthews_corrcoef(truth, none)
    assert f1(c) == 0.0 == f1_score(truth, none, zero_division=0)
    assert accuracy(c) == pytest.approx(0.6)
    all_negative = confusion(none, none)
    assert mcc(all_negative) == 0.0 and f1(all_negative) == 0.0 and accuracy(all_negative) == 1.0
    empty = Confusion()
    assert mcc(empty) == 0.0 and f1(empty) == 0.0 and math.isnan(accuracy(empty))
    assert mcc(confusion(truth, truth)) == pytest.approx(1.0)
    assert mcc(confusion(truth, ~truth)) == pytest.approx(-1.0)


def test_confusion_input_checks() -> None:
    with pytest.raises(ValueError):
        confusion(np.zeros(4, bool), np.zeros(5, bool))
    with pytest.raises(ValueError):
        confusion(np.zeros(4, bool), np.zeros(4, bool), weights=np.ones(3))
    with pytest.raises(ValueError):
        confusion(np.zeros(4, bool), np.zeros(4, bool), exclude=np.zeros(3, bool))


def test_box_scores_variants() -> None:
    truth, pred, nd = random_box(4)
    weights = weight_map(truth, nd)
    result = box_scores(truth, pred, nd, weights)
    assert tuple(result) == SCORE_KEYS
    keep = ~nd.ravel()
    t, p = truth.ravel(), pred.ravel()
    assert result["weighted_mcc"] == pytest.approx(matthews_corrcoef(t, p, sample_weight=weights.ravel()))
    assert result["mcc_full"] == pytest.approx(matthews_corrcoef(t, p))
    assert result["mcc_mask"] == pytest.approx(matthews_corrcoef(t[keep], p[keep]))
    assert result["f1_full"] == pytest.approx(f1_score(t, p))
    assert result["f1_mask"] == pytest.approx(f1_score(t[keep], p[keep]))
    assert result["acc_full"] == pytest.approx(accuracy_score(t, p))
    assert result["acc_mask"] == pytest.approx(accuracy_score(t[keep], p[keep]))
    assert box_scores(truth, pred, nd) == result  # weights computed from truth when omitted
    assert box_scores(truth[..., None], pred[..., None], nd[..., None], weights[..., None]) == result


def test_pooled_equals_concatenation() -> None:
    boxes = [random_box(seed, shape) for seed, shape in ((10, (40, 40)), (11, (30, 50)), (12, (64, 64)))]
    per_box = [box_confusions(t, p, nd) for t, p, nd in boxes]
    pooled = pool_scores(per_box)
    truth = np.concatenate([t.ravel() for t, _, _ in boxes])
    pred = np.concatenate([p.ravel() for _, p, _ in boxes])
    keep = ~np.concatenate([nd.ravel() for _, _, nd in boxes])
    weights = np.concatenate([weight_map(t, nd).ravel() for t, _, nd in boxes])
    assert pooled["weighted_mcc"] == pytest.approx(matthews_corrcoef(truth, pred, sample_weight=weights))
    assert pooled["mcc_full"] == pytest.approx(matthews_corrcoef(truth, pred))
    assert pooled["mcc_mask"] == pytest.approx(matthews_corrcoef(truth[keep], pred[keep]))
    assert pooled["f1_mask"] == pytest.approx(f1_score(truth[keep], pred[keep]))
    assert pooled["acc_full"] == pytest.approx(accuracy_score(truth, pred))
    summed = pool_confusions(per_box)["weighted"]
    assert summed == Confusion.sum(box["weighted"] for box in per_box)
    assert summed.total == pytest.approx(weights.sum())
    assert pooled["weighted_mcc"] != pytest.approx(np.mean([mcc(b["weighted"]) for b in per_box]), abs=1e-9)


def test_summarise_mean_and_std() -> None:
    rows = [{"weighted_mcc": 0.5, "mcc_full": 0.2}, {"weighted_mcc": 0.7, "mcc_full": math.nan}]
    summary = summarise(rows)
    assert summary["weighted_mcc"]["mean"] == pytest.approx(0.6)
    assert summary["weighted_mcc"]["std"] == pytest.approx(0.1)
    assert summary["mcc_full"] == {"mean": 0.2, "std": 0.0}  # NaN ignored
    assert summarise(rows, ddof=1)["weighted_mcc"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summarise([]) == {}
