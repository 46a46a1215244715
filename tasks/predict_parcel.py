"""Per-parcel probabilities of a box with a parcel classifier (``tempcnn``, ``transformer``, ``lstm-parcel``).

:class:`ParcelClassifierTask` reads ``vector_timeless/PARCEL_STATS`` (:class:`s2agri.tasks.zonal.
ZonalStatisticsTask`) and its frame dates, builds the model input (:func:`parcel_series`: monthly
medians of ``months`` or one step per frame, scaled with the training scaler, NaN = missing step),
predicts with :func:`s2agri.models.parcel.predict_proba` and writes the probabilities into the
table's ``proba`` column; :class:`s2agri.tasks.zonal.PaintParcelPredictionsTask` paints them at 2.5 m.

Day-of-year positions (the 15th of each month, or the frame dates) are always passed to the model:
the transformer encodes them, the others ignore them. Every parcel is predicted (not declared ones
too), except parcels whose series has no valid step at all (fully clouded in every step): they get
NaN, i.e. no prediction, painted as background (not cultivated), exactly as parcels without
training weight (they are left out of training for the same reason).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models.parcel import predict_proba
from s2agri.models.parcel_training import ParcelFeatureScaler
from s2agri.tasks.zonal import DEFAULT_MONTHS, PARCEL_STATS, parcel_dates, parcel_model_inputs

LOGGER = logging.getLogger(__name__)

Steps = Literal["monthly", "frames"]
STEPS: tuple[str, ...] = ("monthly", "frames")


def parcel_series(
    eopatch: EOPatch,
    steps: Steps | str = "monthly",
    months: Sequence[int] = DEFAULT_MONTHS,
    stats_feature: Feature = PARCEL_STATS,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``x`` (N, T, 2C) float32 (NaN = missing step), ``doy`` (T,) int64 and the PARCEL_STATS table of a box."""
    if steps not in STEPS:
        raise ValueError(f"steps={steps!r}: use one of {', '.join(STEPS)}")
    if stats_feature not in eopatch:
        raise ValueError("the EOPatch has no PARCEL_STATS: run ZonalStatisticsTask first")
    table = eopatch[stats_feature]
    x, doy = parcel_model_inputs(table, parcel_dates(eopatch), monthly=steps == "monthly", months=months)
    return x, doy, table


def observed(x: np.ndarray) -> np.ndarray:
    """(N,) bool: parcels with at least one step without NaN."""
    return ~np.isnan(x).any(axis=-1).all(axis=-1) if x.shape[1] else np.zeros(len(x), dtype=bool)


class ParcelClassifierTask(EOTask):
    """Write a parcel classifier's probabilities into PARCEL_STATS' ``probability_column`` (module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        scaler: ParcelFeatureScaler,
        steps: Steps | str = "monthly",
        months: Sequence[int] = DEFAULT_MONTHS,
        *,
        model_name: str | None = None,
        probability_column: str = "proba",
        stats_feature: Feature = PARCEL_STATS,
        batch_size: int = 4096,
        num_threads: int | None = None,
    ):
        if not scaler.fitted:
            raise ValueError("the scaler is not fitted: load it from the model's checkpoint")
        if steps not in STEPS:
            raise ValueError(f"steps={steps!r}: use one of {', '.join(STEPS)}")
        self.model = model
        self.scaler = scaler
        self.steps = str(steps)
        self.months = tuple(int(m) for m in months)
        self.model_name = model_name or getattr(model, "name", None) or type(model).__name__
        self.probability_column = probability_column
        self.stats_feature = self.parse_feature(
            stats_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )
        self.batch_size = batch_size
        self.num_threads = num_threads

    def execute(self, eopatch: EOPatch) -> EOPatch:
        x, doy, table = parcel_series(eopatch, self.steps, self.months, self.stats_feature)
        proba = np.full(len(table), np.nan, dtype=np.float64)
        seen = observed(x)
        if seen.any():
            threads = torch.get_num_threads()
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            try:
                proba[seen] = predict_proba(
                    self.model, self.scaler.apply(x[seen]), doy=doy, batch_size=self.batch_size
                )
            finally:
                torch.set_num_threads(threads)
        if (~seen).any():
            LOGGER.info(
                "%s: %d parcel(s) without any valid step are not predicted",
                self.model_name,
                int((~seen).sum()),
            )
        table = table.copy()
        table[self.probability_column] = proba
        eopatch[self.stats_feature] = table
        return eopatch
