"""Parcels of any source as the box's REFERENCE: columns, label codes, CRS, repair, exact intersects.

Shared by the parcel sources (:mod:`.vector`, :mod:`.geodb`): each reads candidate parcels its own
way and hands them to :func:`to_reference`, which returns ``id``, ``label`` (int64) and ``geometry``
in the box CRS, the parcels that intersect the box only (cut to it with ``clip=True``), invalid
geometries repaired with ``shapely.make_valid`` (or reported with ``on_invalid="error"``).
"""

from __future__ import annotations

import logging
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from eolearn.core import EOPatch
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError

from ..reference import label_codes, polygonal_part, repair_parcels

LOGGER = logging.getLogger(__name__)

OnInvalid = Literal["repair", "error"]
_EXACT_FLOAT_INT = 2**53  #: float64 holds every integer below this
_LISTED = 10  #: ids or values named in a message


def bounds_in_crs(bbox: BBox, crs: object) -> tuple[float, float, float, float]:
    """The bounds of ``bbox`` transformed to ``crs`` (edges densified, so they cover the whole box)."""
    box_crs = bbox.crs.pyproj_crs()
    target = pyproj.CRS.from_user_input(crs)
    bounds = (bbox.min_x, bbox.min_y, bbox.max_x, bbox.max_y)
    if target != box_crs:
        transformer = pyproj.Transformer.from_crs(box_crs, target, always_xy=True)
        bounds = transformer.transform_bounds(*bounds, densify_pts=21)
    min_x, min_y, max_x, max_y = (float(value) for value in bounds)
    return min_x, min_y, max_x, max_y


def empty_reference(crs: object) -> gpd.GeoDataFrame:
    """A REFERENCE GeoDataFrame without parcels (``id``, ``label`` int64, ``geometry``) in ``crs``."""
    return gpd.GeoDataFrame(
        {"id": pd.Series([], dtype=np.int64), "label": pd.Series([], dtype=np.int64)},
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )


def resolve_bbox(eopatch: EOPatch | None, bbox: BBox | None) -> tuple[EOPatch, BBox]:
    """The EOPatch to fill (a new one with ``bbox`` when none is given) and the box to read."""
    if bbox is None:
        bbox = None if eopatch is None else eopatch.bbox
        if bbox is None:
            raise S2AgriInputError("no box to read parcels for: pass bbox=... or an EOPatch with a bbox")
    elif eopatch is not None and eopatch.bbox is not None and eopatch.bbox != bbox:
        raise S2AgriInputError(f"bbox {bbox!r} is not the EOPatch's {eopatch.bbox!r}: pass one of them")
    if not isinstance(bbox, BBox):
        raise S2AgriInputError(f"bbox must be a sentinelhub.BBox, not {type(bbox).__name__}")
    if eopatch is None:
        eopatch = EOPatch(bbox=bbox)
    elif eopatch.bbox is None:
        eopatch.bbox = bbox
    return eopatch, bbox


def require_columns(columns: list[str], id_column: str, label_column: str, source: str) -> None:
    for option, name, holding in (
        ("id_column", id_column, "parcel ids"),
        ("label_column", label_column, "label codes"),
    ):
        if name not in columns:
            raise S2AgriInputError(
                f"{source} has no '{name}' column (columns: {', '.join(map(str, columns)) or 'none'}): "
                f"pass {option}= naming the column with the {holding}"
            )


def _integer_ids(values: pd.Series, column: str, source: str) -> pd.Series:
    """Parcel ids as int64; integral floats and strings are converted, anything else is an error."""
    missing = int(values.isna().sum())
    if missing:
        raise S2AgriInputError(
            f"{source}: {missing} parcel(s) have no id in column '{column}': fill them in or drop those parcels"
        )
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype(np.int64)
    if pd.api.types.is_float_dtype(values.dtype) and (values.abs() >= _EXACT_FLOAT_INT).any():
        raise S2AgriInputError(
            f"{source}: ids in column '{column}' are floating point numbers beyond 2^53, which have lost "
            "digits: store them as integers (a Shapefile holds at most 18 digits)"
        )
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() | (numeric % 1 != 0)
    if bad.any():
        examples = [str(value) for value in values[bad].unique()[:5]]
        raise S2AgriInputError(
            f"{source}: {int(bad.sum())} parcel(s) have non-integer ids in column '{column}' (e.g. {examples}): "
            "use integer ids or pass id_column= naming an integer column"
        )
    return numeric.astype(np.int64)


def _clip(parcels: gpd.GeoDataFrame, box: shapely.Geometry) -> gpd.GeoDataFrame:
    """Parcels cut to the box; parcels that only touch it (no area inside) are dropped."""
    cut = shapely.intersection(parcels.geometry.to_numpy(), box)
    polygons = [None if geometry.is_empty else polygonal_part(geometry) for geometry in cut]
    keep = np.array([geometry is not None for geometry in polygons], dtype=bool)
    out = parcels.set_geometry(gpd.GeoSeries(polygons, index=parcels.index, crs=parcels.crs))
    return out[keep]


def to_reference(
    parcels: gpd.GeoDataFrame,
    bbox: BBox | None,
    *,
    source: str,
    id_column: str = "id",
    label_column: str = "label",
    clip: bool = False,
    on_invalid: OnInvalid = "repair",
) -> gpd.GeoDataFrame:
    """Parcels of any source as a REFERENCE GeoDataFrame: ``id``, ``label`` (int64), ``geometry``.

    With ``bbox``: reprojected to the box CRS, only the parcels that intersect the box, cut to it
    with ``clip=True``. Without: every parcel, in its own CRS. Rows come ordered by id. Empty
    geometries are dropped, invalid ones repaired (or an error naming their ids with
    ``on_invalid="error"``), label codes checked against :mod:`s2agri.tasks.contract`. ``source``
    names the data in messages ("parcel file x.gpkg").
    """
    if on_invalid not in ("repair", "error"):
        raise S2AgriInputError(f"on_invalid={on_invalid!r}: give 'repair' or 'error'")
    if parcels.crs is None:
        raise S2AgriInputError(f"{source} has no CRS: set it")
    columns = [name for name in parcels.columns if name != parcels.geometry.name]
    require_columns(columns, id_column, label_column, source)
    crs = bbox.crs.pyproj_crs() if bbox is not None else parcels.crs

    geometries = parcels.geometry.to_numpy()
    empty = shapely.is_missing(geometries) | shapely.is_empty(geometries)
    if empty.any():
        LOGGER.warning("%s: %d parcel(s) have empty or missing geometries: dropped", source, int(empty.sum()))
        parcels = parcels[~empty]
    if parcels.empty:
        return empty_reference(crs)

    ids = _integer_ids(parcels[id_column], id_column, source)
    try:
        labels = label_codes(parcels, label_column)
    except ValueError as exc:
        raise S2AgriInputError(f"{source}: {exc}") from None
    out = gpd.GeoDataFrame(
        {"id": ids, "label": labels}, geometry=parcels.geometry.to_numpy(), crs=parcels.crs
    )
    if on_invalid == "error":
        invalid = ~shapely.is_valid(out.geometry.to_numpy())
        if invalid.any():
            named = ", ".join(str(value) for value in out["id"][invalid].head(_LISTED))
            more = ", ..." if invalid.sum() > _LISTED else ""
            raise S2AgriInputError(
                f"{source}: {int(invalid.sum())} parcel(s) have invalid geometries (ids {named}{more}): "
                "repair them (e.g. ogr2ogr -makevalid) or pass on_invalid='repair'"
            )

    if bbox is not None and out.crs != crs:
        out = out.to_crs(crs)
    out = out.set_crs(crs, allow_override=True)
    out = repair_parcels(out)  # warns with the count of invalid geometries
    if bbox is not None:
        box = bbox.geometry
        out = out[out.intersects(box)]
        if clip:
            out = _clip(out, box)
    return out.sort_values("id", kind="stable").reset_index(drop=True)
