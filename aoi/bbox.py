"""One box from the command line: ``--bbox MINX,MINY,MAXX,MAXY --crs EPSG`` checked and put on a UTM grid.

Every s2agri box lies in one WGS84 / UTM zone on a grid of whole input pixels. A bbox given in
degrees (or any other CRS) is reprojected to the UTM zone it lies in; a bbox that crosses zones,
has its corners swapped, or whose numbers do not belong to the CRS it names (degrees given with
a UTM CRS, metres of another zone) is refused with the fix in the message.
"""

from __future__ import annotations

import logging
import math

import geopandas as gpd
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from sentinelhub import CRS as SH_CRS
from sentinelhub import BBox

from s2agri.tasks.contract import INPUT_RESOLUTION_M, is_utm_epsg
from s2agri.tasks.errors import S2AgriInputError

from .grid import aoi_utm_zones

LOGGER = logging.getLogger(__name__)

#: Largest box side in input pixels (the Sentinel Hub Process API answers at most 2500 x 2500).
MAX_SIDE_PX = 2500
#: How far (degrees) outside its zone's 6° strip a UTM bbox may lie before it is called a CRS mix-up.
ZONE_TOLERANCE_DEG = 3.0


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"MINX,MINY,MAXX,MAXY"`` -> four floats with min < max on both axes."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise S2AgriInputError(
            f"--bbox {text!r} is not MINX,MINY,MAXX,MAXY: give four numbers, e.g. 500000,5100000,505000,5105000"
        )
    min_x, min_y, max_x, max_y = values
    if min_x >= max_x or min_y >= max_y:
        raise S2AgriInputError(
            f"--bbox {text} has MINX >= MAXX or MINY >= MAXY: give the lower-left corner first"
        )
    return min_x, min_y, max_x, max_y


def parse_crs(text: str | int) -> CRS:
    """``32633``, ``EPSG:32633`` or ``4326`` -> a pyproj CRS; an input error when unknown."""
    value = str(text).strip()
    try:
        return CRS.from_user_input(int(value) if value.isdigit() else value)
    except CRSError:
        raise S2AgriInputError(
            f"--crs {text} is not a known CRS: give an EPSG code, e.g. 32633 or 4326"
        ) from None


def _lonlat_bounds(bounds: tuple[float, float, float, float], crs: CRS) -> tuple[float, float, float, float]:
    transformer = Transformer.from_crs(crs, 4326, always_xy=True)
    return transformer.transform_bounds(*bounds, densify_pts=21)


def _check_geographic(bounds: tuple[float, float, float, float], crs: CRS) -> None:
    min_x, min_y, max_x, max_y = bounds
    if not (min_x >= -180 and max_x <= 180 and min_y >= -90 and max_y <= 90):
        raise S2AgriInputError(
            f"--bbox {min_x:g},{min_y:g},{max_x:g},{max_y:g} is not longitude/latitude degrees but --crs is "
            f"{crs.to_string()}: give the CRS of those numbers, e.g. --crs 32633 for UTM metres"
        )


def _check_utm(bounds: tuple[float, float, float, float], epsg: int) -> None:
    zone = epsg % 100
    west, east = -180.0 + 6.0 * (zone - 1), -180.0 + 6.0 * zone
    min_x, min_y, max_x, max_y = bounds
    looks_like_degrees = max(abs(min_x), abs(max_x)) <= 180 and max(abs(min_y), abs(max_y)) <= 90
    try:
        lon_min, lat_min, lon_max, lat_max = _lonlat_bounds(bounds, CRS.from_epsg(epsg))
        finite = all(math.isfinite(v) for v in (lon_min, lat_min, lon_max, lat_max))
    except Exception:
        finite = False
    outside = not finite or lon_min < west - ZONE_TOLERANCE_DEG or lon_max > east + ZONE_TOLERANCE_DEG
    numbers = f"{min_x:g},{min_y:g},{max_x:g},{max_y:g}"
    if looks_like_degrees:
        raise S2AgriInputError(
            f"--bbox {numbers} looks like degrees, not metres of UTM zone {zone} (--crs {epsg}): "
            "give --crs 4326 for longitude/latitude"
        )
    if outside:
        where = f"lies at longitude {lon_min:.1f}..{lon_max:.1f}°" if finite else "is not a place on Earth"
        raise S2AgriInputError(
            f"--bbox {numbers} {where}, outside UTM zone {zone} ({west:g}..{east:g}°) of --crs {epsg}: "
            "give the CRS the numbers are in"
        )


def _snap(bounds: tuple[float, float, float, float], step: float) -> tuple[float, float, float, float]:
    """Grow the bounds outwards to whole multiples of ``step`` metres."""
    min_x, min_y, max_x, max_y = bounds
    return (
        math.floor(min_x / step) * step,
        math.floor(min_y / step) * step,
        math.ceil(max_x / step) * step,
        math.ceil(max_y / step) * step,
    )


def box_from_arguments(bbox: str, crs: str | int, *, resolution: float = INPUT_RESOLUTION_M) -> BBox:
    """The UTM box of ``--bbox``/``--crs``, grown to whole ``resolution`` pixels.

    A UTM CRS is kept; any other CRS is reprojected to the one UTM zone the bbox lies in. Input
    errors: malformed numbers, swapped corners, numbers that do not fit the CRS, a bbox crossing
    UTM zones, a box above :data:`MAX_SIDE_PX` pixels a side.
    """
    bounds = parse_bbox(bbox)
    source_crs = parse_crs(crs)
    epsg = source_crs.to_epsg()
    if epsg is not None and is_utm_epsg(epsg):
        _check_utm(bounds, epsg)
        target, utm_bounds = epsg, bounds
    else:
        if source_crs.is_geographic:
            _check_geographic(bounds, source_crs)
        frame = gpd.GeoDataFrame(geometry=[shapely.box(*bounds)], crs=source_crs)
        zones = aoi_utm_zones(frame)
        if len(zones) > 1:
            names = " and ".join(f"{z % 100}" for z in sorted(zones))
            raise S2AgriInputError(
                f"--bbox {bbox} crosses UTM zones {names}: a box lies in one zone; fetch one box per zone "
                "or split the area with 's2agri aoi split'"
            )
        target = zones[0]
        utm_bounds = tuple(frame.to_crs(target).total_bounds)
        LOGGER.info("bbox in %s reprojected to UTM EPSG:%d", source_crs.to_string(), target)
    snapped = _snap(utm_bounds, resolution)
    if snapped != tuple(utm_bounds):
        LOGGER.info("bbox grown to whole %g m pixels: %s", resolution, snapped)
    width_px = round((snapped[2] - snapped[0]) / resolution)
    height_px = round((snapped[3] - snapped[1]) / resolution)
    if max(width_px, height_px) > MAX_SIDE_PX:
        raise S2AgriInputError(
            f"--bbox is {width_px} x {height_px} px at {resolution:g} m, above {MAX_SIDE_PX} px a side: "
            "split the area with 's2agri aoi split' and map it with 's2agri run'"
        )
    if min(width_px, height_px) < 4:
        raise S2AgriInputError(
            f"--bbox is {width_px} x {height_px} px at {resolution:g} m: give a box of at least 4 pixels a side"
        )
    return BBox(snapped, crs=SH_CRS(target))
