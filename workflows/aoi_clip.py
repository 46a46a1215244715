"""Clip a region's outputs to its AOI: parcels cut at the AOI outline, mosaic pixels outside it nodata.

The box grid covers the AOI with whole boxes, so a box reaches past the AOI (the test region's boxes
are 53-72 % AOI). With ``export.clip_to_aoi`` (default), ``s2agri run``:

* cuts the merged parcels at the AOI outline (:func:`clip_parcels`): parcels outside are dropped,
  parcels across the outline keep their inside part, with ``area_m2`` and ``perimeter_m`` of that
  part, and pieces smaller than ``vectorise.min_area_m2`` are dropped (no slivers). ``parcel_id``,
  ``box_ids``, ``model`` and ``mean_proba`` (over the whole predicted parcel) are kept;
* writes the mosaics from AOI-clipped copies of the box rasters (:func:`clip_raster`, in
  ``mosaic/tiles/<kind>/``): a pixel whose centre lies outside the AOI is nodata, as are the pixels
  the prediction did not observe. The ``cultivated`` mosaic is uint8 0/1 with nodata 255 (the
  challenge submission GeoTIFFs of the boxes stay 0/1 without nodata, as the challenge reads them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely

from s2agri.tasks.export import atomic_path

LOGGER = logging.getLogger(__name__)

#: Nodata of the clipped 0/1 cultivated tiles (uint8).
MASK_NODATA = 255


def aoi_area(aoi: gpd.GeoDataFrame, crs: object) -> shapely.Geometry:
    """The union of the AOI polygons in ``crs`` (prepared for fast predicates)."""
    area = shapely.union_all(np.asarray(aoi.to_crs(crs).geometry.values, dtype=object))
    shapely.prepare(area)
    return area


def _polygon_parts(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of an intersection (lines and points where outlines touch are dropped)."""
    if isinstance(geometry, shapely.Polygon | shapely.MultiPolygon):
        return geometry if geometry.is_valid else _polygon_parts(shapely.make_valid(geometry))
    polygons = [
        part
        for part in shapely.get_parts(geometry)
        if isinstance(part, shapely.Polygon) and not part.is_empty
    ]
    return shapely.union_all(polygons) if polygons else shapely.Polygon()


def clip_parcels(
    parcels: gpd.GeoDataFrame, area: shapely.Geometry, *, min_area_m2: float
) -> gpd.GeoDataFrame:
    """``parcels`` cut at ``area`` (module docstring); valid polygonal geometries, index reset."""
    if parcels.empty:
        return parcels
    geometries = np.asarray(parcels.geometry.values, dtype=object)
    inside = shapely.within(geometries, area)
    touching = ~inside & shapely.intersects(geometries, area)
    clipped = geometries.copy()
    cut = np.flatnonzero(touching)
    if cut.size:
        clipped[cut] = [_polygon_parts(geometry) for geometry in shapely.intersection(geometries[cut], area)]
    keep = inside | (touching & ~shapely.is_empty(clipped))
    keep &= inside | (shapely.area(clipped) >= min_area_m2)
    out = parcels.loc[keep].copy()
    out = out.set_geometry(gpd.GeoSeries(clipped[keep], index=out.index, crs=parcels.crs))
    out["area_m2"] = shapely.area(clipped[keep])
    out["perimeter_m"] = shapely.length(clipped[keep])
    LOGGER.info(
        "AOI clip: %d parcels inside, %d cut at the outline, %d dropped",
        int(inside.sum()),
        int((touching & keep).sum()),
        int((~keep).sum()),
    )
    return out.reset_index(drop=True)


def clip_raster(
    source: Path,
    destination: Path,
    area: shapely.Geometry,
    *,
    nodata: float | None = None,
    unobserved_from: Path | None = None,
) -> Path:
    """A copy of GeoTIFF ``source`` at ``destination`` with pixels outside ``area`` set to nodata.

    ``nodata`` (default: the source's) is the value written there; pixels that are nodata in
    ``unobserved_from`` (a raster of the same grid, e.g. the box's probability COG) become nodata
    too. Scale, offset and tags are kept; written atomically as a tiled, deflate GeoTIFF.
    """
    with rasterio.open(source) as src:
        data = src.read()
        profile = src.profile
        tags = src.tags()
        scales, offsets = src.scales, src.offsets
        nodata = src.nodata if nodata is None else nodata
        if nodata is None:
            raise ValueError(f"{source} has no nodata value: give one to mark pixels outside the AOI")
        outside = rasterio.features.geometry_mask(
            [area], out_shape=(src.height, src.width), transform=src.transform, invert=False
        )
    if unobserved_from is not None and unobserved_from.is_file():
        with rasterio.open(unobserved_from) as other:
            if (other.height, other.width) != data.shape[1:] or other.transform != profile["transform"]:
                raise ValueError(f"{unobserved_from} is not on the grid of {source}")
            outside |= ~other.read_masks(1).astype(bool)
    data[:, outside] = nodata
    profile.update(
        driver="GTiff", nodata=nodata, tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    for key in ("interleave",):
        profile.pop(key, None)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.scales, dst.offsets = scales, offsets
        dst.update_tags(**tags)
    return destination
