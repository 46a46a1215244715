"""Training targets of field delineation: extent, boundary and distance maps at 2.5 m.

The multi-task recipe of field-delineation models (sentinel-hub/field-delineation, Fields of The
World) learns three outputs per pixel. From a box's reference, fields are the 8-connected components
of ``CULTIVATED`` (the rasterisation's -2.5 m buffer keeps neighbouring fields apart by a gap):

* **extent**: inside a field (``CULTIVATED``);
* **boundary**: a field pixel on its outline (its 3x3 neighbourhood leaves the field), or a gap pixel
  whose 5x5 neighbourhood touches two different fields (the gap between adjacent fields);
* **distance**: inside each field, the Euclidean distance to the nearest pixel outside it, divided by
  the field's largest such distance (1 at the field's core, small at its outline), 0 outside fields.

:class:`DelineationTargetsTask` writes them as ``mask_timeless/TARGET_EXTENT``,
``mask_timeless/TARGET_BOUNDARY`` (bool) and ``data_timeless/TARGET_DISTANCE`` (float32), vectorised
with scipy's filters and one distance transform per box.
"""

from __future__ import annotations

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from scipy import ndimage
from skimage.measure import label

from . import contract
from .outputs import feature_array

TARGET_EXTENT = (FeatureType.MASK_TIMELESS, "TARGET_EXTENT")
TARGET_BOUNDARY = (FeatureType.MASK_TIMELESS, "TARGET_BOUNDARY")
TARGET_DISTANCE = (FeatureType.DATA_TIMELESS, "TARGET_DISTANCE")


def delineation_targets(cultivated: np.ndarray, gap_px: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(extent, boundary, distance)`` of a (H, W) cultivated mask (module docstring).

    ``gap_px``: a background pixel is on a boundary when fields of two different ids lie within
    ``gap_px`` pixels of it (the -2.5 m buffer leaves 2-pixel gaps between neighbouring fields).
    """
    extent = np.asarray(cultivated, dtype=bool)
    if extent.ndim == 3 and extent.shape[-1] == 1:
        extent = extent[..., 0]
    if extent.ndim != 2:
        raise ValueError(f"cultivated has shape {np.shape(cultivated)}: expected (H, W) or (H, W, 1)")
    if gap_px < 1:
        raise ValueError(f"gap_px={gap_px}: give at least 1")
    fields = label(extent, connectivity=2)
    outline = extent & ~ndimage.binary_erosion(extent, structure=np.ones((3, 3), bool), border_value=0)
    size = 2 * gap_px + 1
    none = int(fields.max()) + 1  # "no field here" for the minimum filter
    highest = ndimage.maximum_filter(fields, size=size, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(np.where(fields > 0, fields, none), size=size, mode="constant", cval=none)
    between = ~extent & (highest > 0) & (lowest < none) & (highest != lowest)
    boundary = outline | between

    distance = ndimage.distance_transform_edt(extent).astype(np.float32)
    if fields.max() > 0:
        peak = ndimage.maximum(distance, labels=fields, index=np.arange(1, fields.max() + 1))
        scale = np.concatenate([[1.0], np.maximum(np.asarray(peak, dtype=np.float32), 1.0)])
        distance = (distance / scale[fields]).astype(np.float32)
    return extent, boundary, distance


class DelineationTargetsTask(EOTask):
    """Extent, boundary and distance targets (:func:`delineation_targets`) of ``CULTIVATED``."""

    def __init__(
        self,
        cultivated_feature: Feature = contract.CULTIVATED,
        *,
        extent_feature: Feature = TARGET_EXTENT,
        boundary_feature: Feature = TARGET_BOUNDARY,
        distance_feature: Feature = TARGET_DISTANCE,
        gap_px: int = 2,
    ):
        if gap_px < 1:
            raise ValueError(f"gap_px={gap_px}: give at least 1")
        mask_timeless = [FeatureType.MASK_TIMELESS]
        self.cultivated_feature = self.parse_feature(cultivated_feature, allowed_feature_types=mask_timeless)
        self.extent_feature = self.parse_feature(extent_feature, allowed_feature_types=mask_timeless)
        self.boundary_feature = self.parse_feature(boundary_feature, allowed_feature_types=mask_timeless)
        self.distance_feature = self.parse_feature(
            distance_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.gap_px = gap_px

    def execute(self, eopatch: EOPatch) -> EOPatch:
        extent, boundary, distance = delineation_targets(
            feature_array(eopatch, self.cultivated_feature), self.gap_px
        )
        eopatch[self.extent_feature] = extent[..., None]
        eopatch[self.boundary_feature] = boundary[..., None]
        eopatch[self.distance_feature] = distance[..., None]
        return eopatch
