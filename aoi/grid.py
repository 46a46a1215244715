"""Read an area of interest (AOI), check it and split it into a UTM grid of square boxes.

The grid lives in a WGS84 / UTM CRS (EPSG:326zz north, 327zz south) and is aligned to
multiples of the box size, so a box is named by its CRS and lower-left corner alone, e.g.
``32633_450000_5080000``: the same ground box gets the same name whatever the AOI, the buffer
or the run, and neighbouring AOIs agree on the boxes they share.

Typical use::

    aoi = check_aoi(read_aoi("region.gpkg"), crs="auto")
    grid = split_aoi(aoi, size_m=5000, buffer_m=100)
    for row in grid.itertuples():
        bbox = box_bbox(row, buffered=True)  # a sentinelhub BBox to fetch or simulate

Bad input raises :class:`~s2agri.tasks.errors.S2AgriInputError` with a one-line message
naming the problem and the fix (``s2agri aoi split`` prints it and exits with status 2).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError
from sentinelhub import CRS as SH_CRS
from sentinelhub import BBox

from s2agri.aoi import DEFAULT_MAX_BOXES, DEFAULT_SIZE_M
from s2agri.tasks.contract import is_utm_epsg
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.reference import polygonal_part

LOGGER = logging.getLogger(__name__)

#: Columns of a grid, in order.
GRID_COLUMNS: tuple[str, ...] = (
    "name",
    "epsg",
    "min_x",
    "min_y",
    "max_x",
    "max_y",
    "aoi_fraction",
    "geometry",
)
#: Box sizes and buffers are whole multiples of this (m), so boxes sit on the 10 m Sentinel-2 pixel grid.
GRID_STEP_M = 10
#: Latitudes covered by UTM (south, north).
UTM_LATITUDES = (-80.0, 84.0)
#: Layer name of a grid written to a GeoPackage.
GRID_LAYER = "grid"
#: Share of a box (or of the AOI, for UTM zones) below which an overlap is numerical noise.
_NOISE = 1e-9
_POLYGONAL = ("Polygon", "MultiPolygon")
_PARQUET = (".parquet", ".geoparquet")
_FORMATS = "GeoPackage, GeoJSON, Shapefile, FlatGeobuf or GeoParquet"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".;") if text else type(exc).__name__


# --- reading -----------------------------------------------------------------------------------------


def read_aoi(path: str | os.PathLike[str], layer: str | None = None) -> gpd.GeoDataFrame:
    """The features of an AOI vector file, as they are (check them with :func:`check_aoi`).

    Any format OGR reads (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, ...); ``.parquet`` and
    ``.geoparquet`` are read as GeoParquet. A file with several layers needs ``layer``.
    """
    path = Path(path)
    if not path.exists():
        raise S2AgriInputError(f"AOI {path} does not exist: give a {_FORMATS} file")
    if path.suffix.lower() in _PARQUET:
        if layer is not None:
            raise S2AgriInputError(f"AOI {path} is GeoParquet, which has no layers: leave out --layer")
        try:
            frame = gpd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise S2AgriInputError(
                f"cannot read AOI {path} as GeoParquet ({_first_line(exc)}): give a {_FORMATS} file"
            ) from None
    else:
        try:
            layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
        except (pyogrio.errors.DataSourceError, OSError) as exc:
            raise S2AgriInputError(
                f"cannot read AOI {path} as a vector file ({_first_line(exc)}): give a {_FORMATS} file"
            ) from None
        if layer is None and len(layers) > 1:
            raise S2AgriInputError(
                f"AOI {path} has {len(layers)} layers ({', '.join(layers)}): choose one with --layer"
            )
        if layer is not None and layer not in layers:
            raise S2AgriInputError(
                f"AOI {path} has no layer {layer!r}: choose one of {', '.join(layers)} with --layer"
            )
        try:
            frame = gpd.read_file(path, layer=layer, engine="pyogrio")
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise S2AgriInputError(
                f"cannot read AOI {path} ({_first_line(exc)}): give a {_FORMATS} file"
            ) from None
    try:
        frame.geometry  # noqa: B018 (a GeoDataFrame without an active geometry column raises)
    except AttributeError:
        raise S2AgriInputError(f"AOI {path} has no geometry column: give a file of polygons") from None
    LOGGER.info("read %d AOI features from %s (%s)", len(frame), path, frame.crs)
    return frame


# --- checks ------------------------------------------------------------------------------------------


def _clean_geometries(aoi: gpd.GeoDataFrame | gpd.GeoSeries, repair: bool) -> gpd.GeoDataFrame:
    """Non-empty, valid (repaired if asked), 2-D polygons of the AOI; an input error otherwise."""
    if not isinstance(aoi, gpd.GeoDataFrame | gpd.GeoSeries):
        raise TypeError(f"the AOI must be a GeoDataFrame or GeoSeries, not {type(aoi).__name__}")
    frame = aoi.to_frame("geometry") if isinstance(aoi, gpd.GeoSeries) else aoi
    if len(frame) == 0:
        raise S2AgriInputError("the AOI has no features: give a file with at least one polygon")
    geoms = shapely.force_2d(frame.geometry.to_numpy())
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if not present.any():
        raise S2AgriInputError(
            f"all {len(frame)} AOI geometries are empty: give a file with at least one polygon"
        )
    frame, geoms = frame.loc[present], geoms[present]
    types = shapely.get_type_id(geoms)
    polygonal = np.isin(types, (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON))
    if not polygonal.all():
        kinds = Counter(shapely.get_type_id(geoms[~polygonal]).tolist())
        listed = ", ".join(
            f"{count} {shapely.GeometryType(kind).name.lower()}" for kind, count in kinds.items()
        )
        raise S2AgriInputError(
            f"the AOI holds {int((~polygonal).sum())} non-polygonal geometries ({listed}): "
            "an AOI is an area: give polygons (buffer points or lines first)"
        )
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        if not repair:
            reason = shapely.is_valid_reason(geoms[invalid][0])
            raise S2AgriInputError(
                f"{int(invalid.sum())} of {len(geoms)} AOI polygons are invalid (first: {reason}): "
                "add --repair to fix them with shapely make_valid, or fix the file"
            )
        geoms = geoms.copy()
        geoms[invalid] = [
            polygonal_part(geom) or shapely.Polygon() for geom in shapely.make_valid(geoms[invalid])
        ]
        LOGGER.warning("repaired %d invalid AOI polygons with make_valid", int(invalid.sum()))
        kept = ~shapely.is_empty(geoms)
        frame, geoms = frame.loc[kept], geoms[kept]
    if len(geoms) == 0 or float(shapely.area(geoms).sum()) <= 0:
        raise S2AgriInputError("the AOI polygons have no area: give polygons enclosing the area to map")
    return gpd.GeoDataFrame(frame.drop(columns=frame.geometry.name), geometry=list(geoms), crs=frame.crs)


def utm_zone_epsg(longitude: float, latitude: float) -> int:
    """EPSG code of the WGS84 / UTM zone of a point (plain 6° zones, no Norway/Svalbard exceptions)."""
    zone = min(math.floor((longitude + 180.0) / 6.0) + 1, 60)
    return (32600 if latitude >= 0 else 32700) + max(zone, 1)


def _zone_name(epsg: int) -> str:
    return f"{epsg % 100}{'N' if epsg < 32700 else 'S'} (EPSG:{epsg})"


def _zone_list(zones: list[int]) -> str:
    names = [_zone_name(zone) for zone in zones]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def aoi_utm_zones(aoi: gpd.GeoDataFrame | gpd.GeoSeries) -> list[int]:
    """EPSG codes of the UTM zones the AOI covers, largest share first.

    Zones are the plain 6° longitude strips; the hemisphere (326zz or 327zz) is the one of the
    AOI's centroid for every zone. A zone counts when it holds more than a 1e-9 share of the AOI.
    An AOI outside UTM's latitudes (80°S to 84°N) is an input error.
    """
    if aoi.crs is None:
        raise S2AgriInputError("the AOI has no CRS: set it in the file (e.g. ogr2ogr -a_srs EPSG:32633)")
    union = shapely.union_all(aoi.geometry.to_crs(4326).to_numpy())
    west, south, east, north = union.bounds
    if south < UTM_LATITUDES[0] or north > UTM_LATITUDES[1]:
        raise S2AgriInputError(
            f"the AOI reaches latitude {south if south < UTM_LATITUDES[0] else north:.2f}°, outside UTM "
            "(80°S to 84°N): map polar regions in a polar CRS, not with s2agri"
        )
    hemisphere = 32600 if union.centroid.y >= 0 else 32700
    first, last = (utm_zone_epsg(lon, 0.0) % 100 for lon in (west, east))
    zones = np.arange(first, last + 1)
    strips = shapely.box(-180.0 + 6.0 * (zones - 1), -90.0, -180.0 + 6.0 * zones, 90.0)
    shares = shapely.area(shapely.intersection(union, strips)) / union.area
    order = np.argsort(-shares, kind="stable")
    return [int(hemisphere + zones[i]) for i in order if shares[i] > _NOISE]


def _parse_crs(crs: str | int | None) -> str | int | None:
    if crs is None or (isinstance(crs, str) and crs.strip().lower() == "auto"):
        return None if crs is None else "auto"
    try:
        epsg = CRS.from_user_input(crs).to_epsg()
    except CRSError:
        epsg = None
    if epsg is None or not is_utm_epsg(epsg):
        raise S2AgriInputError(
            f"--crs {crs} is not a WGS84 / UTM CRS: give auto (the zone the AOI lies in) or EPSG:326zz / EPSG:327zz"
        )
    return epsg


def check_aoi(
    aoi: gpd.GeoDataFrame | gpd.GeoSeries, *, repair: bool = False, crs: str | int | None = None
) -> gpd.GeoDataFrame:
    """The AOI ready to split: non-empty valid polygons in one WGS84 / UTM CRS; an input error otherwise.

    Empty features are dropped. Invalid polygons are an error unless ``repair`` (shapely
    ``make_valid``, keeping the polygonal parts). The AOI must lie in one UTM zone:

    * ``crs=None``: the AOI must already be in a UTM CRS (a geographic or other projected CRS is
      an error naming the UTM zone the AOI lies in);
    * ``crs="auto"``: reproject to the UTM zone the AOI lies in (a no-op when it is there already);
    * ``crs="EPSG:32633"`` (or ``32633``): reproject to that UTM CRS. This forces one zone for an
      AOI spanning several, as long as the zone is one of them or their neighbour.
    """
    target = _parse_crs(crs)
    clean = _clean_geometries(aoi, repair)
    if clean.crs is None:
        raise S2AgriInputError(
            "the AOI has no CRS: set it in the file (e.g. ogr2ogr -a_srs EPSG:32633 fixed.gpkg aoi.gpkg)"
        )
    zones = aoi_utm_zones(clean)
    epsg = clean.crs.to_epsg()
    if isinstance(target, int):
        nearest = min(abs(target % 100 - zone % 100) for zone in zones)
        if nearest > 1:
            raise S2AgriInputError(
                f"--crs EPSG:{target} is UTM zone {target % 100}, {nearest} zones away from the AOI "
                f"in {_zone_list(zones)}: give --crs auto or EPSG:{zones[0]}"
            )
        if len(zones) > 1:
            LOGGER.warning("the AOI spans UTM zones %s: gridding it in EPSG:%d", zones, target)
        return clean if epsg == target else clean.to_crs(target)
    if len(zones) > 1:
        raise S2AgriInputError(
            f"the AOI spans UTM zones {_zone_list(sorted(zones))} but a grid lies in one zone: "
            f"split the AOI per zone and split each part, or force one zone with --crs EPSG:{zones[0]}"
        )
    zone = zones[0]
    if target == "auto":
        return clean if epsg == zone else clean.to_crs(zone)
    if clean.crs.is_geographic:
        raise S2AgriInputError(
            f"the AOI is in a geographic CRS ({_crs_label(clean.crs)}, degrees) and boxes are in metres: "
            f"it lies in UTM zone {_zone_name(zone)}: add --crs auto to reproject it there, "
            f"or reproject the file to EPSG:{zone}"
        )
    if epsg is None or not is_utm_epsg(epsg):
        raise S2AgriInputError(
            f"the AOI's CRS {_crs_label(clean.crs)} is not WGS84 / UTM, the CRS of the grid: "
            f"it lies in UTM zone {_zone_name(zone)}: add --crs auto to reproject it there, "
            f"or reproject the file to EPSG:{zone}"
        )
    if epsg != zone:
        LOGGER.warning(
            "the AOI lies in UTM zone %s but its CRS is EPSG:%d: gridding it there", _zone_name(zone), epsg
        )
    return clean


def _crs_label(crs: Any) -> str:
    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.name


# --- splitting ---------------------------------------------------------------------------------------


def _metres(flag: str, value: float, minimum: int, example: int) -> int:
    if not float(value).is_integer() or int(value) < minimum or int(value) % GRID_STEP_M:
        raise S2AgriInputError(
            f"{flag} {value:g} m is not a whole multiple of {GRID_STEP_M} m of at least {minimum} m: "
            f"give e.g. {flag} {example} (boxes stay on the 10 m Sentinel-2 pixel grid)"
        )
    return int(value)


def _utm_epsg(aoi: gpd.GeoDataFrame) -> int:
    epsg = None if aoi.crs is None else aoi.crs.to_epsg()
    if epsg is None or not is_utm_epsg(epsg):
        label = "no CRS" if aoi.crs is None else f"CRS {_crs_label(aoi.crs)}"
        raise S2AgriInputError(
            f"the AOI has {label}, not WGS84 / UTM: prepare it with check_aoi(aoi, crs='auto') (--crs auto)"
        )
    return epsg


def _candidate_cells(union: shapely.Geometry, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid cells (row, col indices) that may intersect ``union`` and the row strip clipped to it.

    One vectorised intersection of the AOI with each grid row; each polygon part of a clipped
    row proposes the cells spanning its x-range, so empty rows and gaps cost nothing.
    """
    west, south, east, north = union.bounds
    first_col, last_col = math.floor(west / size), math.ceil(east / size)
    rows = np.arange(math.floor(south / size), math.ceil(north / size))
    strips = shapely.box(first_col * size, rows * size, last_col * size, (rows + 1) * size)
    clipped = shapely.intersection(union, strips)
    parts, part_row = shapely.get_parts(clipped, return_index=True)
    areal = shapely.area(parts) > 0  # drop lines and points where the AOI only touches a row edge
    parts, part_row = parts[areal], part_row[areal]
    bounds = shapely.bounds(parts)
    col_start = np.floor(bounds[:, 0] / size).astype(np.int64)
    col_stop = np.maximum(np.ceil(bounds[:, 2] / size).astype(np.int64), col_start + 1)
    counts = col_stop - col_start
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    cell_row = np.repeat(part_row, counts)
    cell_col = np.repeat(col_start, counts) + offsets
    key = np.unique(cell_row * (last_col - first_col + 1) + (cell_col - first_col))
    cell_row, cell_col = np.divmod(key, last_col - first_col + 1)
    return rows[cell_row], cell_col + first_col, clipped[cell_row]


#: Most boxes one split makes, --yes or not (5 million km² of 5 km boxes): more would exhaust memory.
HARD_MAX_BOXES = 200_000


def _too_many(count: str, size: int, max_boxes: int) -> S2AgriInputError:
    return S2AgriInputError(
        f"the AOI splits into {count} boxes of {size} m, more than --max-boxes {max_boxes}: "
        "add --yes to make them all, raise --max-boxes, or give a larger --size"
    )


def split_aoi(
    aoi: gpd.GeoDataFrame | gpd.GeoSeries,
    size_m: int = DEFAULT_SIZE_M,
    buffer_m: int = 0,
    *,
    max_boxes: int = DEFAULT_MAX_BOXES,
    confirm_large: bool = False,
) -> gpd.GeoDataFrame:
    """The grid boxes covering an AOI in a WGS84 / UTM CRS (prepare user input with :func:`check_aoi`).

    Boxes are ``size_m`` squares whose corners are multiples of ``size_m`` in the AOI's CRS; a box
    is kept when it shares area with the AOI (touching it along an edge is not enough). Columns:

    * ``name``: ``<epsg>_<min_x>_<min_y>``, e.g. ``32633_450000_5080000``: stable across AOIs, buffers and runs;
    * ``epsg``: the CRS;
    * ``min_x, min_y, max_x, max_y``: the box, unbuffered (integers, metres);
    * ``aoi_fraction``: share of the (unbuffered) box inside the AOI, in (0, 1];
    * ``geometry``: the box grown by ``buffer_m`` on each side (a square, corners kept), so
      neighbouring boxes overlap by ``2 * buffer_m``; the unbuffered box when ``buffer_m`` is 0.

    Rows are ordered south to north, then west to east. ``size_m`` and ``buffer_m`` are whole
    multiples of 10 m. More than ``max_boxes`` boxes is an input error unless ``confirm_large``.
    """
    size = _metres("--size", size_m, GRID_STEP_M, DEFAULT_SIZE_M)
    buffer = _metres("--buffer", buffer_m, 0, 100)
    if max_boxes < 1:
        raise S2AgriInputError(f"--max-boxes {max_boxes} is below 1: give a positive box count")
    clean = _clean_geometries(aoi, repair=False)
    epsg = _utm_epsg(clean)
    union = shapely.union_all(clean.geometry.to_numpy())
    at_least = math.ceil(union.area / size**2 - _NOISE)  # each box holds at most size² of the AOI
    if at_least > max_boxes and not confirm_large:
        raise _too_many(f"at least {at_least}", size, max_boxes)
    if at_least > HARD_MAX_BOXES:
        raise S2AgriInputError(
            f"the AOI splits into at least {at_least} boxes of {size} m, more than s2agri splits at once "
            f"({HARD_MAX_BOXES}, with --yes too): split the AOI into parts or give a larger --size"
        )
    rows, cols, clipped = _candidate_cells(union, size)
    min_x, min_y = cols * size, rows * size
    boxes = shapely.box(min_x, min_y, min_x + size, min_y + size)
    fraction = shapely.area(shapely.intersection(clipped, boxes)) / size**2
    kept = fraction > _NOISE
    if int(kept.sum()) > max_boxes and not confirm_large:
        raise _too_many(str(int(kept.sum())), size, max_boxes)
    min_x, min_y, fraction = min_x[kept], min_y[kept], np.minimum(fraction[kept], 1.0)
    names = [f"{epsg}_{x}_{y}" for x, y in zip(min_x.tolist(), min_y.tolist(), strict=True)]
    grid = gpd.GeoDataFrame(
        {
            "name": pd.Series(names, dtype=object),
            "epsg": np.full(len(names), epsg, dtype=np.int64),
            "min_x": min_x,
            "min_y": min_y,
            "max_x": min_x + size,
            "max_y": min_y + size,
            "aoi_fraction": fraction,
        },
        geometry=shapely.box(min_x - buffer, min_y - buffer, min_x + size + buffer, min_y + size + buffer),
        crs=f"EPSG:{epsg}",
    )
    LOGGER.info("split the AOI into %d boxes of %d m in EPSG:%d", len(grid), size, epsg)
    return grid


# --- using and writing a grid ------------------------------------------------------------------------


def box_bbox(row: Any, *, buffered: bool = False) -> BBox:
    """The sentinelhub ``BBox`` of a grid row (a ``grid.iloc[i]`` Series, a dict or an ``itertuples`` row).

    The unbuffered box by default; ``buffered=True`` gives the bounds of its (buffered) geometry.
    """

    def get(key: str) -> Any:
        return getattr(row, key) if isinstance(row, tuple) else row[key]

    if buffered:
        coords = tuple(shapely.bounds(get("geometry")).tolist())
    else:
        coords = tuple(float(get(key)) for key in ("min_x", "min_y", "max_x", "max_y"))
    return BBox(coords, crs=SH_CRS(int(get("epsg"))))


def grid_format(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """(OGR driver, GeoParquet?) of a grid file from its extension, as ``s2agri export``; a Shapefile
    (which cuts column names to 10 characters) or an unknown extension is an input error."""
    from s2agri.tasks.vector_export import vector_format

    path = Path(path)
    driver, parquet = vector_format(path)
    if driver == "ESRI Shapefile":
        raise S2AgriInputError(
            f"{path}: a Shapefile cuts column names such as aoi_fraction to 10 characters: "
            "write the grid to .gpkg, .geojson, .fgb or .parquet"
        )
    return driver, parquet


def write_grid(grid: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a grid in the format of ``path``'s extension (.gpkg with layer ``grid``, .geojson,
    .fgb, .parquet) under a temporary name renamed into place, so a reader never sees a
    half-written file; an existing ``path`` needs ``overwrite``."""
    from s2agri.tasks.atomic_io import atomic_path

    path = Path(path)
    driver, parquet = grid_format(path)
    if path.exists() and not overwrite:
        raise S2AgriInputError(f"{path} exists: choose another path or add --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if parquet:
            grid.to_parquet(tmp)
        else:  # the layer is named here: it would otherwise take the temporary file's name
            layer = GRID_LAYER if driver == "GPKG" else path.stem
            # FlatGeobuf's spatial index would reorder the boxes
            options = {"SPATIAL_INDEX": "NO"} if driver == "FlatGeobuf" else {}
            grid.to_file(tmp, driver=driver, engine="pyogrio", layer=layer, **options)
    LOGGER.info("wrote %d boxes to %s (%s)", len(grid), path, driver)
    return path
