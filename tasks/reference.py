"""Reference masks from parcel polygons, rasterised exactly as the challenge did.

Behaviour on imperfect parcel layers (each case is tested in ``tests/test_reference.py``):

* **No parcels** (a GeoDataFrame without rows, or only empty / ``None`` geometries): the masks are
  written all-False (``CULTIVATED``, ``NOT_DECLARED``) and zero (``ALL_POLYS``), with a logged warning.
  A layer without rows needs neither a CRS nor a label column.
* **Empty / ``None`` geometries** are dropped before anything else (warning with their count); their
  label codes are not checked.
* **No CRS** on the parcels: ``ValueError``.
* **Another CRS** than the box: the parcels are reprojected to the box CRS (logged at INFO), once,
  here; eo-learn's ``VectorToRasterTask`` then sees matching CRSs and does not reproject again.
* **Invalid geometries** (self-intersecting "bow-ties", self-touching rings, ...) are repaired with
  ``shapely.make_valid`` keeping only the polygonal parts (warning with their count). eo-learn's own
  fallback, ``buffer(0)`` *after* the -2.5 m buffer, would silently drop half of a bow-tie.
* **Non-polygonal geometries** (points, lines, or a repair that leaves no area) are dropped with a
  warning: they cover no pixel after the -2.5 m buffer anyway.
* **Label codes**: a missing label column, missing (NaN / ``None``) codes, non-integer codes and codes
  unknown to :mod:`s2agri.tasks.contract` raise ``ValueError`` naming the column and the count.
* **No parcel intersects the box** although the layer has parcels: all-empty masks and the warning
  "no parcel intersects the box: check the CRS of the parcels" (a box may lie outside the layer).

Errors are raised before anything is written: on error the EOPatch keeps the masks it had.
"""

from __future__ import annotations

import logging
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.geometry import VectorToRasterTask
from shapely.geometry import MultiPolygon, Polygon

from . import contract

LOGGER = logging.getLogger(__name__)

LABEL_COLUMN = "label"
_CLASS_COLUMN = "_s2agri_class"
_CLASS_CODES = {"cultivated": 1, "not_declared": 2}
_POLYGONAL = ("Polygon", "MultiPolygon")


def _feature_path(feature: tuple[FeatureType, str]) -> str:
    return f"{feature[0].value}/{feature[1]}"


def polygonal_part(geometry: shapely.Geometry) -> shapely.Geometry | None:
    """The polygons of one geometry as a (Multi)Polygon, ``None`` when it has no area."""
    if geometry.geom_type in _POLYGONAL:
        return geometry
    polygons: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if part.geom_type == "Polygon":
            polygons.append(part)
        elif part.geom_type == "MultiPolygon":
            polygons.extend(part.geoms)
        elif part.geom_type == "GeometryCollection":
            sub = polygonal_part(part)
            if sub is not None:
                polygons.extend(sub.geoms if sub.geom_type == "MultiPolygon" else [sub])
    polygons = [polygon for polygon in polygons if not polygon.is_empty]
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def label_codes(parcels: gpd.GeoDataFrame, label_column: str) -> pd.Series:
    """The label codes as int64, or a ``ValueError`` naming the column and the offending count."""
    if label_column not in parcels.columns:
        raise ValueError(f"parcels have no '{label_column}' column: give the column holding the label codes")
    raw = parcels[label_column]
    missing = int(raw.isna().sum())
    if missing:
        raise ValueError(
            f"{missing} parcel(s) have no label code (NaN/None) in column '{label_column}': "
            "fill in their codes or drop those parcels"
        )
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = numeric.isna() | (numeric % 1 != 0)
    if bad.any():
        examples = [str(value) for value in raw[bad].unique()[:5]]
        raise ValueError(
            f"{int(bad.sum())} parcel(s) have non-integer label codes in column '{label_column}' "
            f"(e.g. {examples}): use the integer challenge codes of s2agri.tasks.contract"
        )
    codes = numeric.astype("int64")
    unknown = sorted(int(code) for code in set(codes.unique()) - set(contract.LABEL_NAMES))
    if unknown:
        count = int((~codes.isin(contract.LABEL_NAMES)).sum())
        raise ValueError(
            f"{count} parcel(s) have unknown label codes {unknown[:10]} in column '{label_column}': "
            "use the challenge codes of s2agri.tasks.contract"
        )
    return codes


def _with_class_column(parcels: gpd.GeoDataFrame, label_column: str) -> gpd.GeoDataFrame:
    codes = label_codes(parcels, label_column)
    out = gpd.GeoDataFrame({label_column: codes}, geometry=parcels.geometry.values, index=parcels.index)
    out[_CLASS_COLUMN] = np.select(
        [codes.isin(contract.CULTIVATED_CODES), codes.isin(contract.NOT_DECLARED_CODES)],
        [_CLASS_CODES["cultivated"], _CLASS_CODES["not_declared"]],
        default=0,
    )
    return out


def repair_parcels(parcels: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Repair invalid geometries with ``make_valid``, keep polygonal parts, drop what has no area."""
    geometries = parcels.geometry.values
    invalid = ~shapely.is_valid(geometries)
    needs_work = invalid | ~np.isin(shapely.get_type_id(geometries), (3, 6))  # 3 Polygon, 6 MultiPolygon
    if not needs_work.any():
        return parcels
    if invalid.any():
        LOGGER.warning(
            "%d parcel(s) have invalid geometries (e.g. self-intersecting): repaired with shapely.make_valid, "
            "keeping their polygonal parts",
            int(invalid.sum()),
        )
    fixed = np.array(geometries, dtype=object)
    fixed[invalid] = shapely.make_valid(fixed[invalid])
    fixed[needs_work] = [polygonal_part(geometry) for geometry in fixed[needs_work]]
    keep = np.array([geometry is not None for geometry in fixed])
    if not keep.all():
        LOGGER.warning("%d parcel(s) have no polygonal part (points or lines): dropped", int((~keep).sum()))
    out = parcels.copy()
    out = out.set_geometry(gpd.GeoSeries(list(fixed), index=parcels.index, crs=parcels.crs))
    return out[keep]


class RasteriseReferenceTask(EOTask):
    """Rasterise parcel polygons into CULTIVATED, NOT_DECLARED and ALL_POLYS at 2.5 m.

    Uses eo-learn's ``VectorToRasterTask`` with the challenge settings: ``buffer=-2.5`` m,
    ``all_touched=False``, a raster ``scale`` times the input size. Polygons come from a vector
    feature of the EOPatch (default ``vector_timeless/REFERENCE``) or from a GeoDataFrame.

    Imperfect parcel layers are handled as the module docstring says: empty geometries dropped,
    invalid ones repaired with ``shapely.make_valid``, parcels in another CRS reprojected to the box
    CRS, a box without parcels gets empty masks; missing CRS or bad label codes raise ``ValueError``
    before any mask is written.
    """

    def __init__(
        self,
        parcels: gpd.GeoDataFrame | tuple[FeatureType, str] = contract.REFERENCE,
        *,
        label_column: str = LABEL_COLUMN,
        reference_feature: tuple[FeatureType, str] = contract.BANDS,
        scale: int = contract.SCALE,
        buffer: float = contract.REFERENCE_BUFFER_M,
    ):
        self.parcels = parcels
        self.label_column = label_column
        self.reference_feature = reference_feature
        self.scale = scale
        self.buffer = buffer

    def _input_parcels(self, eopatch: EOPatch) -> gpd.GeoDataFrame:
        if isinstance(self.parcels, gpd.GeoDataFrame):
            return self.parcels
        if self.parcels not in eopatch:
            raise ValueError(
                f"the EOPatch has no {_feature_path(self.parcels)} feature: add the parcel polygons there "
                "or give a GeoDataFrame to RasteriseReferenceTask"
            )
        parcels = eopatch[self.parcels]
        if not isinstance(parcels, gpd.GeoDataFrame):
            raise ValueError(f"{_feature_path(self.parcels)} is not a GeoDataFrame: store the parcels as one")
        return parcels

    def _prepare(self, parcels: gpd.GeoDataFrame, eopatch: EOPatch) -> gpd.GeoDataFrame:
        """Checked, cleaned parcels in the box CRS that intersect the box (possibly none)."""
        if parcels.empty:
            LOGGER.warning("no parcels: the reference masks of the box are empty")
            return parcels
        if parcels._geometry_column_name not in parcels.columns:
            raise ValueError("parcels have no geometry column: set one with GeoDataFrame.set_geometry")
        if parcels.crs is None:
            raise ValueError("parcels have no CRS: set one (e.g. EPSG:32633) before rasterising")

        empty = parcels.geometry.isna() | parcels.geometry.is_empty
        if empty.any():
            LOGGER.warning("%d parcel(s) have empty or missing geometries: dropped", int(empty.sum()))
            parcels = parcels[~empty]
        if parcels.empty:
            LOGGER.warning("no parcels with a geometry: the reference masks of the box are empty")
            return parcels
        parcels = _with_class_column(parcels, self.label_column)

        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: the parcels cannot be placed on it")
        box_crs = eopatch.bbox.crs.pyproj_crs()
        if parcels.crs != box_crs:
            LOGGER.info("parcels are in %s, the box in %s: reprojecting the parcels", parcels.crs, box_crs)
            parcels = parcels.to_crs(box_crs)
        # The exact CRS object of the box, so that VectorToRasterTask does not reproject a second time.
        parcels = parcels.set_crs(box_crs, allow_override=True)

        parcels = repair_parcels(parcels)
        if parcels.empty:
            LOGGER.warning("no polygonal parcels: the reference masks of the box are empty")
            return parcels
        inside = parcels[parcels.intersects(eopatch.bbox.geometry)]
        if inside.empty:
            LOGGER.warning(
                "no parcel intersects the box: check the CRS of the parcels (%d parcel(s), none within %s)",
                len(parcels),
                repr(eopatch.bbox),
            )
        return inside

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: reference masks need its extent and CRS")
        if self.reference_feature not in eopatch:
            raise ValueError(
                f"the EOPatch has no {_feature_path(self.reference_feature)}: it gives the input size; "
                "pass reference_feature= naming a feature it has"
            )
        height, width = eopatch[self.reference_feature].shape[-3:-1]
        shape = (int(height) * self.scale, int(width) * self.scale)
        parcels = self._prepare(self._input_parcels(eopatch), eopatch)

        if parcels.empty:
            masks = {
                contract.CULTIVATED: np.zeros((*shape, 1), dtype=bool),
                contract.NOT_DECLARED: np.zeros((*shape, 1), dtype=bool),
                contract.ALL_POLYS: np.zeros((*shape, 1), dtype=np.uint16),
            }
        else:
            masks = self._rasterise(parcels, eopatch, shape)
        for feature, mask in masks.items():  # written only once all three exist
            eopatch[feature] = mask
        return eopatch

    def _rasterise(
        self, parcels: gpd.GeoDataFrame, eopatch: EOPatch, shape: tuple[int, int]
    ) -> dict[tuple[FeatureType, str], np.ndarray]:
        common: dict[str, Any] = {
            "raster_shape": shape,
            "buffer": self.buffer,
            "all_touched": contract.REFERENCE_ALL_TOUCHED,
        }
        tasks = [
            VectorToRasterTask(
                parcels,
                contract.CULTIVATED,
                values_column=_CLASS_COLUMN,
                values=[_CLASS_CODES["cultivated"]],
                raster_dtype=bool,
                **common,
            ),
            VectorToRasterTask(
                parcels,
                contract.NOT_DECLARED,
                values_column=_CLASS_COLUMN,
                values=[_CLASS_CODES["not_declared"]],
                raster_dtype=bool,
                **common,
            ),
            VectorToRasterTask(
                parcels, contract.ALL_POLYS, values_column=self.label_column, raster_dtype=np.uint16, **common
            ),
        ]
        scratch = EOPatch(bbox=eopatch.bbox)
        for task in tasks:
            scratch = task.execute(scratch)
        return {
            contract.CULTIVATED: scratch[contract.CULTIVATED].astype(bool),
            contract.NOT_DECLARED: scratch[contract.NOT_DECLARED].astype(bool),
            contract.ALL_POLYS: scratch[contract.ALL_POLYS].astype(np.uint16),
        }
