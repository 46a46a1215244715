"""The mean-NDVI rule of the challenge starter pack (public leaderboard weighted MCC 0.534).

Keep frames with >= 95 % valid pixels (IS_DATA and not CLM), NDVI from B08/B04, temporal mean,
bicubic ×4 (OpenCV ``INTER_CUBIC``), cultivated where 0.4 < NDVI <= 0.6. Pure numpy/OpenCV on
arrays; :class:`s2agri.tasks.prediction.NdviRuleTask` runs it on an EOPatch.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from s2agri.tasks import contract

LOGGER = logging.getLogger(__name__)

MODEL_NAME = "ndvi-rule"
B04, B08 = contract.BAND_INDEX["B04"], contract.BAND_INDEX["B08"]


def _valid_2d(valid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``valid`` as a bool (T, H, W) array; accepts a trailing channel of 1."""
    valid = np.asarray(valid)
    if valid.ndim == 4 and valid.shape[-1] == 1:
        valid = valid[..., 0]
    if valid.shape != shape:
        raise ValueError(
            f"valid has shape {valid.shape}: expected {shape} (or with a trailing 1) as the reflectance"
        )
    return valid.astype(bool, copy=False)


def ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    """NDVI (nir − red) / (nir + red) in float32; 0.0 where nir + red is 0 (no signal)."""
    nir = np.asarray(nir, dtype=np.float32)
    red = np.asarray(red, dtype=np.float32)
    total = nir + red
    out = np.zeros_like(total)
    np.divide(nir - red, total, out=out, where=total != 0)
    return out


def mean_ndvi(reflectance: np.ndarray, valid: np.ndarray, min_valid_fraction: float = 0.95) -> np.ndarray:
    """Temporal mean NDVI (H, W) float32 over the frames with >= ``min_valid_fraction`` valid pixels.

    As in the starter pack, the mean runs over *all* pixels of the kept frames, the few invalid
    pixels of a kept frame included (at 95 % they are at most 5 % of a frame). If no frame
    qualifies, a warning is logged and each pixel gets the mean over its own valid observations
    (0.0, i.e. not cultivated, for pixels never valid).
    """
    reflectance = np.asarray(reflectance)
    if reflectance.ndim != 4 or reflectance.shape[-1] != len(contract.BAND_NAMES):
        raise ValueError(
            f"reflectance has shape {reflectance.shape}: expected (T, H, W, {len(contract.BAND_NAMES)}) in contract band order"
        )
    if reflectance.shape[0] == 0:
        raise ValueError("reflectance has no frames: give at least one acquisition")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(
            f"min_valid_fraction={min_valid_fraction} is out of range: give a fraction in [0, 1]"
        )
    valid = _valid_2d(valid, reflectance.shape[:3])
    nir, red = reflectance[..., B08], reflectance[..., B04]  # views, (T, H, W)
    if not (np.all(np.isfinite(nir)) and np.all(np.isfinite(red))):
        raise ValueError(
            "reflectance B04/B08 hold NaN or infinite values: fill them or convert with ReflectanceTask"
        )
    fractions = valid.reshape(valid.shape[0], -1).mean(axis=1, dtype=np.float64)
    kept = np.flatnonzero(fractions >= min_valid_fraction)
    if kept.size:
        LOGGER.debug("mean NDVI over %d of %d frames", kept.size, fractions.size)
        return ndvi(nir[kept], red[kept]).mean(axis=0, dtype=np.float32)

    LOGGER.warning(
        "no frame has >= %.1f%% valid pixels (best %.1f%%): mean NDVI per pixel over its valid observations",
        100 * min_valid_fraction,
        100 * fractions.max(),
    )
    counts = valid.sum(axis=0)
    sums = np.where(valid, ndvi(nir, red), np.float32(0)).sum(axis=0, dtype=np.float32)
    out = np.zeros(counts.shape, dtype=np.float32)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def upsample_bicubic(image: np.ndarray, scale: int = contract.SCALE) -> np.ndarray:
    """``image`` (H, W) resized to (scale·H, scale·W) with OpenCV ``INTER_CUBIC``, float32."""
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image has shape {image.shape}: give a non-empty 2-D (H, W) array")
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale={scale!r} is invalid: give a positive integer (4 for 10 m -> 2.5 m)")
    height, width = image.shape
    return cv2.resize(
        np.ascontiguousarray(image, dtype=np.float32),
        (width * int(scale), height * int(scale)),
        interpolation=cv2.INTER_CUBIC,
    )


def ndvi_rule(mean_ndvi_2p5m: np.ndarray, low: float = 0.4, high: float = 0.6) -> np.ndarray:
    """Boolean cultivated mask: ``low < NDVI <= high`` (low exclusive, high inclusive)."""
    if not low < high:
        raise ValueError(f"low={low} must be below high={high}: give an interval such as (0.4, 0.6]")
    values = np.asarray(mean_ndvi_2p5m)
    return (values > low) & (values <= high)
