"""Reflectance, per-pixel validity and frame selection of the Sentinel-2 time series.

* :class:`ReflectanceTask`: ``data/BANDS`` digital numbers to float32 reflectance.
* :class:`ValidMaskTask`: ``mask/VALID`` = data present and not cloudy (CLM, optionally CLP, SCL).
* :func:`valid_frame_filter`: eo-learn's ``SimpleFilterTask`` keeping frames with enough valid
  pixels (the starter pack keeps frames with >= 95 % valid pixels), raising when none is left.
* :class:`ValidCountTask`: number of valid observations per pixel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature, FeaturesSpecification
from eolearn.features import SimpleFilterTask

from . import contract

LOGGER = logging.getLogger(__name__)

REFLECTANCE = (FeatureType.DATA, "REFLECTANCE")
VALID = (FeatureType.MASK, "VALID")
VALID_COUNT = (FeatureType.MASK_TIMELESS, "VALID_COUNT")

#: Largest digital number a uint16 band can hold; float input above it is corrupt, not bright.
UINT16_MAX = int(np.iinfo(np.uint16).max)
#: Sen2Cor scene classes 0..11 (SCL).
SCL_CLASSES = range(12)
#: A usual choice of invalid SCL classes: no data, saturated, cloud shadow, clouds, cirrus, snow.
SCL_INVALID_DEFAULT: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)


def _temporal_array(eopatch: EOPatch, feature: Feature) -> np.ndarray:
    """``eopatch[feature]`` as a (T, H, W, C) array; a ``ValueError`` names a missing feature."""
    if feature not in eopatch:
        raise ValueError(
            f"the EOPatch has no {feature[0].value}/{feature[1]}: add it or pass another feature"
        )
    array = np.asarray(eopatch[feature])
    if array.ndim != 4:
        raise ValueError(f"{feature[0].value}/{feature[1]} has shape {array.shape}: expected (T, H, W, C)")
    return array


class ReflectanceTask(EOTask):
    """Float32 reflectance ``DN × NORM_FACTORS`` (one factor per frame) into ``data/REFLECTANCE``.

    Digital numbers above ``contract.MAX_DN`` (10000) occur in real L2A products over bright
    clouds and snow; with ``clip=True`` (default) they are clipped to 10000, i.e. reflectance
    saturates at 1.0, which keeps spectral indices and models in a bounded range (those pixels
    are usually masked as cloud anyway); ``clip=False`` rejects them. Always rejected: NaN or
    infinite values, negative values and values above 65535 (only possible with float input),
    and non-finite or non-positive factors. Every pixel is converted, no-data pixels
    (``IS_DATA`` False) included: masking is :class:`ValidMaskTask`'s job.
    """

    def __init__(
        self,
        bands_feature: Feature = contract.BANDS,
        norm_factors_feature: Feature = contract.NORM_FACTORS,
        output_feature: Feature = REFLECTANCE,
        *,
        clip: bool = True,
    ):
        self.bands_feature = self.parse_feature(bands_feature, allowed_feature_types=[FeatureType.DATA])
        self.norm_factors_feature = self.parse_feature(
            norm_factors_feature, allowed_feature_types=[FeatureType.SCALAR]
        )
        self.output_feature = self.parse_feature(output_feature, allowed_feature_types=[FeatureType.DATA])
        self.clip = clip

    def _check_digital_numbers(self, bands: np.ndarray) -> None:
        name = f"{self.bands_feature[0].value}/{self.bands_feature[1]}"
        if not (np.issubdtype(bands.dtype, np.integer) or np.issubdtype(bands.dtype, np.floating)):
            raise ValueError(f"{name} has dtype {bands.dtype}: give digital numbers as uint16 (or int/float)")
        if np.issubdtype(bands.dtype, np.floating):
            bad = np.count_nonzero(~np.isfinite(bands))
            if bad:
                raise ValueError(
                    f"{name} holds {bad} NaN or infinite values: fill or mask them before conversion"
                )
        if bands.size == 0:
            return
        low, high = bands.min(), bands.max()
        if low < 0:
            raise ValueError(
                f"{name} holds negative digital numbers (min {low}): give L2A DNs 0..{contract.MAX_DN}"
            )
        if high > UINT16_MAX:
            raise ValueError(
                f"{name} holds digital numbers up to {high} > {UINT16_MAX}: give L2A DNs 0..{contract.MAX_DN}"
            )
        if high > contract.MAX_DN and not self.clip:
            raise ValueError(
                f"{name} holds digital numbers up to {high} > {contract.MAX_DN}: clip them or use clip=True"
            )

    def execute(self, eopatch: EOPatch) -> EOPatch:
        bands = _temporal_array(eopatch, self.bands_feature)
        if self.norm_factors_feature not in eopatch:
            raise ValueError(
                f"the EOPatch has no scalar/{self.norm_factors_feature[1]}: add the (T, 1) factors"
            )
        factors = np.asarray(eopatch[self.norm_factors_feature], dtype=np.float32)
        if factors.shape != (bands.shape[0], 1):
            raise ValueError(
                f"scalar/{self.norm_factors_feature[1]} has shape {factors.shape}: expected ({bands.shape[0]}, 1), "
                "one factor per frame"
            )
        if not np.all(np.isfinite(factors) & (factors > 0)):
            raise ValueError(
                f"scalar/{self.norm_factors_feature[1]} holds non-finite or non-positive factors: use 1e-4"
            )
        self._check_digital_numbers(bands)

        reflectance = bands.astype(np.float32)  # exact for every uint16 value
        if self.clip:
            clipped = np.count_nonzero(reflectance > contract.MAX_DN)
            if clipped:
                LOGGER.debug("clipped %d digital numbers above %d", clipped, contract.MAX_DN)
                np.minimum(reflectance, np.float32(contract.MAX_DN), out=reflectance)
        reflectance *= factors[:, None, None, :]
        eopatch[self.output_feature] = reflectance
        return eopatch


def _lookup(values: np.ndarray, table: np.ndarray, name: str) -> np.ndarray:
    """``table[values]`` for uint8 ``values``; a ``ValueError`` names another dtype."""
    if values.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {values.dtype}: expected uint8 as in the data contract")
    return table[values]


class ValidMaskTask(EOTask):
    """``mask/VALID`` (bool, T×H×W×1): data present and not cloudy.

    VALID = IS_DATA and not CLM (``use_clm``), and optionally CLP / 255 <= ``clp_threshold``
    and SCL not in ``scl_invalid_classes`` (e.g. :data:`SCL_INVALID_DEFAULT`).
    """

    def __init__(
        self,
        output_feature: Feature = VALID,
        clp_threshold: float | None = None,
        scl_invalid_classes: Sequence[int] | None = None,
        use_clm: bool = True,
        *,
        is_data_feature: Feature = contract.IS_DATA,
        clm_feature: Feature = contract.CLM,
        clp_feature: Feature = contract.CLP,
        scl_feature: Feature = contract.SCL,
    ):
        if clp_threshold is not None and not 0.0 <= clp_threshold <= 1.0:
            raise ValueError(
                f"clp_threshold={clp_threshold} is out of range: give a probability in [0, 1] or None"
            )
        classes = tuple(int(c) for c in scl_invalid_classes) if scl_invalid_classes is not None else None
        if classes is not None and not set(classes) <= set(SCL_CLASSES):
            raise ValueError(f"scl_invalid_classes={classes}: Sen2Cor classes are 0..11")
        self.output_feature = self.parse_feature(output_feature, allowed_feature_types=[FeatureType.MASK])
        self.clp_threshold = clp_threshold
        self.scl_invalid_classes = classes
        self.use_clm = use_clm
        self.is_data_feature = is_data_feature
        self.clm_feature = clm_feature
        self.clp_feature = clp_feature
        self.scl_feature = scl_feature

    def execute(self, eopatch: EOPatch) -> EOPatch:
        valid = _temporal_array(eopatch, self.is_data_feature).astype(bool)  # a copy: updated in place
        parts: list[tuple[Feature, np.ndarray]] = []
        if self.use_clm:
            parts.append((self.clm_feature, np.arange(256) == 0))  # CLM: 0 clear, else cloud
        if self.clp_threshold is not None:
            parts.append((self.clp_feature, np.arange(256) / 255.0 <= self.clp_threshold))
        if self.scl_invalid_classes is not None:
            parts.append((self.scl_feature, ~np.isin(np.arange(256), self.scl_invalid_classes)))
        for feature, keep_table in parts:
            values = _temporal_array(eopatch, feature)
            if values.shape != valid.shape:
                raise ValueError(
                    f"{feature[0].value}/{feature[1]} has shape {values.shape}, "
                    f"{self.is_data_feature[1]} {valid.shape}: give masks of the same (T, H, W, 1) shape"
                )
            valid &= _lookup(values, keep_table, f"{feature[0].value}/{feature[1]}")
        eopatch[self.output_feature] = valid
        return eopatch


class ValidFrameFilterTask(SimpleFilterTask):
    """``SimpleFilterTask`` keeping frames whose valid fraction is >= ``min_valid_fraction``.

    Unlike its parent it never returns an empty time series: when no frame qualifies it raises a
    ``ValueError`` naming the best frame's fraction and the threshold.
    """

    def __init__(
        self,
        min_valid_fraction: float,
        valid_feature: Feature = VALID,
        filter_features: FeaturesSpecification = ...,
    ):
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ValueError(
                f"min_valid_fraction={min_valid_fraction} is out of range: give a fraction in [0, 1]"
            )
        self.min_valid_fraction = float(min_valid_fraction)
        super().__init__(valid_feature, self._keep_frame, filter_features)

    def _keep_frame(self, frame: np.ndarray) -> bool:
        return bool(frame.size) and float(np.mean(frame, dtype=np.float64)) >= self.min_valid_fraction

    def _get_filtered_indices(self, feature_data: Iterable) -> list[int]:
        indices = super()._get_filtered_indices(feature_data)
        if indices:
            return indices
        frames = np.asarray(feature_data)
        if frames.shape[0] == 0:
            raise ValueError("the EOPatch has no frames: nothing to filter, check the data source")
        best = float(frames.reshape(frames.shape[0], -1).mean(axis=1, dtype=np.float64).max())
        raise ValueError(
            f"no frame has >= {self.min_valid_fraction:.1%} valid pixels (best frame {best:.1%}): "
            "lower min_valid_fraction or check the cloud masks of this box"
        )


def valid_frame_filter(
    min_valid_fraction: float = 0.95,
    valid_feature: Feature = VALID,
    filter_features: FeaturesSpecification = ...,
) -> ValidFrameFilterTask:
    """An eo-learn ``SimpleFilterTask`` that keeps frames with >= ``min_valid_fraction`` valid pixels.

    The returned task builds a new EOPatch with ``filter_features`` (default: all features) and
    raises a ``ValueError`` when no frame is left instead of returning T = 0.
    """
    return ValidFrameFilterTask(min_valid_fraction, valid_feature, filter_features)


class ValidCountTask(EOTask):
    """``mask_timeless/VALID_COUNT`` (uint16, H×W×1): the number of valid frames per pixel."""

    def __init__(self, valid_feature: Feature = VALID, output_feature: Feature = VALID_COUNT):
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )

    def execute(self, eopatch: EOPatch) -> EOPatch:
        valid = _temporal_array(eopatch, self.valid_feature)
        if valid.shape[0] > UINT16_MAX:
            raise ValueError(f"{valid.shape[0]} frames do not fit a uint16 count: split the time series")
        eopatch[self.output_feature] = np.count_nonzero(valid, axis=0).astype(np.uint16)
        return eopatch
