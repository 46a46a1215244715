"""A STAC collection of a run's outputs (``stac/collection.json``), so catalog tools (QGIS's STAC
browser, pystac, stac-browser) list the boxes, their footprints, dates and files.

One item per box: footprint and bbox in WGS84 (from the box's probability COG), the observed season
as ``start_datetime``/``end_datetime``, its native CRS (``s2agri:epsg``) and assets (probability COG,
challenge submission GeoTIFF, EOPatch folder). The collection's assets are the run's shared files
(parcels, metrics, config, model card). Links and asset hrefs are relative: the run folder can move.
Only STAC core fields are used, so the collection validates against the schemas pystac ships.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pystac
import rasterio
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import box as shapely_box
from shapely.geometry import mapping

from s2agri.workflows.runs import published_name

LOGGER = logging.getLogger(__name__)

STAC_FOLDER = "stac"
COLLECTION_FILE = "collection.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF = "image/tiff; application=geotiff"
GEOPACKAGE = "application/geopackage+sqlite3"
JSON = "application/json"
EOPATCH = "application/x-eopatch"


def _box_times(eopatch: Path) -> tuple[dt.datetime, dt.datetime] | None:
    """First and last acquisition of a box (UTC), None when it has no timestamps."""
    from eolearn.core import EOPatch

    try:
        times = EOPatch.load(str(eopatch), lazy_loading=True).timestamps or []
    except (OSError, ValueError):
        return None
    if not times:
        return None
    aware = [t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc) for t in times]
    return min(aware), max(aware)


def box_item(
    name: str, raster: Path, assets: Mapping[str, tuple[Path, str, str]], eopatch: Path | None
) -> pystac.Item:
    """The item of box ``name``: footprint from ``raster``; ``assets``: key -> (path, media type, title)."""
    with rasterio.open(raster) as src:
        epsg = src.crs.to_epsg()
        footprint = transform_geom(src.crs, "EPSG:4326", mapping(shapely_box(*src.bounds)))
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
    times = _box_times(eopatch) if eopatch is not None else None
    start, end = times if times else (None, None)
    item = pystac.Item(
        id=name,
        geometry=footprint,
        bbox=bbox,
        datetime=None if times else dt.datetime.now(dt.timezone.utc),
        start_datetime=start,
        end_datetime=end,
        properties={"s2agri:epsg": epsg},
    )
    for key, (path, media_type, title) in assets.items():
        if path.exists():
            item.add_asset(
                key,
                pystac.Asset(href=str(path.resolve()), media_type=media_type, title=title, roles=["data"]),
            )
    return item


def write_run_collection(
    run: Path,
    items: Sequence[pystac.Item],
    shared: Mapping[str, tuple[Path, str, str]],
    *,
    title: str,
    description: str,
) -> Path | None:
    """Write ``run/stac/collection.json`` with ``items`` and the ``shared`` files as collection assets;
    returns its path (None when there is no item)."""
    if not items:
        return None
    boxes = [item.bbox for item in items if item.bbox is not None]
    bbox = [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]
    starts = [t for item in items if (t := item.common_metadata.start_datetime or item.datetime) is not None]
    ends = [t for item in items if (t := item.common_metadata.end_datetime or item.datetime) is not None]
    collection = pystac.Collection(
        id=f"s2agri-{published_name(run)}",
        title=title,
        description=description,
        license="other",
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]),
            pystac.TemporalExtent([[min(starts, default=None), max(ends, default=None)]]),
        ),
    )
    for key, (path, media_type, asset_title) in shared.items():
        if path.exists():
            role = "metadata" if media_type == JSON else "data"
            collection.add_asset(
                key,
                # relative to stac/ (pystac makes only the items' assets relative): the folder can move
                pystac.Asset(
                    href=os.path.relpath(path.resolve(), (run / STAC_FOLDER).resolve()),
                    media_type=media_type,
                    title=asset_title,
                    roles=[role],
                ),
            )
    collection.add_items(items)
    root = run / STAC_FOLDER
    # written next to its place and renamed: readers never see half a catalogue (relative hrefs only)
    staging = run / f".{STAC_FOLDER}-partial-{os.getpid()}"  # no dot suffix: pystac reads one as a file
    shutil.rmtree(staging, ignore_errors=True)
    try:
        collection.normalize_hrefs(str(staging.resolve()))
        collection.make_all_asset_hrefs_relative()
        collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("wrote a STAC collection of %d boxes to %s", len(items), root / COLLECTION_FILE)
    return root / COLLECTION_FILE


def box_items(predicted: Path, boxes: Sequence[str], inputs: Mapping[str, Path]) -> list[pystac.Item]:
    """Items of the ``boxes`` predicted into the folder ``predicted`` (``proba/``, ``submission/``,
    ``eopatches/``); ``inputs`` (name -> input EOPatch) give the dates and an ``input`` asset."""
    items = []
    for name in boxes:
        proba = predicted / "proba" / f"{name}_proba.tif"
        if not proba.exists():
            continue
        assets = {
            "probability": (
                proba,
                COG,
                "probability of cultivated land, 2.5 m (uint8, scale 1/254, nodata 255)",
            ),
            "submission": (predicted / "submission" / f"{name}.tif", GEOTIFF, "0/1 mask at 2.5 m"),
            "eopatch": (predicted / "eopatches" / name, EOPATCH, "predicted EOPatch (eo-learn)"),
        }
        if name in inputs:
            assets["input"] = (inputs[name], EOPATCH, "input EOPatch (eo-learn)")
        items.append(box_item(name, proba, assets, inputs.get(name, predicted / "eopatches" / name)))
    return items


def predict_run_collection(
    run: Path, boxes: Sequence[str], model: str, inputs: Mapping[str, Path] | None = None
) -> Path | None:
    """The STAC collection of an ``s2agri predict`` run folder (its succeeded ``boxes``); the dates come
    from the input boxes (``inputs``: name -> EOPatch folder), else from the run's EOPatches."""
    items = box_items(run, boxes, inputs or {})
    shared = {
        "parcels": (run / "parcels.gpkg", GEOPACKAGE, "predicted field parcels (layer parcels)"),
        "parcel_stats": (run / "parcel_stats.gpkg", GEOPACKAGE, "per known parcel statistics and prediction"),
        "run": (run / "run.json", JSON, "boxes, seconds, failures"),
        "config": (run / "config.json", JSON, "resolved config: reproduces the run"),
        "model_card": (run / "model_card.json", JSON, "the model's card"),
    }
    return write_run_collection(
        run,
        items,
        shared,
        title=f"s2agri predictions ({model})",
        description=f"Cultivated land predicted by {model} with s2agri.",
    )


def region_run_collection(out: Path, boxes: Sequence[str], formats: Sequence[str]) -> Path | None:
    """The STAC collection of an ``s2agri run`` output folder (its done ``boxes``)."""
    items = box_items(out / "predict", boxes, {name: out / "data" / name for name in boxes})
    media = {
        "gpkg": GEOPACKAGE,
        "fgb": "application/vnd.flatgeobuf",
        "geojson": "application/geo+json",
        "parquet": "application/vnd.apache.parquet",
        "shp": "application/x-shapefile",
    }
    shared: dict[str, tuple[Path, str, str]] = {
        f"parcels_{ext}": (
            out / f"parcels.{ext}",
            media.get(ext, "application/octet-stream"),
            f"seamless parcels ({ext})",
        )
        for ext in formats
    }
    shared |= {
        "mosaic_cultivated": (out / "mosaic" / "cultivated.tif", COG, "cultivated-land mosaic, 2.5 m"),
        "mosaic_proba": (out / "mosaic" / "proba.tif", COG, "probability mosaic, 2.5 m"),
        "grid": (out / "grid.gpkg", GEOPACKAGE, "box grid of the AOI"),
        "summary": (out / "summary.json", JSON, "counts and seconds of the last run"),
        "failed": (out / "failed.json", JSON, "failed boxes with stage and reason"),
        "config": (out / "region.json", JSON, "resolved region config"),
    }
    return write_run_collection(
        out,
        items,
        shared,
        title=f"s2agri region {out.name}",
        description="Cultivated land and field parcels mapped by s2agri run.",
    )
