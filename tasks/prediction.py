"""Prediction features of a box, shared by every model.

Every model writes the same two features at the 2.5 m target resolution (``contract.SCALE``
times the input grid) through :func:`write_prediction`:

* ``data_timeless/PRED_PROBA`` float32 (4H, 4W, 1) in [0, 1], and
* ``mask_timeless/PRED_CULTIVATED`` bool (4H, 4W, 1) = PRED_PROBA >= threshold,

and records its name in ``meta_info["PRED_MODEL"]`` (the threshold in ``meta_info["PRED_THRESHOLD"]``).
:class:`NdviRuleTask` is the starter-pack baseline.
"""

from __future__ import annotations

import re

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models import rule

from . import contract
from .masks import REFLECTANCE, VALID

PRED_PROBA = (FeatureType.DATA_TIMELESS, "PRED_PROBA")
PRED_CULTIVATED = (FeatureType.MASK_TIMELESS, "PRED_CULTIVATED")
#: Field boundary probability (4H, 4W, 1) float32 at 2.5 m, written by field-delineation models.
PRED_BOUNDARY = (FeatureType.DATA_TIMELESS, "PRED_BOUNDARY")
#: Predicted distance to the field outline (4H, 4W, 1) float32 in [0, 1] (1 at a field's core),
#: written by field-delineation models.
PRED_DISTANCE = (FeatureType.DATA_TIMELESS, "PRED_DISTANCE")
PRED_MODEL_KEY = "PRED_MODEL"
PRED_THRESHOLD_KEY = "PRED_THRESHOLD"
#: ``meta_info`` key of a box's name (e.g. ``eopatch-01``), used for file names and attributes.
BOX_ID_KEY = "box_id"
#: ``meta_info`` key of the absolute path of the EOPatch a prediction was made from.
INPUT_KEY = "input_eopatch"
#: ``meta_info`` key of the same path relative to the run folder (survives moving run and inputs together).
INPUT_RELATIVE_KEY = "input_eopatch_relative"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def box_name(eopatch: EOPatch, box: str | None = None) -> str:
    """The name of a box: ``box``, else ``meta_info["box_id"]``, else ``<epsg>_<minx>_<miny>`` of the bbox.

    The name must be usable as a file name (letters, digits, ``.``, ``_``, ``-``).
    """
    if box is None:
        box = eopatch.meta_info.get(BOX_ID_KEY)
    if box is None:
        if eopatch.bbox is None:
            raise ValueError(f"the box has no name: pass box=... or set meta_info['{BOX_ID_KEY}']")
        minx, miny = eopatch.bbox.lower_left
        box = f"{eopatch.bbox.crs.epsg}_{minx:.0f}_{miny:.0f}"
    box = str(box)
    if not _SAFE_NAME.match(box):
        raise ValueError(f"box name {box!r} is not a safe file name: use letters, digits, '.', '_' and '-'")
    return box


def feature_array(eopatch: EOPatch, feature: Feature) -> np.ndarray:
    """``eopatch[feature]``; a ``ValueError`` names a missing feature and the fix."""
    if feature not in eopatch:
        raise ValueError(
            f"the EOPatch has no {feature[0].value}/{feature[1]}: run the task that makes it or pass another feature"
        )
    return np.asarray(eopatch[feature])


def write_prediction(
    eopatch: EOPatch,
    proba_2p5m: np.ndarray,
    model_name: str,
    threshold: float = 0.5,
    *,
    reference_feature: Feature = contract.BANDS,
    scale: int = contract.SCALE,
    proba_feature: Feature = PRED_PROBA,
    mask_feature: Feature = PRED_CULTIVATED,
) -> EOPatch:
    """Store a model's probability map and its thresholded mask (``proba >= threshold``) in ``eopatch``.

    ``proba_2p5m`` is a floating (scale·H, scale·W) or (scale·H, scale·W, 1) array in [0, 1],
    (H, W) being the grid of ``reference_feature``; ``threshold`` is in (0, 1].
    """
    if not model_name:
        raise ValueError("model_name is empty: name the model that made the prediction")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} is out of range: give a value in (0, 1]")
    height, width = feature_array(eopatch, reference_feature).shape[-3:-1]
    expected = (scale * height, scale * width)
    proba = np.asarray(proba_2p5m)
    if proba.ndim == 3 and proba.shape[-1] == 1:
        proba = proba[..., 0]
    if proba.shape != expected:
        raise ValueError(
            f"prediction has shape {np.shape(proba_2p5m)}: expected {expected} (+1 channel), "
            f"{scale}x the {height}x{width} input grid"
        )
    if not np.issubdtype(proba.dtype, np.floating):
        raise ValueError(
            f"prediction has dtype {proba.dtype}: give floating probabilities (e.g. mask.astype(float32))"
        )
    proba = proba.astype(np.float32)
    if not np.all(np.isfinite(proba)) or proba.min() < 0.0 or proba.max() > 1.0:
        raise ValueError("prediction holds values outside [0, 1] or NaN: give probabilities in [0, 1]")
    eopatch[proba_feature] = proba[..., np.newaxis]
    eopatch[mask_feature] = (proba >= np.float32(threshold))[..., np.newaxis]
    eopatch.meta_info[PRED_MODEL_KEY] = model_name
    eopatch.meta_info[PRED_THRESHOLD_KEY] = float(threshold)
    return eopatch


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


PRED_OBSERVED = (FeatureType.MASK_TIMELESS, "PRED_OBSERVED")
#: ``meta_info`` key of the fraction of the box's 10 m pixels that were observed often enough to map.
OBSERVED_FRACTION_KEY = "observed_fraction"


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
