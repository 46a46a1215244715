"""Sentinel-2 L2A from a STAC catalog (a STAC API or a static catalog) as a contract EOPatch.

:class:`StacInputTask` searches the items of a collection over a box and a time interval,
groups the items of one acquisition (several tiles of one datatake) and mosaics them into the
box grid, reading every asset with rasterio (windowed, nearest-neighbour warping, so a box in
another UTM zone or CRS than the assets works). Asset names default to Earth Search v1
(``earth-search.aws.element84.com/v1``, collections ``sentinel-2-l2a`` / ``sentinel-2-c1-l2a``).

Conventions, decided here and shared by :mod:`.stac_catalog`:

* **Digital numbers**: reflectance = raw * scale + offset from the asset's ``raster:bands``
  (Earth Search v1 stores processing baseline >= 04.00 with a +1000 DN offset: scale 0.0001,
  offset -0.1). Without ``raster:bands`` scale, baseline ``s2:processing_baseline`` >= 04.00
  means (0.0001, -0.1), anything else (0.0001, 0). BANDS = round(reflectance / 1e-4) clipped to
  0..10000, uint16, 0 where IS_DATA is False.
* **IS_DATA**: all twelve band assets hold data (not their nodata value).
* **CLM** = SCL in {8, 9, 10}: cloud medium probability, cloud high probability, thin cirrus —
  the classes Sen2Cor counts in its cloudy-pixel percentage (``eo:cloud_cover``). Cloud shadows
  (3) are left out on purpose: the contract's CLM is s2cloudless's cloud mask, which has no
  shadows, and downstream masking (``ValidMaskTask``) can add SCL 3 where it wants them.
* **CLP** from the cloud-probability asset when the item has one (default ``"cloud"``: Sen2Cor's
  ``MSK_CLDPRB_20m`` as Earth Search ``sentinel-2-c1-l2a`` and stactools-sentinel2 name it,
  percent 0..100 unless its ``raster:bands`` scale says otherwise), scaled to 0..255. Without
  it, CLP comes from SCL (:data:`SCL_CLOUD_PROBABILITY`): 9 -> 255, 8 -> 170, 10 -> 128, else
  0, so that s2cloudless's threshold 0.4 on CLP gives back CLM.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pystac
import pystac_client
import rasterio
import rasterio.crs
import rasterio.io
import shapely
import shapely.geometry
from eolearn.core import EOPatch, EOTask
from pyproj import Transformer
from pystac.stac_io import DefaultStacIO
from pystac_client.conformance import ConformanceClasses
from rasterio.transform import Affine, array_bounds
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from sentinelhub import BBox
from sentinelhub.time_utils import parse_time_interval

from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError

from .. import contract

LOGGER = logging.getLogger(__name__)

#: Contract band (and "SCL") -> asset key of Earth Search v1 ``sentinel-2-l2a``.
EARTH_SEARCH_ASSETS: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}  # fmt: skip
#: Sen2Cor cloud probability (MSK_CLDPRB_20m, percent) as Earth Search ``sentinel-2-c1-l2a`` names it.
CLOUD_PROBABILITY_ASSET = "cloud"
#: SCL classes of CLM: cloud medium probability, cloud high probability, thin cirrus.
CLM_SCL_CLASSES: tuple[int, ...] = (8, 9, 10)
#: CLP (x255) derived from SCL when no cloud-probability asset is read; other classes give 0.
SCL_CLOUD_PROBABILITY: dict[int, int] = {8: 170, 9: 255, 10: 128}
#: From this Sentinel-2 processing baseline on, L2A DN carry a +1000 offset.
BOA_OFFSET_BASELINE = 4.0
BOA_OFFSET = -0.1
#: Items of one acquisition (tiles of a datatake) lie within this time of the first (as the challenge's 120 min).
TIME_DIFFERENCE = dt.timedelta(minutes=120)
_WARP_LOCK = threading.Lock()
#: GDAL options of every asset read (no directory listing, retries on transient HTTP errors).
GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class _TimeoutStacIO(DefaultStacIO):
    """pystac's reader with a network time-out."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def read_text_from_href(self, href: str) -> str:
        if href.startswith(("http://", "https://")):
            with urllib.request.urlopen(href, timeout=self.timeout) as response:
                return response.read().decode("utf-8")
        return super().read_text_from_href(href)


@dataclass(frozen=True)
class BoxGrid:
    """The output raster of a box: rows, columns, transform and CRS."""

    height: int
    width: int
    transform: Affine
    crs: rasterio.crs.CRS

    @classmethod
    def of(cls, bbox: BBox, resolution: float) -> BoxGrid:
        if bbox.crs.pyproj_crs().is_geographic:
            raise S2AgriInputError(
                f"bbox CRS {bbox.crs.ogc_string()} is geographic: give the box in a projected CRS in metres, e.g. its UTM zone"
            )
        sides = np.array([bbox.max_x - bbox.min_x, bbox.max_y - bbox.min_y]) / resolution
        if np.any(np.abs(sides - np.round(sides)) > 1e-6) or np.any(np.round(sides) < 1):
            raise S2AgriInputError(
                f"bbox sides {bbox.max_x - bbox.min_x:g} x {bbox.max_y - bbox.min_y:g} are not whole multiples "
                f"of the resolution {resolution:g}: snap the box to the {resolution:g} m grid"
            )
        transform = Affine(resolution, 0.0, bbox.min_x, 0.0, -resolution, bbox.max_y)
        crs = rasterio.crs.CRS.from_user_input(bbox.crs.ogc_string())
        return cls(round(sides[1]), round(sides[0]), transform, crs)


def _aligned_offsets(src: rasterio.io.DatasetReader, grid: BoxGrid) -> tuple[int, int, int] | None:
    """(factor, row offset, column offset) in grid pixels when the source pixels are whole blocks of the grid's."""
    s, g = src.transform, grid.transform
    if src.crs != grid.crs or s.b or s.d or g.b or g.d or s.e != -s.a or g.e != -g.a:
        return None
    numbers = np.array([s.a / g.a, (s.f - g.f) / g.a, (g.c - s.c) / g.a])
    if np.any(np.abs(numbers - np.round(numbers)) > 1e-6) or round(numbers[0]) < 1:
        return None
    factor, row0, col0 = (round(n) for n in numbers)
    return factor, row0, col0


def _source_window(src: rasterio.io.DatasetReader, grid: BoxGrid) -> Window | None:
    """The window of ``src`` under the grid, padded by a pixel and clipped to the dataset (None: no overlap)."""
    bounds = transform_bounds(
        grid.crs, src.crs, *array_bounds(grid.height, grid.width, grid.transform), densify_pts=21
    )
    window = from_bounds(*bounds, transform=src.transform)
    col0, row0 = max(math.floor(window.col_off) - 1, 0), max(math.floor(window.row_off) - 1, 0)
    col1 = min(math.ceil(window.col_off + window.width) + 1, src.width)
    row1 = min(math.ceil(window.row_off + window.height) + 1, src.height)
    return Window(col0, row0, col1 - col0, row1 - row0) if col1 > col0 and row1 > row0 else None


def read_onto(src: rasterio.io.DatasetReader, grid: BoxGrid, nodata: float | None) -> np.ndarray:
    """Band 1 of ``src`` on the grid by nearest neighbour (nodata or 0 outside the source).

    A windowed read repeated by the resolution factor when the grids align (same CRS, source
    pixels whole blocks of grid pixels), else a windowed read warped by GDAL; both pick the
    source pixel under each grid pixel's centre.
    """
    out = np.full((grid.height, grid.width), 0 if nodata is None else nodata, dtype=src.dtypes[0])
    aligned = _aligned_offsets(src, grid)
    if aligned is None:
        window = _source_window(src, grid)
        if window is None:
            return out
        source = src.read(1, window=window)
        t = src.transform
        transform = Affine(
            t.a,
            t.b,
            t.c + t.a * window.col_off + t.b * window.row_off,
            t.d,
            t.e,
            t.f + t.d * window.col_off + t.e * window.row_off,
        )
        with _WARP_LOCK:  # concurrent warps make rasterio emit spurious NotGeoreferencedWarnings
            reproject(
                source,
                out,
                src_transform=transform,
                src_crs=src.crs,
                src_nodata=nodata,
                dst_nodata=nodata,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                resampling=Resampling.nearest,
            )
        return out
    factor, row0, col0 = aligned
    rows = (row0 + np.arange(grid.height)) // factor
    cols = (col0 + np.arange(grid.width)) // factor
    in_rows, in_cols = (rows >= 0) & (rows < src.height), (cols >= 0) & (cols < src.width)
    if in_rows.any() and in_cols.any():
        r0, r1, c0, c1 = rows[in_rows][0], rows[in_rows][-1] + 1, cols[in_cols][0], cols[in_cols][-1] + 1
        block = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
        out[np.ix_(in_rows, in_cols)] = block[np.ix_(rows[in_rows] - r0, cols[in_cols] - c0)]
    return out


def item_time(item: pystac.Item) -> dt.datetime:
    """Acquisition time of an item as a naive UTC datetime (eo-learn timestamps)."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise S2AgriSourceError(f"STAC item {item.id} has no datetime: the catalog is malformed")
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def group_acquisitions(
    items: Sequence[pystac.Item], time_difference: dt.timedelta
) -> list[list[pystac.Item]]:
    """Items sorted by time and id, split where an item is over ``time_difference`` after its group's first."""
    groups: list[list[pystac.Item]] = []
    for item in sorted(items, key=lambda i: (item_time(i), i.id)):
        if groups and item_time(item) - item_time(groups[-1][0]) <= time_difference:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _raster_band(asset: pystac.Asset) -> dict[str, Any]:
    bands = asset.extra_fields.get("raster:bands") or [{}]
    return bands[0] if isinstance(bands[0], dict) else {}


def scale_offset(item: pystac.Item, asset: pystac.Asset) -> tuple[float, float]:
    """Reflectance = raw * scale + offset of a band asset (see the module docstring)."""
    band = _raster_band(asset)
    if band.get("scale") is not None:
        return float(band["scale"]), float(band.get("offset") or 0.0)
    try:
        baseline = float(item.properties.get("s2:processing_baseline", 0.0))
    except (TypeError, ValueError):
        baseline = 0.0
    return contract.NORM_FACTOR, BOA_OFFSET if baseline >= BOA_OFFSET_BASELINE else 0.0


def to_dn(raw: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """Stored values -> contract digital numbers (reflectance / 1e-4, clipped to 0..10000, uint16)."""
    reflectance = raw.astype(np.float64) * scale + offset
    return np.clip(np.rint(reflectance / contract.NORM_FACTOR), 0, contract.MAX_DN).astype(np.uint16)


def clm_from_scl(scl: np.ndarray) -> np.ndarray:
    """CLM (uint8 0/1) from SCL: 1 on the classes of :data:`CLM_SCL_CLASSES`."""
    return np.isin(scl, CLM_SCL_CLASSES).astype(np.uint8)


def clp_from_scl(scl: np.ndarray) -> np.ndarray:
    """CLP (uint8 x255) from SCL by :data:`SCL_CLOUD_PROBABILITY`."""
    lookup = np.zeros(256, dtype=np.uint8)
    for cls, value in SCL_CLOUD_PROBABILITY.items():
        lookup[cls] = value
    return lookup[scl]


class StacInputTask(EOTask):
    """Create an EOPatch for a box from the Sentinel-2 L2A items of a STAC catalog.

    ``catalog`` is the URL or path of a STAC API root (searched with pystac-client when it
    conforms to item-search) or of a static ``catalog.json`` (walked with pystac, a folder means
    its ``catalog.json``). Items intersecting the box in the time interval with ``eo:cloud_cover``
    <= ``maxcc`` * 100 are kept (items without cloud cover only when ``maxcc`` >= 1); footprints
    overlapping the box by less than a quarter pixel (numerical slivers along shared edges) do not
    count. ``assets`` maps the contract bands and ``"SCL"`` to asset keys (Earth Search v1 by
    default); ``cloud_probability_asset=None`` always derives CLP from SCL.
    """

    def __init__(
        self,
        catalog: str | os.PathLike[str],
        collection: str = "sentinel-2-l2a",
        *,
        time_interval: tuple[str | dt.date, str | dt.date] = contract.TIME_INTERVAL,
        maxcc: float = 0.5,
        resolution: float = contract.INPUT_RESOLUTION_M,
        assets: Mapping[str, str] | None = None,
        cloud_probability_asset: str | None = CLOUD_PROBABILITY_ASSET,
        time_difference: dt.timedelta = TIME_DIFFERENCE,
        timeout: float = 60.0,
        threads: int = 4,
    ):
        if not 0.0 <= maxcc <= 1.0:
            raise S2AgriInputError(
                f"maxcc={maxcc} is outside 0..1: give the largest cloud cover fraction, e.g. 0.5"
            )
        if resolution <= 0:
            raise S2AgriInputError(f"resolution={resolution} is not positive: give metres per pixel, e.g. 10")
        assets = dict(EARTH_SEARCH_ASSETS if assets is None else assets)
        missing = [name for name in (*contract.BAND_NAMES, "SCL") if name not in assets]
        if missing:
            raise S2AgriInputError(
                f"assets has no key for {', '.join(missing)}: map every band and SCL to an asset key, "
                "e.g. s2agri.tasks.sources.stac.EARTH_SEARCH_ASSETS"
            )
        catalog = os.fspath(catalog)
        if "://" not in catalog and Path(catalog).is_dir():
            catalog = str(Path(catalog) / "catalog.json")
        self.catalog = catalog
        self.collection = collection
        self.time_interval = time_interval
        self.maxcc = float(maxcc)
        self.resolution = float(resolution)
        self.assets = assets
        self.cloud_probability_asset = cloud_probability_asset
        self.time_difference = time_difference
        self.timeout = float(timeout)
        self.threads = max(1, int(threads))

    # --- search -------------------------------------------------------------------------------

    def _source_error(self, what: str, exc: BaseException) -> S2AgriSourceError:
        return S2AgriSourceError(
            f"STAC catalog {self.catalog}: {what} ({first_line(exc)}): "
            "give the URL or path of a reachable STAC API root or static catalog.json"
        )

    def _unknown_collection(self, available: Sequence[str]) -> S2AgriSourceError:
        listed = ", ".join(sorted(available)) if available else "none"
        return S2AgriSourceError(
            f"STAC catalog {self.catalog} has no collection {self.collection!r}: use one of {listed}"
        )

    def _read_root(self) -> pystac.STACObject:
        try:
            root = pystac.read_file(self.catalog, stac_io=_TimeoutStacIO(self.timeout))
        except Exception as exc:  # missing, unreachable, not JSON, not STAC: all the user's to fix
            raise self._source_error("cannot read it", exc) from exc
        if not isinstance(root, pystac.Catalog):
            raise S2AgriSourceError(
                f"STAC catalog {self.catalog} is a {type(root).__name__}, not a catalog: "
                "give the URL or path of a STAC API root or static catalog.json"
            )
        return root

    def _search_api(
        self, search_bbox: list[float], start: dt.datetime, end: dt.datetime
    ) -> list[pystac.Item]:
        try:
            client = pystac_client.Client.open(self.catalog, timeout=self.timeout)
            available = [c.id for c in client.get_collections()]
        except Exception as exc:
            raise self._source_error("cannot open the STAC API", exc) from exc
        if self.collection not in available:
            raise self._unknown_collection(available)
        kwargs: dict[str, Any] = {
            "collections": [self.collection],
            "bbox": search_bbox,
            "datetime": [start.replace(tzinfo=dt.timezone.utc), end.replace(tzinfo=dt.timezone.utc)],
        }
        if self.maxcc < 1.0 and client.conforms_to(ConformanceClasses.QUERY):
            kwargs["query"] = {"eo:cloud_cover": {"lte": self.maxcc * 100.0}}
        try:
            return list(client.search(**kwargs).items())
        except Exception as exc:
            raise self._source_error("item search failed", exc) from exc

    def _walk_static(self, root: pystac.Catalog) -> list[pystac.Item]:
        try:
            found: pystac.Catalog
            if isinstance(root, pystac.Collection) and root.id == self.collection:
                found = root
            else:
                collections = list(root.get_all_collections())
                match = next((c for c in collections if c.id == self.collection), None)
                if match is None:
                    raise self._unknown_collection([c.id for c in collections])
                found = match
            return list(found.get_items(recursive=True))
        except S2AgriSourceError:
            raise
        except Exception as exc:
            raise self._source_error("cannot walk the static catalog", exc) from exc

    def search(self, bbox: BBox, start: dt.datetime, end: dt.datetime) -> list[pystac.Item]:
        """Items over ``bbox`` in [start, end] (naive UTC) under ``maxcc``; raises when there is none."""
        root = cast(pystac.Catalog, self._read_root())
        to_wgs84 = Transformer.from_crs(bbox.crs.pyproj_crs(), 4326, always_xy=True)
        search_bbox = list(
            to_wgs84.transform_bounds(bbox.min_x, bbox.min_y, bbox.max_x, bbox.max_y, densify_pts=21)
        )
        conforms = root.extra_fields.get("conformsTo") or []
        if any(ConformanceClasses.ITEM_SEARCH.pattern.fullmatch(str(uri)) for uri in conforms):
            candidates = self._search_api(search_bbox, start, end)
        else:
            candidates = self._walk_static(root)
        from_wgs84 = Transformer.from_crs(4326, bbox.crs.pyproj_crs(), always_xy=True)
        box = bbox.geometry
        min_overlap = 0.25 * self.resolution**2
        kept = []
        for item in candidates:
            when = item_time(item)
            cover = item.properties.get("eo:cloud_cover")
            if not start <= when <= end:
                continue
            if (cover is None and self.maxcc < 1.0) or (
                cover is not None and cover > self.maxcc * 100.0 + 1e-9
            ):
                continue
            shape = (
                shapely.geometry.shape(item.geometry)
                if item.geometry
                else shapely.box(*cast(list[float], item.bbox))
            )
            footprint = shapely.transform(
                shapely.segmentize(shape, 0.01), from_wgs84.transform, interleaved=False
            )
            if footprint.intersection(box).area >= min_overlap:
                kept.append(item)
        if not kept:
            raise S2AgriSourceError(
                f"STAC catalog {self.catalog}: no item in {self.collection} over the bbox in "
                f"{start.isoformat()}/{end.isoformat()} with cloud cover <= {self.maxcc * 100:g} %: "
                "widen the time interval or raise maxcc"
            )
        LOGGER.info("STAC %s: %d of %d items over %s", self.collection, len(kept), len(candidates), bbox)
        return kept

    # --- reading ------------------------------------------------------------------------------

    def _read_asset(self, item: pystac.Item, key: str, grid: BoxGrid) -> tuple[np.ndarray, float | None]:
        """One asset warped (nearest) onto the box grid, and its nodata value."""
        asset = item.assets.get(key)
        if asset is None:
            raise S2AgriSourceError(
                f"STAC item {item.id} has no asset {key!r}: pass assets=... mapping the bands to its "
                f"asset keys ({', '.join(sorted(item.assets))})"
            )
        href = asset.get_absolute_href() or asset.href
        try:
            with rasterio.open(href) as src:
                nodata = src.nodata if src.nodata is not None else _raster_band(asset).get("nodata")
                out = read_onto(src, grid, nodata)
        except Exception as exc:
            raise S2AgriSourceError(
                f"STAC item {item.id}: cannot read asset {key!r} at {href} ({first_line(exc)}): "
                "check that the asset exists and is reachable"
            ) from exc
        return out, nodata

    def _read_item(self, item: pystac.Item, grid: BoxGrid) -> dict[str, np.ndarray]:
        """BANDS, SCL, CLP and IS_DATA of one item on the box grid."""
        bands = np.zeros((grid.height, grid.width, len(contract.BAND_NAMES)), dtype=np.uint16)
        valid = np.ones((grid.height, grid.width), dtype=bool)
        for i, name in enumerate(contract.BAND_NAMES):
            raw, nodata = self._read_asset(item, self.assets[name], grid)
            if nodata is not None:
                valid &= raw != nodata
            bands[..., i] = to_dn(raw, *scale_offset(item, item.assets[self.assets[name]]))
        scl, _ = self._read_asset(item, self.assets["SCL"], grid)
        scl = scl.astype(np.uint8)
        key = self.cloud_probability_asset
        if key is not None and key in item.assets:
            raw, _ = self._read_asset(item, key, grid)
            band = _raster_band(item.assets[key])
            scale = band.get("scale")
            probability = raw * (0.01 if scale is None else float(scale)) + float(band.get("offset") or 0.0)
            clp = np.clip(np.rint(probability * 255.0), 0, 255).astype(np.uint8)
        else:
            clp = clp_from_scl(scl)
        return {"BANDS": bands, "SCL": scl, "CLP": clp, "IS_DATA": valid}

    def _read_acquisition(self, items: Sequence[pystac.Item], grid: BoxGrid) -> dict[str, np.ndarray]:
        """Mosaic of the items of one acquisition: each pixel from the first item with data there."""
        with rasterio.Env(GDAL_HTTP_TIMEOUT=str(int(self.timeout)), **GDAL_OPTIONS):
            out: dict[str, np.ndarray] | None = None
            for item in items:
                frame = self._read_item(item, grid)
                if out is None:
                    out = frame
                    continue
                take = frame["IS_DATA"] & ~out["IS_DATA"]
                for name in ("BANDS", "SCL", "CLP"):
                    out[name][take] = frame[name][take]
                out["IS_DATA"] |= take
                if out["IS_DATA"].all():
                    break
        assert out is not None
        invalid = ~out["IS_DATA"]
        for name in ("BANDS", "SCL", "CLP"):
            out[name][invalid] = 0
        return out

    def execute(
        self,
        eopatch: EOPatch | None = None,
        *,
        bbox: BBox | None = None,
        time_interval: tuple[str | dt.date, str | dt.date] | None = None,
    ) -> EOPatch:
        bbox = bbox if bbox is not None else (eopatch.bbox if eopatch is not None else None)
        if bbox is None:
            raise S2AgriInputError("no bbox: pass bbox=... to execute or an EOPatch that has one")
        grid = BoxGrid.of(bbox, self.resolution)
        interval = time_interval if time_interval is not None else self.time_interval
        try:
            start, end = parse_time_interval(interval)
            if start is None or end is None:
                raise ValueError("an open interval")
        except (ValueError, TypeError) as exc:
            raise S2AgriInputError(
                f"time_interval={interval!r} is not a time interval ({first_line(exc)}): give (start, end), "
                "e.g. ('2019-03-01', '2019-09-01')"
            ) from exc
        groups = group_acquisitions(self.search(bbox, start, end), self.time_difference)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            frames = list(pool.map(lambda group: self._read_acquisition(group, grid), groups))

        result = EOPatch(bbox=bbox, timestamps=[item_time(group[0]) for group in groups])
        result[contract.BANDS] = np.stack([f["BANDS"] for f in frames])
        scl = np.stack([f["SCL"] for f in frames])[..., None]
        result[contract.SCL] = scl
        result[contract.CLM] = clm_from_scl(scl)
        result[contract.CLP] = np.stack([f["CLP"] for f in frames])[..., None]
        result[contract.IS_DATA] = np.stack([f["IS_DATA"] for f in frames])[..., None]
        result[contract.NORM_FACTORS] = np.full((len(frames), 1), contract.NORM_FACTOR, dtype=np.float32)
        result.meta_info.update(
            source="stac",
            stac_catalog=self.catalog,
            stac_collection=self.collection,
            stac_items=[[item.id for item in group] for group in groups],
        )
        LOGGER.info("STAC %s: %d acquisitions over %s", self.collection, len(frames), bbox)
        if eopatch is None:
            return result
        for feature in result.get_features():
            eopatch[feature] = result[feature]
        eopatch.timestamps = result.timestamps
        eopatch.meta_info.update(result.meta_info)
        return eopatch
