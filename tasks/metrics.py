"""Weighted confusion counts and the scores of the challenge (``../shared/spec/weighted-mcc.md``).

A :class:`Confusion` holds float64 (weighted) counts and is additive, so the pooled score of
a set of boxes is the score of the sum of their confusions. :func:`box_confusions` gives the
three variants of the seed papers for one box: ``full`` (unweighted, every pixel), ``mask``
(unweighted, NOT_DECLARED excluded) and ``weighted`` (the challenge weight map).
Degenerate denominators follow scikit-learn: MCC and F1 are 0, accuracy of an empty set is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from .weights import weight_map

#: Variants of a box's confusion, in report order.
VARIANTS: tuple[str, ...] = ("full", "mask", "weighted")
#: Keys of :func:`box_scores` and :func:`pool_scores`, in report order.
SCORE_KEYS: tuple[str, ...] = (
    "weighted_mcc",
    "mcc_full",
    "mcc_mask",
    "f1_full",
    "f1_mask",
    "acc_full",
    "acc_mask",
)

BoxConfusions = Mapping[str, "Confusion"]


@dataclass(frozen=True)
class Confusion:
    """(Weighted) counts of a binary confusion matrix, positive = True."""

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0

    def __add__(self, other: Confusion) -> Confusion:
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def total(self) -> float:
        return self.tp + self.fp + self.fn + self.tn

    @classmethod
    def sum(cls, confusions: Iterable[Confusion]) -> Confusion:
        """The sum of confusions (the empty sum is all zeros)."""
        total = cls()
        for item in confusions:
            total = total + item
        return total


def _flat_bool(array: np.ndarray) -> np.ndarray:
    """A contiguous 1-D boolean copy or view of ``array``."""
    return np.ascontiguousarray(np.asarray(array).astype(bool, copy=False).reshape(-1))


def confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    weights: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> Confusion:
    """Confusion counts of boolean ``y_pred`` against ``y_true`` (any equal shapes).

    ``weights`` are per-pixel sample weights (None: 1 each); ``exclude`` marks pixels left out.
    """
    truth = _flat_bool(y_true)
    pred = _flat_bool(y_pred)
    if truth.size != pred.size:
        raise ValueError(f"y_true has {truth.size} values, y_pred {pred.size}")
    code = truth.view(np.uint8) * np.uint8(2) + pred.view(np.uint8)  # 0 tn, 1 fp, 2 fn, 3 tp
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != truth.size:
            raise ValueError(f"weights have {w.size} values, labels {truth.size}")
    if exclude is not None:
        keep = ~_flat_bool(exclude)
        if keep.size != truth.size:
            raise ValueError(f"exclude has {keep.size} values, labels {truth.size}")
        code = code[keep]
        w = None if w is None else w[keep]
    tn, fp, fn, tp = np.bincount(code, weights=w, minlength=4).astype(np.float64)
    return Confusion(tp=float(tp), fp=float(fp), fn=float(fn), tn=float(tn))


def mcc(c: Confusion) -> float:
    """Matthews correlation coefficient; 0 when a factor of the denominator is 0 (as sklearn)."""
    factors = (c.tp + c.fp, c.tp + c.fn, c.tn + c.fp, c.tn + c.fn)
    if min(factors) <= 0:
        return 0.0
    denominator = math.sqrt(factors[0] * factors[1]) * math.sqrt(factors[2] * factors[3])
    return (c.tp * c.tn - c.fp * c.fn) / denominator


def f1(c: Confusion) -> float:
    """F1 of the positive class; 0 when there are no true or predicted positives (as sklearn)."""
    denominator = 2 * c.tp + c.fp + c.fn
    return 2 * c.tp / denominator if denominator > 0 else 0.0


def accuracy(c: Confusion) -> float:
    """Fraction (of weight) classified correctly; NaN for an empty confusion."""
    total = c.total
    return (c.tp + c.tn) / total if total > 0 else math.nan


def box_confusions(
    truth: np.ndarray,
    pred: np.ndarray,
    not_declared: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, Confusion]:
    """The ``full``, ``mask`` and ``weighted`` confusions of one box.

    ``weights`` is the challenge weight map; None computes it from ``truth`` and
    ``not_declared`` with :func:`s2agri.tasks.weights.weight_map`.
    """
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    if weights is None:
        weights = weight_map(truth, not_declared)
    return {
        "full": confusion(truth, pred),
        "mask": confusion(truth, pred, exclude=not_declared),
        "weighted": confusion(truth, pred, weights=weights),
    }


def scores(confusions: BoxConfusions) -> dict[str, float]:
    """The :data:`SCORE_KEYS` scores of a mapping with the :data:`VARIANTS` confusions."""
    full, masked, weighted = (confusions[v] for v in VARIANTS)
    return {
        "weighted_mcc": mcc(weighted),
        "mcc_full": mcc(full),
        "mcc_mask": mcc(masked),
        "f1_full": f1(full),
        "f1_mask": f1(masked),
        "acc_full": accuracy(full),
        "acc_mask": accuracy(masked),
    }


def box_scores(
    truth: np.ndarray,
    pred: np.ndarray,
    not_declared: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-box scores (:data:`SCORE_KEYS`); see :func:`box_confusions` for the arguments."""
    return scores(box_confusions(truth, pred, not_declared, weights))


def pool_confusions(per_box: Iterable[BoxConfusions]) -> dict[str, Confusion]:
    """Sum of per-box confusions, per variant."""
    per_box = list(per_box)
    return {v: Confusion.sum(box[v] for box in per_box) for v in VARIANTS}


def pool_scores(per_box: Iterable[BoxConfusions]) -> dict[str, float]:
    """Scores over all pixels of all boxes (the challenge score is ``weighted_mcc`` of this)."""
    return scores(pool_confusions(per_box))


def summarise(rows: Sequence[Mapping[str, float]], ddof: int = 0) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over boxes of each metric: ``{metric: {"mean", "std"}}``.

    ``rows`` are per-box score dicts (e.g. from :func:`box_scores`); NaNs are ignored.
    ``ddof=0`` gives the population standard deviation.
    """
    if not rows:
        return {}
    keys = [k for k in rows[0] if all(k in row for row in rows)]
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([row[key] for row in rows], dtype=np.float64)
        finite = values[~np.isnan(values)]
        if finite.size > ddof:
            summary[key] = {"mean": float(finite.mean()), "std": float(finite.std(ddof=ddof))}
        else:
            summary[key] = {"mean": float(finite.mean()) if finite.size else math.nan, "std": math.nan}
    return summary
