"""One instance per field: split the predicted cultivated mask into fields before vectorising.

Neighbouring fields of a binary map touch wherever the model did not resolve the 5 m gap between
them, and the 4-connected components of the mask then merge many fields into one blob. Fields are
compact; the narrow necks where two of them touch are where the distance to the mask's edge is
small. :func:`watershed_instances` (the boundary-free fallback for binary models):

1. ``distance``: Euclidean distance of every mask pixel to the nearest non-mask pixel, smoothed by a
   Gaussian of ``smoothing_px`` (removes the pixel-staircase maxima along diagonal edges);
2. markers: the regional maxima of ``distance`` that stand at least ``h_px`` above their
   surroundings (``skimage.morphology.h_maxima``), one per field core;
3. ``skimage.segmentation.watershed`` of ``-distance`` from the markers inside the mask.

A field-delineation model predicts the boundary and the distance to the outline itself
(``data_timeless/PRED_BOUNDARY`` and ``PRED_DISTANCE``, :mod:`s2agri.models.field_delineation`).
:func:`delineation_instances` then floods the boundary-aware surface ``distance * (1 - boundary)``
(Gaussian of ``smoothing_px``) inside the mask from its regional maxima at least ``surface_h`` deep (the
field cores): a boundary the model sees splits two fields even where their extents touch.
``surface_h`` 0.15 and the smoothing of 1 px were chosen on the validation boxes of simulator seeds 0
and 1 (never on the hold-out boxes the benchmark reports; regional maxima beat plain level sets of the
surface as cores there, object F1 0.605 against 0.534), see ``benchmarks/results/delineation.json``. :class:`InstanceSegmentationTask` uses it whenever a box has both features; the
vectoriser only needs the label image. ``smoothing_px`` 1.5 and ``h_px`` 2 were chosen on
boxes of simulator seeds 0 and 1 that no benchmark reports (object F1 at IoU >= 0.5 from 0.38 for
the components to 0.64), see ``benchmarks/results/seasonal.json``.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .outputs import PRED_BOUNDARY, PRED_CULTIVATED, PRED_DISTANCE, feature_array

LOGGER = logging.getLogger(__name__)

PRED_INSTANCES = (FeatureType.MASK_TIMELESS, "PRED_INSTANCES")
Method = Literal["watershed", "components"]
METHODS: tuple[str, ...] = ("watershed", "components")
DEFAULT_SMOOTHING_PX = 1.5
DEFAULT_H_PX = 2.0
#: Depth a field core must have on the delineation surface (in [0, 1]) in :func:`delineation_instances`.
DEFAULT_SURFACE_H = 0.15
#: Smoothing of the delineation surface (2.5 m pixels).
DEFAULT_DELINEATION_SMOOTHING_PX = 1.0


def component_instances(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 ids of the 4-connected components of ``mask`` (0 = background)."""
    return label(np.asarray(mask, dtype=bool), connectivity=1).astype(np.int32)


def watershed_instances(
    mask: np.ndarray, smoothing_px: float = DEFAULT_SMOOTHING_PX, h_px: float = DEFAULT_H_PX
) -> np.ndarray:
    """(H, W) int32 field ids of ``mask`` split at narrow necks (module docstring); 0 = background.

    Every id is one 4-connected region (pieces a watershed basin leaves apart get their own ids).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}: expected (H, W)")
    if smoothing_px < 0 or h_px <= 0:
        raise ValueError(f"smoothing_px={smoothing_px} and h_px={h_px}: give smoothing_px >= 0 and h_px > 0")
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask).astype(np.float32)
    if smoothing_px:
        distance = ndimage.gaussian_filter(distance, smoothing_px)
    markers = label(h_maxima(distance, h_px), connectivity=2)
    # pixels of the mask no marker reached (a component without any h-maximum) keep their component
    return _flood(distance, markers, mask)


def _flood(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watershed of ``-surface`` from ``markers`` inside ``mask``; mask pixels no marker reaches keep
    their own 4-connected components; every id is one 4-connected region."""
    basins = watershed(-surface, markers, mask=mask)
    orphans = mask & (basins == 0)
    if orphans.any():
        extra = label(orphans, connectivity=1)
        basins = np.where(orphans, extra + basins.max(), basins)
    return label(basins, connectivity=1, background=0).astype(np.int32)


def delineation_instances(
    mask: np.ndarray,
    boundary: np.ndarray,
    distance: np.ndarray,
    *,
    surface_h: float = DEFAULT_SURFACE_H,
    smoothing_px: float = DEFAULT_DELINEATION_SMOOTHING_PX,
) -> np.ndarray:
    """(H, W) int32 field ids of ``mask`` from a delineation model's ``boundary`` and ``distance``
    probabilities (module docstring); 0 = background."""
    mask = np.asarray(mask, dtype=bool)
    boundary = np.asarray(boundary, dtype=np.float32)
    distance = np.asarray(distance, dtype=np.float32)
    if mask.ndim != 2 or boundary.shape != mask.shape or distance.shape != mask.shape:
        raise ValueError(
            f"mask {mask.shape}, boundary {boundary.shape} and distance {distance.shape}: expected one (H, W) shape"
        )
    if not 0 < surface_h < 1 or smoothing_px < 0:
        raise ValueError(
            f"surface_h={surface_h} and smoothing_px={smoothing_px}: give 0 < surface_h < 1 "
            "and smoothing_px >= 0"
        )
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    surface = np.clip(distance, 0, 1) * (1 - np.clip(boundary, 0, 1))
    if smoothing_px:
        surface = ndimage.gaussian_filter(surface, smoothing_px)
    markers = label(h_maxima(surface, surface_h) & mask, connectivity=2)
    return _flood(surface, markers, mask)


class InstanceSegmentationTask(EOTask):
    """Field instances of ``mask_timeless/PRED_CULTIVATED`` into ``mask_timeless/PRED_INSTANCES`` (int32).

    ``method="watershed"`` (default) splits touching fields: with a delineation model's
    ``boundary_feature`` and ``distance_feature`` in the box, along the predicted boundaries
    (:func:`delineation_instances`), else at narrow necks of the mask (:func:`watershed_instances`,
    the boundary-free fallback of the binary models); ``"components"`` keeps the 4-connected
    components. :class:`~s2agri.tasks.vectorise.VectoriseTask` traces one polygon per instance when the
    EOPatch has this feature.
    """

    def __init__(
        self,
        mask_feature: Feature = PRED_CULTIVATED,
        output_feature: Feature = PRED_INSTANCES,
        *,
        method: Method = "watershed",
        smoothing_px: float = DEFAULT_SMOOTHING_PX,
        h_px: float = DEFAULT_H_PX,
        boundary_feature: Feature = PRED_BOUNDARY,
        distance_feature: Feature = PRED_DISTANCE,
        surface_h: float = DEFAULT_SURFACE_H,
    ):
        if method not in METHODS:
            raise ValueError(f"method={method!r}: use one of {METHODS}")
        if smoothing_px < 0 or h_px <= 0:
            raise ValueError(
                f"smoothing_px={smoothing_px} and h_px={h_px}: give smoothing_px >= 0 and h_px > 0"
            )
        self.mask_feature = self.parse_feature(
            mask_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        if not 0 < surface_h < 1:
            raise ValueError(f"surface_h={surface_h}: give a value between 0 and 1")
        data_timeless = [FeatureType.DATA_TIMELESS]
        self.boundary_feature = self.parse_feature(boundary_feature, allowed_feature_types=data_timeless)
        self.distance_feature = self.parse_feature(distance_feature, allowed_feature_types=data_timeless)
        self.method = method
        self.smoothing_px, self.h_px = smoothing_px, h_px
        self.surface_h = surface_h

    def execute(self, eopatch: EOPatch) -> EOPatch:
        mask = feature_array(eopatch, self.mask_feature)
        if mask.ndim != 3 or mask.shape[-1] != 1:
            raise ValueError(f"{self.mask_feature[1]} has shape {mask.shape}: expected (H, W, 1)")
        method: str = self.method
        if method == "components":
            instances = component_instances(mask[..., 0])
        elif self.boundary_feature in eopatch and self.distance_feature in eopatch:
            method = "delineation"
            instances = delineation_instances(
                mask[..., 0],
                feature_array(eopatch, self.boundary_feature)[..., 0],
                feature_array(eopatch, self.distance_feature)[..., 0],
                surface_h=self.surface_h,
            )
        else:
            instances = watershed_instances(mask[..., 0], self.smoothing_px, self.h_px)
        eopatch[self.output_feature] = instances[..., None]
        LOGGER.debug("%d field instances (%s)", int(instances.max()), method)
        return eopatch
