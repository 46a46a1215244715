"""Monthly median composites of a cloud-masked series: the input of the recurrent models of seed 004.

Seed 004 (Sen4AgriNet, section on the dataset's preparation for the PAD experiments) aggregates
each pixel's series "into 12 time-bins by calculating the median of each month" and trains on the
medians of April to September; its code (S4A-Models ``export_medians_multi.py``) fills months
without data by linear interpolation in time. Here:

* :func:`monthly_medians`: per pixel and calendar month, the median of the valid observations
  (``valid`` True) of the frames of that month, per channel. Vectorised per month: the month's
  frames are sorted along time with invalid observations as NaN (sorted last), and the median is
  read at the middle of the ``n`` valid values (mean of the two middle ones for even ``n``), as
  ``np.nanmedian`` does. ``counts`` is ``n`` per month and pixel.
* Months without a valid observation (``counts == 0``) are filled from the valid months of the
  same pixel: linearly interpolated in the month index between the nearest valid months before
  and after; before the first or after the last valid month, ``edges="nearest"`` (default)
  repeats the nearest valid month (the reference extrapolates linearly, which can leave the
  normalised [0, 1] range) and ``edges="zero"`` writes 0 (the pipeline's "no observation"). A
  pixel without any valid observation in the listed months is 0 in every month.
* :class:`MonthlyMedianTask`: the same on an EOPatch. eo-learn ties temporal features to the
  EOPatch's timestamps, so the M medians are stored as one timeless feature
  ``data_timeless/MONTHLY_MEDIANS`` of shape ``(H, W, M * C)`` float32, month-major (channel
  ``m * C + c`` is month ``m``, band ``c``; :func:`pack_monthly` / :func:`unpack_monthly`), with
  the calendar months in ``scalar_timeless/MONTHS`` (M,) and the counts in
  ``mask_timeless/MONTHLY_COUNTS`` (H, W, M) uint16. One feature keeps the box in one EOPatch and
  lets patch loaders crop it like any other timeless feature.

Months are calendar months 1..12 of one year: the timestamps must all fall in one calendar year
(the challenge's March to August season does). ``months=None`` takes every month from the first
to the last timestamp's month; frames outside the listed months are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from numba import njit, prange

from .masks import VALID
from .tensors import STACK

LOGGER = logging.getLogger(__name__)

MONTHLY_MEDIANS = (FeatureType.DATA_TIMELESS, "MONTHLY_MEDIANS")
MONTHLY_COUNTS = (FeatureType.MASK_TIMELESS, "MONTHLY_COUNTS")
MONTHS = (FeatureType.SCALAR_TIMELESS, "MONTHS")

Edges = Literal["nearest", "zero"]
EDGES: tuple[str, ...] = ("nearest", "zero")


def _name(feature: Feature) -> str:
    return f"{feature[0].value}/{feature[1]}"


def frame_months(timestamps: Iterable[Any]) -> np.ndarray:
    """Calendar months (1..12, int) of ``timestamps`` (datetimes, dates, ISO strings, datetime64).

    A ``ValueError`` when they span more than one calendar year: months of different years would
    be merged.
    """
    stamps = np.asarray(list(timestamps), dtype="datetime64[M]")
    if stamps.size == 0:
        raise ValueError("no timestamps: the series has no frame")
    years = np.unique(stamps.astype("datetime64[Y]"))
    if years.size > 1:
        raise ValueError(
            f"timestamps span the years {[str(y) for y in years]}: monthly medians merge calendar "
            "months, give the frames of one year"
        )
    return stamps.astype(np.int64) % 12 + 1


def resolve_months(timestamps: Iterable[Any], months: Sequence[int] | None = None) -> np.ndarray:
    """The months (int array) of the composite: ``months`` checked, or first to last frame month."""
    if months is None:
        present = frame_months(timestamps)
        return np.arange(present.min(), present.max() + 1, dtype=np.int64)
    values = np.asarray(list(months))
    if (
        values.ndim != 1
        or values.size == 0
        or not np.issubdtype(values.dtype, np.integer)
        or values.min() < 1
        or values.max() > 12
        or np.any(np.diff(values) <= 0)
    ):
        raise ValueError(f"months={months!r}: give increasing calendar months in 1..12, e.g. [4, 5, 6]")
    return values.astype(np.int64)


def series_and_valid(values: np.ndarray, valid: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``values`` as a (T, H, W, C) array and ``valid`` ((T, H, W) or (T, H, W, 1)) as a (T, H, W) bool
    array; a ``ValueError`` names a wrong shape (``name`` is what ``values`` is called in it)."""
    values = np.asarray(values)
    if values.ndim != 4:
        raise ValueError(f"{name} has shape {values.shape}: expected (T, H, W, C)")
    T, H, W, _ = values.shape
    valid = np.asarray(valid)
    if valid.shape == (T, H, W, 1):
        valid = valid[..., 0]
    if valid.shape != (T, H, W):
        raise ValueError(f"valid has shape {valid.shape}, {name} {values.shape}: expected {(T, H, W)}")
    return values, valid.astype(bool, copy=False)


@njit(parallel=True, cache=True)
def _masked_median_kernel(values: np.ndarray, valid: np.ndarray, out: np.ndarray, count: np.ndarray) -> None:
    """Per pixel and channel, the median of the valid values of (k, H, W, C) ``values`` (small k): the
    valid values are gathered into a buffer and insertion-sorted; NaN where none is valid."""
    k, height, width, channels = values.shape
    for row in prange(height):
        buffer = np.empty(k, np.float32)
        for col in range(width):
            n = 0
            for t in range(k):
                if valid[t, row, col]:
                    n += 1
            count[row, col] = n
            for ch in range(channels):
                m = 0
                for t in range(k):
                    if valid[t, row, col]:
                        value = values[t, row, col, ch]
                        i = m
                        while i > 0 and buffer[i - 1] > value:
                            buffer[i] = buffer[i - 1]
                            i -= 1
                        buffer[i] = value
                        m += 1
                if m == 0:
                    out[row, col, ch] = np.nan
                else:
                    out[row, col, ch] = (buffer[(m - 1) // 2] + buffer[m // 2]) * np.float32(0.5)


def masked_median(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over axis 0 of the valid rows: (k, H, W, C), (k, H, W) -> (H, W, C) float32, (H, W).

    NaN (and counts 0) where a pixel has no valid observation. The mean of the two middle values for
    an even count, as ``numpy.nanmedian``; a parallel numba kernel (k is a few frames).
    """
    values = np.asarray(values)
    valid = np.asarray(valid, dtype=bool)
    if values.ndim != 4 or valid.shape != values.shape[:3]:
        raise ValueError(
            f"values {values.shape} and valid {valid.shape}: expected (k, H, W, C) and (k, H, W)"
        )
    if (valid[..., None] & ~np.isfinite(values)).any():
        raise ValueError("valid observations hold NaN or infinite values: mask them as invalid")
    out = np.empty(values.shape[1:], np.float32)
    count = np.empty(values.shape[1:3], np.int64)
    _masked_median_kernel(
        np.ascontiguousarray(values, dtype=np.float32), np.ascontiguousarray(valid), out, count
    )
    return out, count


def fill_missing_months(medians: np.ndarray, has: np.ndarray, edges: Edges = "nearest") -> np.ndarray:
    """Fills, in place, the months of ``medians`` (M, H, W, C) where ``has`` (M, H, W) is False.

    Linear interpolation in the month index between the nearest months with data before and
    after; at the ends the nearest month with data (``edges="nearest"``) or 0 (``"zero"``); 0 for
    a pixel without any month with data. Only months with data are read. Returns ``medians``.
    """
    if edges not in EDGES:
        raise ValueError(f"edges={edges!r}: use one of {EDGES}")
    M = has.shape[0]
    month, row, col = np.nonzero(~has)
    if month.size == 0:
        return medians
    index = np.arange(M).reshape(M, 1, 1)
    before = np.maximum.accumulate(np.where(has, index, -1), axis=0)[month, row, col]
    after = np.minimum.accumulate(np.where(has, index, M)[::-1], axis=0)[::-1][month, row, col]
    v_before = medians[np.clip(before, 0, M - 1), row, col]  # (K, C); meaningless where before < 0
    v_after = medians[np.clip(after, 0, M - 1), row, col]
    has_before, has_after = before >= 0, after < M
    weight = ((month - before) / np.maximum(after - before, 1)).astype(np.float32)[:, None]
    both = (has_before & has_after)[:, None]
    out = np.where(both, v_before + weight * (v_after - v_before), np.float32(0))
    if edges == "nearest":
        out = np.where((has_before & ~has_after)[:, None], v_before, out)
        out = np.where((~has_before & has_after)[:, None], v_after, out)
    medians[month, row, col] = out
    return medians


def monthly_medians(
    stack: np.ndarray,
    valid: np.ndarray,
    timestamps: Sequence[Any],
    months: Sequence[int] | None = None,
    *,
    edges: Edges = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel monthly medians of the valid observations: ``(medians, counts)``.

    Args:
        stack: (T, H, W, C) values (reflectance or the normalised stack).
        valid: (T, H, W) or (T, H, W, 1) bool, True where the observation is valid.
        timestamps: T acquisition times within one calendar year.
        months: increasing calendar months 1..12 (None: first to last frame month).
        edges: how months before the first / after the last valid one are filled (module docstring).

    Returns:
        ``medians`` (M, H, W, C) float32 with the missing months filled, ``counts`` (M, H, W)
        uint16 valid observations per month (0: filled month).
    """
    stack, valid = series_and_valid(stack, valid, "stack")
    T, H, W, C = stack.shape
    timestamps = list(timestamps)
    if len(timestamps) != T:
        raise ValueError(f"{len(timestamps)} timestamps for {T} frames: give one per frame")
    of_frame = frame_months(timestamps)
    months_used = resolve_months(timestamps, months)
    medians = np.zeros((len(months_used), H, W, C), np.float32)
    counts = np.zeros((len(months_used), H, W), np.uint16)
    for m, month in enumerate(months_used):
        frames = np.flatnonzero(of_frame == month)
        if frames.size:
            median, n = masked_median(stack[frames], valid[frames])
            medians[m] = np.where(n[..., None] > 0, median, np.float32(0))
            counts[m] = n
    fill_missing_months(medians, counts > 0, edges)
    return medians, counts


def monthly_inputs(
    reflectance: np.ndarray, valid: np.ndarray, timestamps: Sequence[Any], months: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(medians (M, H, W, C) float32, valid (M, H, W) bool)``: monthly medians of the valid
    reflectance (missing months filled from their neighbours), valid where the pixel has any valid
    observation in ``months``."""
    valid = valid[..., 0] if valid.ndim == 4 else valid
    if len(timestamps) != reflectance.shape[0]:
        raise ValueError(
            f"{len(timestamps)} timestamps for {reflectance.shape[0]} frames: monthly medians need the dates"
        )
    medians, counts = monthly_medians(reflectance, valid, timestamps, months)
    observed = counts.sum(axis=0) > 0
    return medians, np.broadcast_to(observed, counts.shape).copy()


def pack_monthly(medians: np.ndarray) -> np.ndarray:
    """(M, H, W, C) -> (H, W, M * C), month-major: channel ``m * C + c``."""
    M, H, W, C = medians.shape
    return np.ascontiguousarray(medians.transpose(1, 2, 0, 3).reshape(H, W, M * C))


def unpack_monthly(packed: np.ndarray, n_months: int) -> np.ndarray:
    """(H, W, M * C) -> (M, H, W, C): the inverse of :func:`pack_monthly`."""
    H, W, MC = packed.shape
    if n_months < 1 or MC % n_months:
        raise ValueError(f"{MC} channels do not split into {n_months} months")
    return packed.reshape(H, W, n_months, MC // n_months).transpose(2, 0, 1, 3)


class MonthlyMedianTask(EOTask):
    """Monthly medians of ``input_feature`` (T, H, W, C) over ``valid_feature`` into a timeless feature.

    Writes :func:`pack_monthly` of :func:`monthly_medians` (H, W, M * C) float32 to
    ``output_feature``, the months (M,) int64 to ``months_feature`` and the counts (H, W, M)
    uint16 to ``counts_feature`` (None skips either). Defaults: the normalised ``data/STACK`` of
    :class:`s2agri.tasks.tensors.TensorStackTask` and ``mask/VALID``.
    """

    def __init__(
        self,
        input_feature: Feature = STACK,
        valid_feature: Feature = VALID,
        output_feature: Feature = MONTHLY_MEDIANS,
        months: Sequence[int] | None = None,
        *,
        counts_feature: Feature | None = MONTHLY_COUNTS,
        months_feature: Feature | None = MONTHS,
        edges: Edges = "nearest",
    ):
        self.input_feature = self.parse_feature(input_feature, allowed_feature_types=[FeatureType.DATA])
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.counts_feature = (
            None
            if counts_feature is None
            else self.parse_feature(counts_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS])
        )
        self.months_feature = (
            None
            if months_feature is None
            else self.parse_feature(months_feature, allowed_feature_types=[FeatureType.SCALAR_TIMELESS])
        )
        self.months = None if months is None else resolve_months([], months).tolist()
        if edges not in EDGES:
            raise ValueError(f"edges={edges!r}: use one of {EDGES}")
        self.edges = edges

    def execute(self, eopatch: EOPatch) -> EOPatch:
        for feature in (self.input_feature, self.valid_feature):
            if feature not in eopatch:
                raise ValueError(f"the EOPatch has no {_name(feature)}: add it or pass another feature")
        timestamps = eopatch.timestamps or []
        months = resolve_months(timestamps, self.months)
        medians, counts = monthly_medians(
            np.asarray(eopatch[self.input_feature]),
            np.asarray(eopatch[self.valid_feature]),
            timestamps,
            [int(month) for month in months],
            edges=self.edges,
        )
        eopatch[self.output_feature] = pack_monthly(medians)
        if self.counts_feature is not None:
            eopatch[self.counts_feature] = np.ascontiguousarray(counts.transpose(1, 2, 0))
        if self.months_feature is not None:
            eopatch[self.months_feature] = months
        LOGGER.debug("monthly medians of months %s", months.tolist())
        return eopatch
