"""Crop-calendar features of a cloud-masked series: seasonal composites, index percentiles, context.

Averaging statistics over time (seed 000's 5x5 recipe, :mod:`s2agri.tasks.stats5x5`) throws away
*when* a field is green or bare, which is what separates arable land from grassland (no bare-soil
phase) and from forest (green all season). This feature set keeps the calendar:

* **seasonal composites**: the season (default 1 March to 1 September) is cut into ``n_windows``
  equal windows of days; per window and pixel, the median of the valid observations of every band
  and spectral index (:data:`INDICES`). Windows without a valid observation are filled from the
  neighbouring windows (:func:`s2agri.tasks.monthly.fill_missing_months`).
* **season percentiles** of each index over all valid observations (e.g. NDVI p10/p50/p90) and
  the number of valid observations.
* **neighbourhood context**: the ``neighbourhood x neighbourhood`` mean and standard deviation of
  each index composite over the valid pixels around (edges, field texture), as seed 000's 5x5
  statistics do for single frames.

A pixel without any valid observation gets NaN in every feature (the prediction marks it nodata).
Everything is vectorised numpy (one sort per window and index); memory stays at a few copies of
one window's frames.

Feature names (``meta_info["SEASONAL_FEATURES"]``): ``w{k}_{band}`` for window ``k`` (0-based),
``{index}_p{q}``, ``n_valid``, ``w{k}_{index}_nbmean`` / ``_nbstd``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from scipy import ndimage

from . import contract
from .masks import REFLECTANCE, VALID
from .monthly import fill_missing_months, masked_median, series_and_valid

LOGGER = logging.getLogger(__name__)

SEASONAL = (FeatureType.DATA_TIMELESS, "SEASONAL")

#: Normalised differences ``(a - b) / (a + b)`` of two bands.
INDICES: dict[str, tuple[str, str]] = {
    "NDVI": ("B08", "B04"),  # vegetation
    "NDWI": ("B03", "B08"),  # open water / canopy water (McFeeters)
    "NDMI": ("B08", "B11"),  # leaf moisture
    "NBR": ("B08", "B12"),  # bare soil and senescence vs green
}
DEFAULT_INDICES: tuple[str, ...] = tuple(INDICES)


def _month_day(value: str) -> tuple[int, int]:
    try:
        month, day = (int(part) for part in value.split("-"))
        dt.date(2001, month, day)
    except ValueError as exc:
        raise ValueError(f"season bound {value!r} is not a month-day like '03-01'") from exc
    return month, day


def window_of_frames(
    timestamps: Sequence[Any], n_windows: int, start: str = "03-01", end: str = "09-01"
) -> np.ndarray:
    """The window (0..n_windows-1) of every frame; -1 for frames outside ``[start, end)`` of the year of
    the first frame. Windows are equal spans of days."""
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    stamps = np.asarray(list(timestamps), dtype="datetime64[D]")
    if stamps.size == 0:
        raise ValueError("no timestamps: the series has no frame")
    year = int(str(stamps.min().astype("datetime64[Y]")))
    first = np.datetime64(dt.date(year, *_month_day(start)))
    last = np.datetime64(dt.date(year, *_month_day(end)))
    span = int((last - first).astype(int))
    if span <= 0:
        raise ValueError(f"season {start}..{end} is empty: the end must come after the start")
    offset = (stamps - first).astype(np.int64)
    window = np.floor(offset * n_windows / span).astype(np.int64)
    window[(offset < 0) | (offset >= span)] = -1
    return window


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` in float32, 0 where ``a + b == 0``."""
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total != 0, (a - b) / total, np.float32(0))
    return out.astype(np.float32, copy=False)


def _with_indices(reflectance: np.ndarray, band_index: dict[str, int], indices: Sequence[str]) -> np.ndarray:
    """(k, H, W, C) reflectance -> (k, H, W, C + len(indices)) with the indices appended."""
    extra = [
        normalised_difference(reflectance[..., band_index[a]], reflectance[..., band_index[b]])
        for a, b in (INDICES[name] for name in indices)
    ]
    reflectance = reflectance.astype(np.float32, copy=False)
    return np.concatenate([reflectance, np.stack(extra, axis=-1)], axis=-1) if extra else reflectance


def _masked_percentiles(values: np.ndarray, valid: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Per pixel, linear-interpolated percentiles of the valid values along axis 0: (T, H, W) -> (P, H, W)."""
    data = np.where(valid, values, np.float32(np.nan))
    data.sort(axis=0)  # NaN last
    n = valid.sum(axis=0)
    out = np.full((len(percentiles), *values.shape[1:]), np.nan, np.float32)
    top = np.maximum(n - 1, 0)
    for i, q in enumerate(percentiles):
        position = top * (q / 100.0)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, top)
        frac = (position - low).astype(np.float32)
        a = np.take_along_axis(data, low[None], axis=0)[0]
        b = np.take_along_axis(data, high[None], axis=0)[0]
        out[i] = np.where(n > 0, a + frac * (b - a), np.float32(np.nan))
    return out


def _neighbourhood_mean_std(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the finite values in each ``size x size`` window (NaN where none)."""
    finite = np.isfinite(image)
    values = np.where(finite, image, 0).astype(np.float64)
    count = ndimage.uniform_filter(finite.astype(np.float64), size, mode="constant")
    total = ndimage.uniform_filter(values, size, mode="constant")
    squares = ndimage.uniform_filter(values * values, size, mode="constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    none = count < 0.5 / size**2
    mean[none] = np.nan
    std[none] = np.nan
    return mean.astype(np.float32), std.astype(np.float32)


def seasonal_features(
    reflectance: np.ndarray,
    valid: np.ndarray,
    timestamps: Sequence[Any],
    *,
    n_windows: int = 6,
    season: tuple[str, str] = ("03-01", "09-01"),
    indices: Sequence[str] = DEFAULT_INDICES,
    percentiles: Sequence[float] = (10.0, 50.0, 90.0),
    neighbourhood: int = 5,
    band_names: Sequence[str] = contract.BAND_NAMES,
) -> tuple[np.ndarray, list[str]]:
    """The (H, W, F) float32 crop-calendar features of a series and their names (module docstring).

    :param reflectance: (T, H, W, C) reflectance.
    :param valid: (T, H, W) or (T, H, W, 1) bool, True for usable observations.
    :param timestamps: T acquisition times.
    :param n_windows: equal windows of the season; each gives a median composite of bands and indices.
    :param season: first and last day (``MM-DD``, end excluded) of the season.
    :param indices: names of :data:`INDICES` added to the bands (composites, percentiles, context).
    :param percentiles: season percentiles (0..100) of every index; empty for none.
    :param neighbourhood: odd window side of the context statistics of the index composites; 0 for none.
    """
    reflectance, valid = series_and_valid(reflectance, valid, "reflectance")
    T, H, W, C = reflectance.shape
    valid = valid & np.isfinite(reflectance).all(axis=-1)
    if len(band_names) != C:
        raise ValueError(f"{len(band_names)} band names for {C} bands: name every band")
    unknown = [name for name in indices if name not in INDICES]
    if unknown:
        raise ValueError(f"unknown indices {unknown}: choose from {list(INDICES)}")
    band_index = {name: i for i, name in enumerate(band_names)}
    missing = sorted({band for name in indices for band in INDICES[name]} - set(band_index))
    if missing:
        raise ValueError(f"indices {list(indices)} need bands {missing}, which the stack does not name")
    if neighbourhood and (neighbourhood < 1 or neighbourhood % 2 == 0):
        raise ValueError(f"neighbourhood must be 0 or an odd window side, got {neighbourhood}")
    if any(not 0 <= q <= 100 for q in percentiles):
        raise ValueError(f"percentiles must lie in 0..100, got {list(percentiles)}")
    if len(timestamps) != T:
        raise ValueError(f"{len(timestamps)} timestamps for {T} frames: give one per frame")

    channel_names = [*band_names, *indices]
    window = window_of_frames(timestamps, n_windows, *season)
    composites = np.zeros((n_windows, H, W, len(channel_names)), np.float32)
    has = np.zeros((n_windows, H, W), bool)
    for k in range(n_windows):
        frames = np.flatnonzero(window == k)
        if frames.size:
            stack = _with_indices(reflectance[frames], band_index, indices)
            median, n = masked_median(stack, valid[frames])
            composites[k] = np.where(n[..., None] > 0, median, np.float32(0))
            has[k] = n > 0
    fill_missing_months(composites, has, "nearest")
    in_season = window >= 0
    n_valid = valid[in_season].sum(axis=0)
    observed = n_valid > 0
    composites[:, ~observed] = np.nan

    blocks = [composites.transpose(1, 2, 0, 3).reshape(H, W, -1)]
    names = [f"w{k}_{name}" for k in range(n_windows) for name in channel_names]
    season_frames = np.flatnonzero(in_season)
    for name in indices:
        a, b = INDICES[name]
        series = normalised_difference(
            reflectance[season_frames, ..., band_index[a]], reflectance[season_frames, ..., band_index[b]]
        )
        if percentiles:
            blocks.append(_masked_percentiles(series, valid[season_frames], percentiles).transpose(1, 2, 0))
            names += [f"{name}_p{q:g}" for q in percentiles]
    blocks.append(np.where(observed, n_valid, np.nan).astype(np.float32)[..., None])
    names.append("n_valid")
    if neighbourhood:
        context = []
        for k in range(n_windows):
            for i, name in enumerate(indices):
                mean, std = _neighbourhood_mean_std(composites[k, ..., C + i], neighbourhood)
                context += [mean, std]
                names += [f"w{k}_{name}_nbmean", f"w{k}_{name}_nbstd"]
        blocks.append(np.stack(context, axis=-1))
    features = np.concatenate(blocks, axis=-1).astype(np.float32, copy=False)
    features[~observed] = np.nan
    return features, names


class SeasonalFeaturesTask(EOTask):
    """Adds the (H, W, F) crop-calendar features (:func:`seasonal_features`) as a timeless feature.

    Reads the reflectance and validity of :class:`~s2agri.tasks.masks.ReflectanceTask` and
    :class:`~s2agri.tasks.masks.ValidMaskTask` and the EOPatch's timestamps; the feature names go to
    ``meta_info[f"{name}_FEATURES"]`` (``SEASONAL_FEATURES`` by default).
    """

    def __init__(
        self,
        input_feature: Feature = REFLECTANCE,
        valid_feature: Feature = VALID,
        output_feature: Feature = SEASONAL,
        *,
        n_windows: int = 6,
        season: tuple[str, str] = ("03-01", "09-01"),
        indices: Sequence[str] = DEFAULT_INDICES,
        percentiles: Sequence[float] = (10.0, 50.0, 90.0),
        neighbourhood: int = 5,
    ) -> None:
        self.input_feature = self.parse_feature(input_feature, allowed_feature_types=[FeatureType.DATA])
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        window_of_frames(["2019-03-01"], n_windows, *season)  # checks the options early
        self.options: dict[str, Any] = {
            "n_windows": int(n_windows),
            "season": tuple(season),
            "indices": tuple(indices),
            "percentiles": tuple(float(q) for q in percentiles),
            "neighbourhood": int(neighbourhood),
        }

    def execute(self, eopatch: EOPatch) -> EOPatch:
        for feature in (self.input_feature, self.valid_feature):
            if feature not in eopatch:
                raise ValueError(f"the EOPatch has no {feature[0].value}/{feature[1]}: add it first")
        reflectance = eopatch[self.input_feature]
        band_names = (
            contract.BAND_NAMES
            if reflectance.shape[-1] == len(contract.BAND_NAMES)
            else tuple(f"band{i:02d}" for i in range(reflectance.shape[-1]))
        )
        features, names = seasonal_features(
            reflectance,
            eopatch[self.valid_feature],
            eopatch.timestamps or [],
            band_names=band_names,
            **self.options,
        )
        eopatch[self.output_feature] = features
        eopatch.meta_info[f"{self.output_feature[1]}_FEATURES"] = names
        LOGGER.debug("%s: %d crop-calendar features", self.output_feature[1], len(names))
        return eopatch
