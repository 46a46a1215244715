"""Diagnostics of a 2.5 m map: scores by parcel size, and the map's own 10 m version.

* :func:`parcel_sizes`: per 2.5 m pixel, the number of 2.5 m pixels of the reference parcel it
  belongs to (0 outside parcels), from an index map such as
  :func:`s2agri.tasks.zonal.parcel_index_map` on the 2.5 m grid with the challenge's -2.5 m buffer.
* :func:`size_group_confusions`: confusions restricted to the pixels of small parcels
  (``size < small_px``, default 400 px = 0.25 ha at 2.5 m) and of the larger ones; background
  pixels belong to neither group and NOT_DECLARED pixels are excluded, so each group scores how well
  the map separates cultivated from not-cultivated parcels of that size.
* :func:`coarse_prediction`: what the same model gives at 10 m: the 2.5 m probabilities averaged
  over each 4 x 4 block (the 10 m pixel), nearest-upsampled back to 2.5 m and thresholded. Scoring
  it beside the 2.5 m map shows what the super-resolved output adds over a 10 m map.
"""

from __future__ import annotations

import numpy as np

from . import contract
from .metrics import Confusion, confusion

#: Parcels below this many 2.5 m pixels (0.25 ha) are "small".
SMALL_PARCEL_PX = 400
GROUPS: tuple[str, ...] = ("small", "large")


def parcel_sizes(index_map: np.ndarray) -> np.ndarray:
    """(H, W) int64: the pixel count of the parcel each pixel belongs to (index >= 0), 0 elsewhere."""
    index_map = np.asarray(index_map)
    inside = index_map >= 0
    counts = np.bincount(index_map[inside].ravel(), minlength=int(index_map.max(initial=-1)) + 1)
    sizes = np.zeros(index_map.shape, dtype=np.int64)
    sizes[inside] = counts[index_map[inside]]
    return sizes


def size_group_confusions(
    truth: np.ndarray,
    pred: np.ndarray,
    sizes: np.ndarray,
    not_declared: np.ndarray | None = None,
    small_px: int = SMALL_PARCEL_PX,
) -> dict[str, Confusion]:
    """``{"small": ..., "large": ...}`` confusions over the pixels of parcels below / at or above
    ``small_px`` pixels (see the module docstring)."""
    sizes = np.asarray(sizes)
    excluded = np.zeros(sizes.shape, bool) if not_declared is None else np.asarray(not_declared, bool)
    small = (sizes > 0) & (sizes < small_px)
    large = sizes >= small_px
    return {
        "small": confusion(truth, pred, exclude=~small | excluded),
        "large": confusion(truth, pred, exclude=~large | excluded),
    }


def coarse_prediction(proba: np.ndarray, threshold: float = 0.5, scale: int = contract.SCALE) -> np.ndarray:
    """(sH, sW) bool: the mean of each ``scale`` x ``scale`` block of ``proba`` (a 10 m probability),
    nearest-upsampled to the input grid, ``>= threshold``."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] % scale or proba.shape[1] % scale:
        raise ValueError(f"proba has shape {proba.shape}: expected (H, W) in multiples of {scale}")
    height, width = proba.shape[0] // scale, proba.shape[1] // scale
    coarse = proba.reshape(height, scale, width, scale).mean(axis=(1, 3))
    return np.repeat(np.repeat(coarse >= threshold, scale, axis=0), scale, axis=1)
