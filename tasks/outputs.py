"""The output contract of every model, at the bottom of the layers (any module may import it).

Every model writes the same two features at the 2.5 m target resolution (``contract.SCALE``
times the input grid) through :func:`write_prediction`:

* ``data_timeless/PRED_PROBA`` float32 (4H, 4W, 1) in [0, 1], and
* ``mask_timeless/PRED_CULTIVATED`` bool (4H, 4W, 1) = PRED_PROBA >= threshold,

and records its name in ``meta_info["PRED_MODEL"]`` (the threshold in ``meta_info["PRED_THRESHOLD"]``).
Delineation models add ``PRED_BOUNDARY`` and ``PRED_DISTANCE``; ``PRED_OBSERVED`` marks the mapped
(observed) pixels. Also here: the box name of output files (:func:`box_name`), the 2.5 m output grid
(:func:`target_grid`) and the GeoPackage version of the vector outputs.
"""

from __future__ import annotations

import re

import numpy as np
import rasterio
import rasterio.crs
from eolearn.core import EOPatch, FeatureType
from eolearn.core.types import Feature
from rasterio.transform import Affine

from . import contract

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


PRED_OBSERVED = (FeatureType.MASK_TIMELESS, "PRED_OBSERVED")
#: ``meta_info`` key of the fraction of the box's 10 m pixels that were observed often enough to map.
OBSERVED_FRACTION_KEY = "observed_fraction"

#: GeoPackage version written: 1.2 opens without warnings in GDAL >= 2.2 and QGIS 3.x (GDAL 3.6 and
#: QGIS 3.22 warn about the 1.4 that newer GDAL writes by default).
GPKG_VERSION = "1.2"


def target_grid(
    eopatch: EOPatch, shape: tuple[int, int], resolution: float = contract.TARGET_RESOLUTION_M
) -> tuple[Affine, rasterio.crs.CRS]:
    """Geo-transform and CRS of a (rows, cols) raster covering the EOPatch bbox.

    A ``ValueError`` is raised when the pixel size is not ``resolution`` metres.
    """
    if eopatch.bbox is None:
        raise ValueError("the EOPatch has no bbox: the output needs its extent and CRS")
    rows, cols = shape
    minx, miny = eopatch.bbox.lower_left
    maxx, maxy = eopatch.bbox.upper_right
    size_x, size_y = (maxx - minx) / cols, (maxy - miny) / rows
    if not (
        np.isclose(size_x, resolution, rtol=0, atol=1e-6)
        and np.isclose(size_y, resolution, rtol=0, atol=1e-6)
    ):
        raise ValueError(
            f"a {rows}x{cols} raster over the bbox has {size_x:g} x {size_y:g} m pixels, not {resolution:g} m: "
            "give a raster of 4x the input grid"
        )
    transform = Affine(size_x, 0.0, minx, 0.0, -size_y, maxy)
    return transform, rasterio.crs.CRS.from_epsg(eopatch.bbox.crs.epsg)
