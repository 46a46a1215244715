"""A self-contained static STAC catalog of simulated Sentinel-2 L2A scenes, laid out like Earth Search v1.

:func:`write_stac_catalog` simulates boxes (:mod:`.simulator`) and writes one item per
acquisition date over the tile extent that covers them all, with one Cloud-Optimised GeoTIFF
per asset at native resolution (10 / 20 / 60 m, ``contract.BAND_RESOLUTION_M``), asset keys of
Earth Search v1 (``stac.EARTH_SEARCH_ASSETS``) and its processing-baseline >= 04.00 encoding:
stored = DN + 1000, ``raster:bands`` scale 0.0001 and offset -0.1, nodata 0. It is the demo
source of :class:`~.stac.StacInputTask` and its test fixture.

* The tile is the union of the boxes' extents snapped outwards to the 60 m grid; an item's
  geometry is the union of the boxes acquired on its date (its data footprint), pixels outside
  them are nodata. Where boxes overlap, the first one given wins.
* 20 / 60 m assets take, for each native pixel, the value of its first 10 m pixel with data:
  boxes whose corners lie on the 60 m grid give back the simulator's native rasters exactly;
  other boxes are sampled (logged as a warning).
* ``scl`` is written at 10 m, the simulator's resolution (Earth Search's is 20 m; the reader
  warps either). ``eo:cloud_cover`` is the percentage of SCL 8, 9, 10 among the pixels with data.
* ``cloud`` (with ``cloud_probability=True``): the simulator's cloud probability averaged to
  20 m and stored in percent (uint8 0..100) like Sen2Cor's ``MSK_CLDPRB_20m``, which Earth
  Search ``sentinel-2-c1-l2a`` publishes as ``cloud``.
* ``tile_per_box=True`` writes each box as its own tile (one item per box and date), like
  adjacent tiles of one datatake, to exercise the mosaicking of the reader.

Everything is written to a temporary folder next to ``root`` and renamed at the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import shapely
import shapely.geometry
from pyproj import Transformer
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.transform import Affine
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError

from .. import contract
from .simulator import BoxSimulator
from .simulator.scene import ORBIT_TIMES
from .stac import CLM_SCL_CLASSES, CLOUD_PROBABILITY_ASSET, EARTH_SEARCH_ASSETS

LOGGER = logging.getLogger(__name__)

TILE_GRID_M = 60  #: tile corners and box corners (for exact 20 / 60 m assets) on this grid
DN_OFFSET = 1000  #: baseline >= 04.00: stored = DN + 1000
PROCESSING_BASELINE = "05.00"  #: like Earth Search sentinel-2-c1-l2a (2019 reprocessed)
COMMON_NAMES = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
    "B07": "rededge", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
}  # fmt: skip
COG_OPTIONS = {"driver": "COG", "BLOCKSIZE": 256, "COMPRESS": "DEFLATE", "PREDICTOR": 2, "OVERVIEWS": "AUTO"}


def _check_boxes(bboxes: Sequence[BBox]) -> int:
    """The common UTM EPSG code of the boxes; warns about boxes off the 60 m grid."""
    if not bboxes:
        raise S2AgriInputError("no boxes: give at least one BBox to write a STAC catalog of")
    epsgs = {b.crs.epsg for b in bboxes}
    if len(epsgs) != 1:
        codes = ", ".join(f"EPSG:{e}" for e in sorted(epsgs))
        raise S2AgriInputError(f"boxes in several CRS ({codes}): give boxes of one UTM zone")
    (epsg,) = epsgs
    if not contract.is_utm_epsg(epsg):
        raise S2AgriInputError(
            f"boxes in EPSG:{epsg}, not a UTM zone: give boxes in a UTM CRS, e.g. EPSG:32633"
        )
    for b in bboxes:
        if any(round(c) % TILE_GRID_M or abs(c - round(c)) > 1e-6 for c in b):
            LOGGER.warning("box %s is not on the 60 m grid: its 20 and 60 m assets are sampled, not exact", b)
    return epsg


@dataclass(frozen=True)
class _Tile:
    """A tile: its name in item ids, the indices of its boxes and its bounds on the 60 m grid."""

    name: str
    boxes: tuple[int, ...]
    bounds: tuple[float, float, float, float]

    @classmethod
    def of(cls, name: str, boxes: Sequence[int], bboxes: Sequence[BBox]) -> _Tile:
        g = TILE_GRID_M
        chosen = [bboxes[i] for i in boxes]
        bounds = (
            float(math.floor(min(b.min_x for b in chosen) / g) * g),
            float(math.floor(min(b.min_y for b in chosen) / g) * g),
            float(math.ceil(max(b.max_x for b in chosen) / g) * g),
            float(math.ceil(max(b.max_y for b in chosen) / g) * g),
        )
        return cls(name, tuple(boxes), bounds)

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns at 10 m."""
        return round((self.bounds[3] - self.bounds[1]) / 10), round((self.bounds[2] - self.bounds[0]) / 10)

    def offset(self, bbox: BBox) -> tuple[int, int]:
        """Row and column of a box's upper-left 10 m pixel."""
        return round((self.bounds[3] - bbox.max_y) / 10), round((bbox.min_x - self.bounds[0]) / 10)


def native(image: np.ndarray, has_data: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) 10 m values -> (H/f, W/f): each native pixel takes its first 10 m pixel with data."""
    if factor == 1:
        return image, has_data
    h, w = image.shape

    def blocks(array: np.ndarray) -> np.ndarray:
        return (
            array.reshape(h // factor, factor, w // factor, factor)
            .swapaxes(1, 2)
            .reshape(h // factor, w // factor, -1)
        )

    values, mask = blocks(image), blocks(has_data)
    first = mask.argmax(axis=-1)[..., None]
    return np.take_along_axis(values, first, axis=-1)[..., 0], np.asarray(mask.any(axis=-1))


class _Canvas:
    """One acquisition over a tile at 10 m: DN, SCL, cloud probability (x255) and data mask."""

    def __init__(self, shape: tuple[int, int]):
        self.dn = np.zeros((*shape, len(contract.BAND_NAMES)), dtype=np.uint16)
        self.scl = np.zeros(shape, dtype=np.uint8)
        self.clp = np.zeros(shape, dtype=np.uint8)
        self.valid = np.zeros(shape, dtype=bool)

    def paste(self, frame: dict[str, np.ndarray], row: int, col: int) -> None:
        """A simulated frame at (row, col), where the canvas has no data yet."""
        h, w = frame["IS_DATA"].shape[:2]
        window = (slice(row, row + h), slice(col, col + w))
        take = frame["IS_DATA"][..., 0] & ~self.valid[window]
        self.dn[window][take] = frame["BANDS"][take]
        self.scl[window][take] = frame["SCL"][..., 0][take]
        self.clp[window][take] = frame["CLP"][..., 0][take]
        self.valid[window] |= take

    @property
    def cloud_cover(self) -> float:
        """Percentage of SCL 8, 9, 10 among the pixels with data."""
        n = int(self.valid.sum())
        return 0.0 if n == 0 else round(100.0 * np.isin(self.scl[self.valid], CLM_SCL_CLASSES).sum() / n, 4)

    def cloud_percent_20m(self) -> np.ndarray:
        """Mean cloud probability of the pixels with data of each 20 m pixel, in percent (uint8)."""
        h, w = self.clp.shape
        counts = self.valid.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
        total = (
            np.where(self.valid, self.clp, 0).reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3), dtype=np.float64)
        )
        return np.rint(100.0 * total / np.maximum(counts, 1) / 255.0).astype(np.uint8)


def _cog_asset(
    folder: Path,
    key: str,
    array: np.ndarray,
    res: int,
    tile: _Tile,
    epsg: int,
    band: RasterBand,
    *,
    title: str,
    resampling: str,
    eo_band: Band | None = None,
) -> pystac.Asset:
    """Write ``array`` as ``folder/<key>.tif`` (COG at ``res`` m) and describe it as an asset."""
    path = folder / f"{key}.tif"
    transform = Affine(res, 0.0, tile.bounds[0], 0.0, -res, tile.bounds[3])
    profile = dict(
        COG_OPTIONS,
        RESAMPLING=resampling,
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype.name,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=band.nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, title=title, roles=["data"])
    asset.extra_fields["gsd"] = res
    asset.extra_fields["proj:shape"] = list(array.shape)
    asset.extra_fields["proj:transform"] = list(transform)[:6]
    asset.extra_fields["raster:bands"] = [band.to_dict()]
    if eo_band is not None:
        asset.extra_fields["eo:bands"] = [eo_band.to_dict()]
    return asset


def _write_item(
    parent: Path,
    when: dt.datetime,
    canvas: _Canvas,
    footprint: shapely.Geometry,
    tile: _Tile,
    epsg: int,
    seed: int,
    cloud_probability: bool,
) -> pystac.Item:
    """The COGs and the item of one acquisition of a tile, in ``parent/<item id>/``."""
    item_id = f"S2{_platform(when)[-1].upper()}_{tile.name}_{when:%Y%m%d}_0_L2A"
    folder = parent / item_id
    folder.mkdir(parents=True)
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    geometry = shapely.transform(shapely.segmentize(footprint, 1000.0), to_wgs84.transform, interleaved=False)
    item = pystac.Item(
        id=item_id,
        geometry=shapely.geometry.mapping(geometry),
        bbox=list(geometry.bounds),
        datetime=when.replace(tzinfo=dt.timezone.utc),
        properties={
            "platform": _platform(when),
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "s2:processing_baseline": PROCESSING_BASELINE,
            "mgrs:utm_zone": epsg % 100,
            "proj:epsg": epsg,
            "s2agri:simulator_seed": seed,
        },
    )
    EOExtension.ext(item, add_if_missing=True).cloud_cover = canvas.cloud_cover
    ProjectionExtension.ext(item, add_if_missing=True).code = f"EPSG:{epsg}"
    RasterExtension.add_to(item)

    def add(key: str, array: np.ndarray, res: int, band: RasterBand, title: str, **kwargs: Any) -> None:
        item.add_asset(key, _cog_asset(folder, key, array, res, tile, epsg, band, title=title, **kwargs))

    for i, name in enumerate(contract.BAND_NAMES):
        res = contract.BAND_RESOLUTION_M[name]
        values, has = native(canvas.dn[..., i], canvas.valid, res // 10)
        stored = np.where(has, values + DN_OFFSET, 0).astype(np.uint16)
        band = RasterBand.create(
            nodata=0,
            data_type=DataType.UINT16,
            spatial_resolution=res,
            scale=contract.NORM_FACTOR,
            offset=-DN_OFFSET * contract.NORM_FACTOR,
        )
        eo_band = Band.create(name=name, common_name=COMMON_NAMES[name])
        add(
            EARTH_SEARCH_ASSETS[name],
            stored,
            res,
            band,
            f"{name} - {res}m",
            resampling="AVERAGE",
            eo_band=eo_band,
        )
    band = RasterBand.create(nodata=0, data_type=DataType.UINT8, spatial_resolution=10)
    add(
        EARTH_SEARCH_ASSETS["SCL"],
        canvas.scl,
        10,
        band,
        "Scene classification map (SCL)",
        resampling="NEAREST",
    )
    if cloud_probability:
        band = RasterBand.create(data_type=DataType.UINT8, spatial_resolution=20, scale=0.01, offset=0.0)
        percent = canvas.cloud_percent_20m()
        add(CLOUD_PROBABILITY_ASSET, percent, 20, band, "Cloud probabilities (percent)", resampling="AVERAGE")
    return item


def _platform(when: dt.datetime) -> str:
    """Sentinel-2A on the simulator's first relative orbit, 2B on the second."""
    return "sentinel-2a" if when.time() == ORBIT_TIMES[0] else "sentinel-2b"


def _acquisitions(
    tile: _Tile, bboxes: Sequence[BBox], simulators: Sequence[BoxSimulator]
) -> Iterator[tuple[dt.datetime, _Canvas, shapely.Geometry]]:
    """Each acquisition date of a tile's boxes: the mosaic of the boxes acquired then, and their footprint."""
    for when in sorted({when for i in tile.boxes for when in simulators[i].dates}):
        canvas, acquired = _Canvas(tile.shape), []
        for i in tile.boxes:
            if when in simulators[i].dates:
                canvas.paste(simulators[i].acquire(simulators[i].dates.index(when)), *tile.offset(bboxes[i]))
                acquired.append(bboxes[i].geometry)
        yield when, canvas, shapely.union_all(acquired)


def _collection(collection: str, items: Sequence[pystac.Item]) -> pystac.Collection:
    times = [item.datetime for item in items if item.datetime is not None]
    bounds = shapely.union_all([shapely.box(*item.bbox) for item in items if item.bbox is not None]).bounds
    extent = pystac.Extent(
        pystac.SpatialExtent([list(bounds)]), pystac.TemporalExtent([[min(times), max(times)]])
    )
    coll = pystac.Collection(
        id=collection,
        title="Sentinel-2 Level-2A (simulated)",
        extent=extent,
        description="Simulated Sentinel-2 L2A scenes of s2agri, laid out like Earth Search v1",
    )
    coll.add_items(items)
    return coll


def write_stac_catalog(
    root: str | os.PathLike[str],
    bboxes: Sequence[BBox],
    *,
    seed: int = 0,
    frames_min: int = contract.MIN_FRAMES,
    frames_max: int = contract.MAX_FRAMES,
    collection: str = "sentinel-2-l2a",
    cloud_probability: bool = True,
    tile_per_box: bool = False,
    overwrite: bool = False,
    threads: int = 4,
) -> Path:
    """Simulate ``bboxes`` and write them as a static STAC catalog in ``root``; returns ``root/catalog.json``.

    Meant for demo-sized areas (every box's simulator is held in memory); ``threads`` write
    items concurrently. See the module docstring for the layout.
    """
    root = Path(root)
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise S2AgriInputError(f"{root} exists: remove it, choose another folder or pass overwrite=True")
    if not 1 <= frames_min <= frames_max:
        raise S2AgriInputError(
            f"frames_min={frames_min}, frames_max={frames_max}: need 1 <= frames_min <= frames_max"
        )
    bboxes = list(bboxes)
    epsg = _check_boxes(bboxes)
    simulators = [BoxSimulator(b, seed, frames_min, frames_max) for b in bboxes]
    if tile_per_box:
        tiles = [_Tile.of(f"{epsg % 100}SIM{i}", [i], bboxes) for i in range(len(bboxes))]
    else:
        tiles = [_Tile.of(f"{epsg % 100}SIM", range(len(bboxes)), bboxes)]

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stac-catalog-", dir=root.parent))
    build = tmp / "catalog"  # no dot in the name: pystac would take it for a file
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = [
                pool.submit(
                    _write_item,
                    build / collection,
                    when,
                    canvas,
                    footprint,
                    tile,
                    epsg,
                    seed,
                    cloud_probability,
                )
                for tile in tiles
                for when, canvas, footprint in _acquisitions(tile, bboxes, simulators)
            ]
        catalog = pystac.Catalog(
            id="s2agri-demo",
            title="s2agri simulated Sentinel-2 L2A",
            description="A demo catalog of simulated Sentinel-2 L2A scenes written by s2agri",
        )
        catalog.add_child(_collection(collection, [future.result() for future in futures]))
        catalog.normalize_hrefs(str(build))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        if root.exists():
            os.replace(root, tmp / "old")
        os.replace(build, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("wrote STAC catalog %s: %d items of %d boxes", root, len(futures), len(bboxes))
    return root / "catalog.json"
