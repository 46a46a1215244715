"""Per-parcel probabilities of a box with a parcel classifier (``tempcnn``, ``transformer``, ``lstm-parcel``).

:class:`ParcelClassifierTask` reads ``vector_timeless/PARCEL_STATS`` (:class:`s2agri.tasks.zonal.
ZonalStatisticsTask`) and its frame dates, builds the model input (:func:`parcel_series`: monthly
medians of ``months`` or one step per frame, scaled with the training scaler, NaN = missing step),
predicts with :func:`s2agri.models.parcel.predict_proba` and writes the probabilities into the
table's ``proba`` column; :class:`PaintParcelPredictionsTask` paints them at 2.5 m.

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

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models.parcel import predict_proba
from s2agri.models.parcel_training import ParcelFeatureScaler
from s2agri.tasks import contract
from s2agri.tasks.outputs import PRED_CULTIVATED, PRED_PROBA, feature_array, write_prediction
from s2agri.tasks.parcel_series import parcel_model_inputs
from s2agri.tasks.zonal import (
    DEFAULT_MONTHS,
    PARCEL_STATS,
    box_geometries,
    feature_label,
    parcel_dates,
    rasterise_values,
)

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


class PaintParcelPredictionsTask(EOTask):
    """Per-parcel probabilities painted on the 2.5 m grid as ``PRED_PROBA`` and ``PRED_CULTIVATED``.

    The parcels (default ``vector_timeless/PARCEL_STATS``, or a GeoDataFrame) carry a probability
    column (default ``proba``) in [0, 1]; NaN means no prediction (background). Each parcel,
    buffered by ``buffer`` m (default the challenge's -2.5 m, so the painted footprint is exactly the
    reference's), is rasterised at ``scale`` x the grid of ``reference_feature`` with
    ``all_touched=False`` (later rows win where parcels overlap); background is 0. The result is
    written with :func:`s2agri.tasks.prediction.write_prediction`: ``data_timeless/PRED_PROBA``
    float32 and ``mask_timeless/PRED_CULTIVATED`` bool (``proba >= threshold``, background False),
    ``meta_info["PRED_MODEL"] = model_name``.
    """

    def __init__(
        self,
        parcels: gpd.GeoDataFrame | Feature = PARCEL_STATS,
        probability_column: str = "proba",
        model_name: str = "parcel",
        threshold: float = 0.5,
        *,
        buffer: float = contract.REFERENCE_BUFFER_M,
        reference_feature: Feature = contract.BANDS,
        scale: int = contract.SCALE,
        proba_feature: Feature = PRED_PROBA,
        mask_feature: Feature = PRED_CULTIVATED,
    ):
        self.parcels = parcels
        self.probability_column = probability_column
        self.model_name = model_name
        self.threshold = float(threshold)
        self.buffer = float(buffer)
        self.reference_feature = reference_feature
        self.scale = int(scale)
        self.proba_feature = proba_feature
        self.mask_feature = mask_feature

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: painting parcels needs its extent and CRS")
        if isinstance(self.parcels, gpd.GeoDataFrame):
            parcels = self.parcels
        else:
            if self.parcels not in eopatch:
                raise ValueError(
                    f"the EOPatch has no {feature_label(self.parcels)}: run ZonalStatisticsTask and a classifier"
                )
            parcels = eopatch[self.parcels]
        if self.probability_column not in parcels.columns:
            raise ValueError(
                f"the parcels have no '{self.probability_column}' column: add the per-parcel probabilities"
            )
        proba = pd.to_numeric(parcels[self.probability_column]).to_numpy(dtype=np.float64)
        known = np.isfinite(proba)
        if known.any() and (proba[known].min() < 0.0 or proba[known].max() > 1.0):
            raise ValueError(f"'{self.probability_column}' holds values outside [0, 1]: give probabilities")
        height, width = feature_array(eopatch, self.reference_feature).shape[-3:-1]
        shape = (self.scale * int(height), self.scale * int(width))
        if len(parcels) and known.any():
            rows = parcels[known]
            geometries = box_geometries(rows, eopatch.bbox, self.buffer)
            painted = rasterise_values(
                geometries, proba[known].astype(np.float32), eopatch.bbox, shape, 0.0, np.float32
            )
        else:
            painted = np.zeros(shape, dtype=np.float32)
        LOGGER.debug("painted %d parcel predictions at %s", int(known.sum()), shape)
        return write_prediction(
            eopatch,
            painted,
            self.model_name,
            self.threshold,
            reference_feature=self.reference_feature,
            scale=self.scale,
            proba_feature=self.proba_feature,
            mask_feature=self.mask_feature,
        )
