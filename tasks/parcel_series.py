"""Inputs and targets of the parcel classifiers from a ``PARCEL_STATS`` table (:mod:`s2agri.tasks.zonal`).

* :func:`parcel_model_inputs`: the (N, T', 2C) series of means and stds per parcel, per frame or per
  month (:func:`monthly_composites`, seed 004's monthly median binning), with day-of-year positions;
* :func:`fill_missing`: missing steps filled forward, backward, then with zeros;
* :func:`parcel_targets`: cultivated targets and the weights that drop undeclared parcels.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from .zonal import CULTIVATED_VALUES, DEFAULT_MONTHS, read_parcel_series


def _missing_steps(series: np.ndarray) -> np.ndarray:
    return np.isnan(series).any(axis=-1)


def fill_missing(series: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
    """(N, T, F) series with missing time steps filled: forward fill in time, then backward fill, then 0.

    A step is missing when any of its F values is NaN (or where ``missing`` (N, T) is True); it takes
    the whole feature vector of the previous present step, leading missing steps that of the first
    present step, and a series without any present step becomes all zeros. Vectorised with
    ``np.maximum.accumulate`` on step indices; returns a new float array.
    """
    series = np.asarray(series)
    if series.ndim != 3:
        raise ValueError(f"series has shape {series.shape}: expected (N, T, F)")
    n_steps = series.shape[1]
    absent = _missing_steps(series)
    if missing is not None:
        absent = absent | np.asarray(missing, dtype=bool)
    present = ~absent
    steps = np.arange(n_steps)
    previous = np.maximum.accumulate(np.where(present, steps, -1), axis=1)  # last present step <= t
    following = np.minimum.accumulate(np.where(present, steps, n_steps)[:, ::-1], axis=1)[:, ::-1]
    source = np.where(previous >= 0, previous, following)  # == n_steps: no present step at all
    has_source = source < n_steps
    gathered = np.take_along_axis(series, np.minimum(source, n_steps - 1)[..., None], axis=1)
    dtype = series.dtype if series.dtype.kind == "f" else np.dtype(np.float32)
    return np.where(has_source[..., None], gathered, 0.0).astype(dtype)


def monthly_composites(
    series: np.ndarray, dates: Sequence[dt.date], months: Sequence[int] = DEFAULT_MONTHS
) -> np.ndarray:
    """(N, M, F) per-month medians of an (N, T, F) series (seed 004's monthly median binning).

    Bin ``m`` is the NaN-ignoring median over the frames whose date falls in ``months[m]``; NaN where
    a parcel has no value in that month. Frames outside ``months`` are ignored.
    """
    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 3 or series.shape[1] != len(dates):
        raise ValueError(f"series has shape {series.shape}: expected (N, {len(dates)}, F), one step per date")
    frame_months = np.array([date.month for date in dates], dtype=np.int64)
    out = np.full((series.shape[0], len(months), series.shape[2]), np.nan, dtype=np.float32)
    for m, month in enumerate(months):  # a handful of months, each vectorised over parcels
        frames = np.flatnonzero(frame_months == int(month))
        if frames.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
                out[:, m] = np.nanmedian(series[:, frames], axis=1)
    return out


def day_of_year(dates: Sequence[dt.date]) -> np.ndarray:
    """int64 day of year (1 .. 366) of each date."""
    return np.array([date.timetuple().tm_yday for date in dates], dtype=np.int64)


def parcel_model_inputs(
    table: gpd.GeoDataFrame | pd.DataFrame,
    dates: Sequence[dt.date],
    *,
    monthly: bool = False,
    months: Sequence[int] = DEFAULT_MONTHS,
    fill: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N, T', 2C) float32 model input and ``doy`` (T',) positions of a PARCEL_STATS table.

    Features per step: the C means, then the C stds. ``monthly``: per-month medians
    (:func:`monthly_composites`, T' = len(months), positions the 15th of each month), the fixed
    length TempCNN needs; else one step per frame (positions the frames' days of year). NaN marks
    missing steps; the parcel models mask or fill them themselves, ``fill=True`` applies
    :func:`fill_missing` here.
    """
    mean, std, _ = read_parcel_series(table)
    if mean.shape[1] != len(dates):
        raise ValueError(
            f"the table has {mean.shape[1]} frames, {len(dates)} dates given: use parcel_dates()"
        )
    x = np.concatenate([mean, std], axis=-1)
    if monthly:
        x = monthly_composites(x, dates, months)
        year = dates[0].year if len(dates) else 2019
        doy = day_of_year([dt.date(year, int(month), 15) for month in months])
    else:
        doy = day_of_year(dates)
    if fill:
        x = fill_missing(x)
    return x.astype(np.float32), doy


def parcel_targets(table: gpd.GeoDataFrame | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``y`` (N, 1) float32 (cultivated = 1) and ``weight`` (N, 1) float32 (0 for not declared / unlabelled)."""
    classes = table["cultivated"].to_numpy(dtype=np.int64)
    y = (classes == CULTIVATED_VALUES["cultivated"]).astype(np.float32)[:, None]
    weight = (classes >= 0).astype(np.float32)[:, None]
    return y, weight
