"""Parcel polygons from the 2.5 m cultivated mask, and their GeoPackage export.

Polygons are the field instances of PRED_INSTANCES when the EOPatch has them
(:mod:`s2agri.tasks.instances`: touching fields split apart), else the 4-connected components of
PRED_CULTIVATED (rasterio's default connectivity, so two fields touching only at a pixel corner
stay two parcels), traced by ``rasterio.features.shapes`` on the bbox's 2.5 m grid, in the bbox's CRS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from scipy import ndimage
from skimage.measure import label

from .atomic_io import atomic_path
from .instances import PRED_INSTANCES
from .outputs import (
    GPKG_VERSION,
    PRED_CULTIVATED,
    PRED_MODEL_KEY,
    PRED_PROBA,
    box_name,
    feature_array,
    target_grid,
)

LOGGER = logging.getLogger(__name__)

PARCELS_PRED = (FeatureType.VECTOR_TIMELESS, "PARCELS_PRED")
#: Attribute columns of the parcel layer, in order (then ``geometry``).
PARCEL_COLUMNS: tuple[str, ...] = ("parcel_id", "box_id", "model", "area_m2", "perimeter_m", "mean_proba")
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # 4-connectivity


def parcel_ids(geometries: np.ndarray) -> np.ndarray:
    """``E<x>N<y>`` of the highest vertex (the leftmost of those) of each geometry (object array).

    For a pixel polygon (traced, not simplified) it is the upper-left corner of the leftmost pixel
    of its top row, a point no other parcel has as its own: a stable id, the same in a box's layer
    and in the merged layer of a region (:func:`s2agri.tasks.merge.merge_parcels`).
    """
    ids = np.empty(len(geometries), dtype=object)
    if not len(geometries):
        return ids
    coords, owner = shapely.get_coordinates(geometries, return_index=True)
    order = np.lexsort((coords[:, 0], -coords[:, 1], owner))
    first = order[np.r_[0, np.flatnonzero(np.diff(owner[order])) + 1]]
    ids[:] = [f"E{_number(x)}N{_number(y)}" for x, y in coords[first]]
    return ids


def _number(value: float) -> str:
    return np.format_float_positional(value, precision=3, trim="-")  # mm: no float noise


def empty_parcels(crs: object) -> gpd.GeoDataFrame:
    """A parcel layer with no rows, the :data:`PARCEL_COLUMNS` and ``crs``."""
    frame = pd.DataFrame(
        {
            "parcel_id": pd.Series(dtype=object),
            "box_id": pd.Series(dtype=object),
            "model": pd.Series(dtype=object),
            "area_m2": pd.Series(dtype=np.float64),
            "perimeter_m": pd.Series(dtype=np.float64),
            "mean_proba": pd.Series(dtype=np.float64),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """A valid polygonal version of ``geometry`` (``make_valid``, lines and points dropped)."""
    if shapely.is_valid(geometry):
        return geometry
    parts = shapely.get_parts(shapely.make_valid(geometry))
    polygons = [part for part in parts if isinstance(part, shapely.Polygon | shapely.MultiPolygon)]
    return shapely.union_all(polygons) if polygons else shapely.Polygon()


class VectoriseTask(EOTask):
    """Parcel polygons of ``mask_timeless/PRED_CULTIVATED`` into ``vector_timeless/PARCELS_PRED``.

    * Polygons: the instances of ``instances_feature`` (PRED_INSTANCES) when the EOPatch has it, else
      the 4-connected components of the mask (``rasterio.features.shapes``, connectivity 4).
    * ``min_area_m2`` (default 400 m² = 64 px at 2.5 m = 2×2 Sentinel-2 pixels, 0.04 ha): smaller
      components, measured exactly as pixel count × pixel area (holes excluded), are dropped; a
      field below 2×2 input pixels cannot be resolved at 10 m.
    * ``simplify_tolerance_m`` (default 2.5 m, one target pixel; 0 or None: no simplification):
      ``shapely.coverage_simplify`` simplifies all polygons of the box together
      (Visvalingam–Whyatt, tolerance ≈ square root of the removed triangles' area), which keeps
      shared corners shared and never makes rings cross; pixel staircases become straight edges.
    * Attributes: ``parcel_id`` (:func:`parcel_ids` of the traced pixel polygon: unique, and the
      id the parcel keeps in a region's merged layer), ``area_m2`` and ``perimeter_m`` (shell and holes) of the output geometry,
      ``mean_proba`` (mean PRED_PROBA over the component's pixels; NaN without ``proba_feature``),
      ``box_id`` (argument, else :func:`~s2agri.tasks.prediction.box_name`) and ``model``
      (argument, else ``meta_info["PRED_MODEL"]``).

    Every geometry is valid (``shapely.make_valid`` repairs, polygonal parts kept). An empty mask
    gives an empty GeoDataFrame with the same columns and CRS.
    """

    def __init__(
        self,
        mask_feature: Feature = PRED_CULTIVATED,
        proba_feature: Feature | None = PRED_PROBA,
        output_feature: Feature = PARCELS_PRED,
        *,
        instances_feature: Feature | None = PRED_INSTANCES,
        min_area_m2: float = 400.0,
        simplify_tolerance_m: float | None = 2.5,
        box_id: str | None = None,
        model: str | None = None,
    ):
        if min_area_m2 < 0:
            raise ValueError(f"min_area_m2={min_area_m2} is negative: give 0 to keep every polygon")
        if simplify_tolerance_m is not None and simplify_tolerance_m < 0:
            raise ValueError(
                f"simplify_tolerance_m={simplify_tolerance_m} is negative: give 0 or None to keep pixel edges"
            )
        self.mask_feature = self.parse_feature(
            mask_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS]
        )
        self.proba_feature = (
            None
            if proba_feature is None
            else self.parse_feature(proba_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS])
        )
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )
        self.instances_feature = (
            None
            if instances_feature is None
            else self.parse_feature(instances_feature, allowed_feature_types=[FeatureType.MASK_TIMELESS])
        )
        self.min_area_m2 = float(min_area_m2)
        self.simplify_tolerance_m = simplify_tolerance_m
        self.box_id = box_id
        self.model = model

    def _model_name(self, eopatch: EOPatch) -> str:
        model = self.model if self.model is not None else eopatch.meta_info.get(PRED_MODEL_KEY)
        if not model:
            raise ValueError(
                f"no model name: run a prediction task (sets meta_info['{PRED_MODEL_KEY}']) or pass model=..."
            )
        return str(model)

    def _arrays(self, eopatch: EOPatch) -> tuple[np.ndarray, np.ndarray | None]:
        mask = feature_array(eopatch, self.mask_feature)
        if mask.ndim != 3 or mask.shape[-1] != 1:
            raise ValueError(
                f"mask_timeless/{self.mask_feature[1]} has shape {mask.shape}: expected (H, W, 1)"
            )
        mask = mask[..., 0].astype(bool, copy=False)
        if self.proba_feature is None:
            return mask, None
        proba = feature_array(eopatch, self.proba_feature)
        if proba.shape[:2] != mask.shape or proba.shape[2:] != (1,):
            raise ValueError(
                f"data_timeless/{self.proba_feature[1]} has shape {proba.shape}: expected {(*mask.shape, 1)} as the mask"
            )
        return mask, proba[..., 0].astype(np.float64)

    def execute(self, eopatch: EOPatch) -> EOPatch:
        mask, proba = self._arrays(eopatch)
        transform, _ = target_grid(eopatch, mask.shape)
        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: parcels need its CRS and position")
        crs = eopatch.bbox.crs.pyproj_crs()
        box, model = box_name(eopatch, self.box_id), self._model_name(eopatch)
        if self.instances_feature is not None and self.instances_feature in eopatch:
            instances = feature_array(eopatch, self.instances_feature)[..., 0]
            if instances.shape != mask.shape:
                raise ValueError(
                    f"{self.instances_feature[1]} has shape {instances.shape}: expected {mask.shape}"
                )
            # one label per 4-connected region of one instance, and nothing outside the mask
            labels = label(np.where(mask, instances, 0), connectivity=1, background=0)
            count = int(labels.max())
        else:
            labels, count = ndimage.label(mask, structure=_CROSS)
        pixels = np.bincount(labels.ravel(), minlength=count + 1)
        pixel_area = abs(transform.a * transform.e)
        kept = pixels * pixel_area >= self.min_area_m2
        kept[0] = False  # background
        if proba is None:
            mean_proba = np.full(count + 1, np.nan)
        else:
            sums = np.bincount(labels.ravel(), weights=proba.ravel(), minlength=count + 1)
            mean_proba = sums / np.maximum(pixels, 1)

        if not kept.any():
            eopatch[self.output_feature] = empty_parcels(crs)
            LOGGER.info("box %s: no parcel of >= %g m2", box, self.min_area_m2)
            return eopatch

        labels = np.where(kept[labels], labels, 0).astype(np.int32)
        traced = rasterio.features.shapes(labels, mask=labels > 0, connectivity=4, transform=transform)
        id_list: list[int] = []
        polygons: list[shapely.Polygon] = []
        for geojson, value in traced:
            id_list.append(int(value))
            shell, *holes = (np.asarray(ring, dtype=np.float64) for ring in geojson["coordinates"])
            polygons.append(shapely.Polygon(shell, holes))
        geometries = np.asarray(polygons, dtype=object)
        field_ids = parcel_ids(geometries)  # of the pixel polygons, before simplification
        if self.simplify_tolerance_m:
            geometries = shapely.coverage_simplify(geometries, self.simplify_tolerance_m)
        ids = np.asarray(id_list, dtype=np.int64)
        invalid = np.flatnonzero(~shapely.is_valid(geometries))
        if invalid.size:
            LOGGER.debug("repairing %d invalid polygons with make_valid", invalid.size)
            geometries[invalid] = [_polygonal(geometries[i]) for i in invalid]
            nonempty = ~shapely.is_empty(geometries)
            ids, geometries, field_ids = ids[nonempty], geometries[nonempty], field_ids[nonempty]
        if not shapely.is_valid(geometries).all():
            raise RuntimeError("vectorisation produced invalid geometries after make_valid")

        parcels = gpd.GeoDataFrame(
            {
                "parcel_id": field_ids,
                "box_id": np.full(len(ids), box, dtype=object),
                "model": np.full(len(ids), model, dtype=object),
                "area_m2": shapely.area(geometries),
                "perimeter_m": shapely.length(geometries),
                "mean_proba": mean_proba[ids],
            },
            geometry=geometries,
            crs=crs,
        )
        eopatch[self.output_feature] = parcels
        LOGGER.info(
            "box %s: %d parcels (%d components below %g m2 dropped)",
            box,
            len(parcels),
            count - len(ids),
            self.min_area_m2,
        )
        return eopatch


def export_parcels(
    parcels: gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame],
    path: str | os.PathLike[str],
    layer: str = "parcels",
) -> gpd.GeoDataFrame:
    """Write parcel layers (one GeoDataFrame or several with one CRS) to a new GeoPackage at ``path``.

    Written to a temporary name in the same folder and renamed atomically: an existing file at
    ``path`` is replaced as a whole. Returns the written GeoDataFrame.
    """
    frames = [parcels] if isinstance(parcels, gpd.GeoDataFrame) else list(parcels)
    if not frames:
        raise ValueError("no parcel layer given: pass a GeoDataFrame or a non-empty list of them")
    crss = {None if frame.crs is None else frame.crs.to_wkt() for frame in frames}
    if None in crss or len(crss) != 1:
        raise ValueError(
            "parcel layers have missing or different CRSs: reproject them to one CRS before export"
        )
    merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    with atomic_path(path) as tmp:
        merged.to_file(
            tmp, layer=layer, driver="GPKG", engine="pyogrio", dataset_options={"VERSION": GPKG_VERSION}
        )
    LOGGER.info("wrote %d parcels to %s", len(merged), path)
    return merged
