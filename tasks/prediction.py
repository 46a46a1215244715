"""The NDVI rule and the nodata of predictions: :class:`NdviRuleTask` (the starter-pack baseline)
and :class:`ObservedMaskTask`.

The features every model writes (the output contract) are defined in :mod:`s2agri.tasks.outputs`
and re-exported here.
"""

from __future__ import annotations

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models import rule

from . import contract
from .masks import REFLECTANCE, VALID
from .outputs import (
    BOX_ID_KEY,
    INPUT_KEY,
    INPUT_RELATIVE_KEY,
    OBSERVED_FRACTION_KEY,
    PRED_BOUNDARY,
    PRED_CULTIVATED,
    PRED_DISTANCE,
    PRED_MODEL_KEY,
    PRED_OBSERVED,
    PRED_PROBA,
    PRED_THRESHOLD_KEY,
    box_name,
    feature_array,
    write_prediction,
)

__all__ = [
    "BOX_ID_KEY",
    "INPUT_KEY",
    "INPUT_RELATIVE_KEY",
    "OBSERVED_FRACTION_KEY",
    "PRED_BOUNDARY",
    "PRED_CULTIVATED",
    "PRED_DISTANCE",
    "PRED_MODEL_KEY",
    "PRED_OBSERVED",
    "PRED_PROBA",
    "PRED_THRESHOLD_KEY",
    "NdviRuleTask",
    "ObservedMaskTask",
    "box_name",
    "feature_array",
    "write_prediction",
]


class NdviRuleTask(EOTask):
    """The starter-pack mean-NDVI rule as a prediction (``meta_info["PRED_MODEL"] = "ndvi-rule"``).

    Mean NDVI of the frames with >= ``min_valid_fraction`` valid pixels
    (:func:`s2agri.models.rule.mean_ndvi`), bicubic ×``scale``, cultivated where
    ``low < NDVI <= high``. A rule has no probability: PRED_PROBA is the rule's decision as
    1.0 / 0.0 (float32), so any threshold in (0, 1] gives back the same mask.
    """

    def __init__(
        self,
        reflectance_feature: Feature = REFLECTANCE,
        valid_feature: Feature = VALID,
        *,
        min_valid_fraction: float = 0.95,
        low: float = 0.4,
        high: float = 0.6,
        scale: int = contract.SCALE,
    ):
        if not low < high:
            raise ValueError(f"low={low} must be below high={high}: give an interval such as (0.4, 0.6]")
        self.reflectance_feature = self.parse_feature(
            reflectance_feature, allowed_feature_types=[FeatureType.DATA]
        )
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.min_valid_fraction = min_valid_fraction
        self.low, self.high = low, high
        self.scale = scale

    def execute(self, eopatch: EOPatch) -> EOPatch:
        reflectance = feature_array(eopatch, self.reflectance_feature)
        valid = feature_array(eopatch, self.valid_feature)
        mean = rule.mean_ndvi(reflectance, valid, self.min_valid_fraction)
        cultivated = rule.ndvi_rule(rule.upsample_bicubic(mean, self.scale), self.low, self.high)
        return write_prediction(
            eopatch,
            cultivated.astype(np.float32),
            rule.MODEL_NAME,
            reference_feature=self.reflectance_feature,
            scale=self.scale,
        )


class ObservedMaskTask(EOTask):
    """Nodata of a prediction: 2.5 m pixels whose 10 m pixel has fewer than ``min_observations`` valid
    observations (clouds, no data) are not mapped, whatever the model said there.

    Writes ``mask_timeless/PRED_OBSERVED`` (4H, 4W, 1) bool, sets PRED_CULTIVATED False and PRED_PROBA 0
    where it is False (so they become no parcel, and nodata in the probability COG), and records the
    observed fraction in ``meta_info["observed_fraction"]``. A box without any such pixel raises a
    ``ValueError``: there is nothing to map, and the run reports the box as failed.
    """

    def __init__(
        self,
        valid_feature: Feature = VALID,
        *,
        min_observations: int = 1,
        scale: int = contract.SCALE,
        proba_feature: Feature = PRED_PROBA,
        mask_feature: Feature = PRED_CULTIVATED,
        observed_feature: Feature = PRED_OBSERVED,
    ):
        if min_observations < 1:
            raise ValueError(f"min_observations={min_observations}: give at least 1")
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.proba_feature = self.parse_feature(
            proba_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.mask_feature = self.parse_feature(
            mask_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.observed_feature = self.parse_feature(
            observed_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.min_observations = int(min_observations)
        self.scale = scale

    def execute(self, eopatch: EOPatch) -> EOPatch:
        valid = feature_array(eopatch, self.valid_feature)
        observed = valid[..., 0].sum(axis=0) >= self.min_observations
        if not observed.any():
            raise ValueError(
                f"no pixel of the box has {self.min_observations} valid observation(s) (all cloud or no data): "
                "nothing to map; use another time interval or cloud mask"
            )
        observed_2p5m = np.repeat(np.repeat(observed, self.scale, axis=0), self.scale, axis=1)[..., None]
        mask = feature_array(eopatch, self.mask_feature)
        if mask.shape != observed_2p5m.shape:
            raise ValueError(
                f"{self.mask_feature[1]} has shape {mask.shape}: expected {observed_2p5m.shape}, "
                f"{self.scale}x the grid of {self.valid_feature[1]}"
            )
        eopatch[self.mask_feature] = mask & observed_2p5m
        proba = feature_array(eopatch, self.proba_feature)
        eopatch[self.proba_feature] = np.where(observed_2p5m, proba, np.float32(0)).astype(np.float32)
        eopatch[self.observed_feature] = observed_2p5m
        eopatch.meta_info[OBSERVED_FRACTION_KEY] = round(float(observed.mean()), 6)
        return eopatch
