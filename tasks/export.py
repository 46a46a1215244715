"""Raster outputs of a box: the challenge submission GeoTIFF and a probability Cloud-Optimised GeoTIFF.

Both are written on the 2.5 m target grid of the EOPatch bbox (upper-left corner = bbox
``(minx, maxy)``, CRS of the bbox), to a temporary name in the target folder that is renamed
atomically (:func:`s2agri.tasks.atomic_io.atomic_path`), so a reader never sees a half-written file.
``atomic_path``, ``atomic_write_text``, ``target_grid`` and ``GPKG_VERSION`` are re-exported from the
bottom modules they live in (:mod:`s2agri.tasks.atomic_io`, :mod:`s2agri.tasks.outputs`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import rasterio.crs
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from .atomic_io import atomic_path, atomic_write_text
from .outputs import (
    GPKG_VERSION,
    PRED_CULTIVATED,
    PRED_MODEL_KEY,
    PRED_OBSERVED,
    PRED_PROBA,
    box_name,
    feature_array,
    target_grid,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "GPKG_VERSION",
    "ProbabilityCogTask",
    "SubmissionTiffTask",
    "atomic_path",
    "atomic_write_text",
    "target_grid",
]


def _single_band(eopatch: EOPatch, feature: Feature) -> np.ndarray:
    array = feature_array(eopatch, feature)
    if array.ndim != 3 or array.shape[-1] != 1:
        raise ValueError(f"{feature[0].value}/{feature[1]} has shape {array.shape}: expected (H, W, 1)")
    return array[..., 0]


def _output_path(folder: Path, template: str, box: str) -> Path:
    name = template.format(box=box)
    if Path(name).name != name:
        raise ValueError(
            f"filename_template gives {name!r}: give a file name without folders, e.g. '{{box}}.tif'"
        )
    return folder / name


class SubmissionTiffTask(EOTask):
    """The challenge submission of a box: ``<folder>/<box>.tif``, single band uint8 0/1 at 2.5 m.

    CRS of the bbox (EPSG:32633 for challenge boxes), upper-left corner at the bbox's, DEFLATE
    compressed. The box name comes from ``execute(eopatch, box=...)``, else ``meta_info["box_id"]``
    (see :func:`s2agri.tasks.prediction.box_name`). Returns the EOPatch unchanged.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        mask_feature: Feature = PRED_CULTIVATED,
        filename_template: str = "{box}.tif",
        *,
        compress: str = "deflate",
    ):
        self.folder = Path(folder)
        self.mask_feature = self.parse_feature(
            mask_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.filename_template = filename_template
        self.compress = compress

    def execute(self, eopatch: EOPatch, *, box: str | None = None) -> EOPatch:
        mask = _single_band(eopatch, self.mask_feature)
        if mask.dtype != bool and (
            not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all()
        ):
            raise ValueError(
                f"mask_timeless/{self.mask_feature[1]} has dtype {mask.dtype} with values other than 0/1: "
                "give a boolean mask"
            )
        transform, crs = target_grid(eopatch, mask.shape)
        path = _output_path(self.folder, self.filename_template, box_name(eopatch, box))
        profile = {
            "driver": "GTiff",
            "width": mask.shape[1],
            "height": mask.shape[0],
            "count": 1,
            "dtype": "uint8",
            "crs": crs,
            "transform": transform,
            "compress": self.compress,
        }
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mask.astype(np.uint8), 1)
        LOGGER.info("wrote submission %s", path)
        return eopatch


#: uint8 probability COGs: p is stored as round(UINT8_LEVELS * p), UINT8_NODATA marks unobserved pixels.
UINT8_LEVELS = 254
UINT8_NODATA = 255


class ProbabilityCogTask(EOTask):
    """PRED_PROBA of a box as a Cloud-Optimised GeoTIFF ``<folder>/<box>_proba.tif`` (GDAL COG driver).

    ``dtype="uint8"`` (default) stores round(254·p) with the band scale 1/254 recorded in the
    file (GIS readers apply it) and 255 as nodata: 4x smaller than float32, and a quantisation step
    of 0.004 is far below any model's calibration. ``dtype="float32"`` stores the values as they are,
    NaN as nodata. Nodata marks the pixels that ``observed_feature`` (PRED_OBSERVED, when the EOPatch
    has it) says were never observed well enough to map. Tiles of
    ``blocksize`` px (a multiple of 16, >= 128), DEFLATE, overviews by averaging (halving until
    one tile holds the image, or ``overview_count`` levels), model name and box in the tags.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        proba_feature: Feature = PRED_PROBA,
        filename_template: str = "{box}_proba.tif",
        *,
        observed_feature: Feature = PRED_OBSERVED,
        dtype: Literal["uint8", "float32"] = "uint8",
        blocksize: int = 512,
        overview_count: int | None = None,
        compress: str = "deflate",
    ):
        if dtype not in ("uint8", "float32"):
            raise ValueError(f"dtype={dtype!r} is not supported: use 'uint8' or 'float32'")
        if blocksize < 128 or blocksize % 16:
            raise ValueError(
                f"blocksize={blocksize} is invalid: the COG driver needs a multiple of 16, >= 128"
            )
        if overview_count is not None and overview_count < 0:
            raise ValueError(
                f"overview_count={overview_count} is negative: give None (automatic) or a count >= 0"
            )
        with rasterio.Env() as env:
            if "COG" not in env.drivers():
                raise RuntimeError(
                    f"GDAL {rasterio.__gdal_version__} has no COG driver: install rasterio wheels (GDAL >= 3.1)"
                )
        self.folder = Path(folder)
        self.proba_feature = self.parse_feature(
            proba_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.observed_feature = self.parse_feature(
            observed_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.filename_template = filename_template
        self.dtype = dtype
        self.blocksize = blocksize
        self.overview_count = overview_count
        self.compress = compress

    def execute(self, eopatch: EOPatch, *, box: str | None = None) -> EOPatch:
        proba = _single_band(eopatch, self.proba_feature)
        if not np.issubdtype(proba.dtype, np.floating):
            raise ValueError(
                f"data_timeless/{self.proba_feature[1]} has dtype {proba.dtype}: expected float32"
            )
        if not np.all(np.isfinite(proba)) or proba.min() < 0.0 or proba.max() > 1.0:
            raise ValueError(f"data_timeless/{self.proba_feature[1]} holds values outside [0, 1] or NaN")
        transform, crs = target_grid(eopatch, proba.shape)
        name = box_name(eopatch, box)
        path = _output_path(self.folder, self.filename_template, name)
        if self.dtype == "uint8":
            data = np.rint(proba * np.float32(UINT8_LEVELS)).astype(np.uint8)
            nodata: float = UINT8_NODATA
        else:
            data = proba.astype(np.float32)
            nodata = float("nan")
        if self.observed_feature in eopatch:
            data[~_single_band(eopatch, self.observed_feature).astype(bool)] = nodata
        profile = {
            "driver": "COG",
            "width": proba.shape[1],
            "height": proba.shape[0],
            "count": 1,
            "dtype": self.dtype,
            "nodata": nodata,
            "crs": crs,
            "transform": transform,
            "BLOCKSIZE": self.blocksize,
            "COMPRESS": self.compress.upper(),
            "OVERVIEWS": "AUTO",
            "RESAMPLING": "AVERAGE",
        }
        if self.overview_count is not None:
            profile["OVERVIEW_COUNT"] = self.overview_count
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data, 1)
            if self.dtype == "uint8":
                dst.scales = (1.0 / UINT8_LEVELS,)
            dst.update_tags(box_id=name, model=str(eopatch.meta_info.get(PRED_MODEL_KEY, "")))
        LOGGER.info("wrote probability COG %s", path)
        return eopatch
