"""The STAC source: a demo static catalog written from the simulator, read back by StacInputTask.

Two adjacent 60 px boxes on the 60 m grid are simulated and written as a catalog; loading a box
(locally, over HTTP, through a STAC API) must give back the simulator's arrays exactly.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import io
import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pystac
import pytest
import rasterio
from eolearn.core import EOPatch
from pyproj import Transformer
from sentinelhub import CRS, BBox

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.sources.simulator import acquisition_dates, simulate_eopatch
from s2agri.tasks.sources.stac import EARTH_SEARCH_ASSETS, StacInputTask
from s2agri.tasks.sources.stac_catalog import write_stac_catalog
from s2agri.workflows.validate import validate_eopatch

SEED = 0
FRAMES = (3, 5)
SIDE = 600.0  # m: 60 px at 10 m, ten 60 m pixels
Y0 = 5080020.0  # on the 60 m grid
ALL_TIME = ("2019-01-01", "2019-12-31")
CLOUD_CLASSES = (8, 9, 10)


def _box(x: float, y: float = Y0, side: float = SIDE, epsg: int = 32633) -> BBox:
    return BBox((x, y, x + side, y + side), crs=CRS(epsg))


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boxes() -> tuple[BBox, BBox]:
    """Two adjacent boxes that share at least one acquisition date (and have dates of their own)."""
    for k in range(30):
        left, right = _box(450000.0 + 2 * k * SIDE), _box(450000.0 + (2 * k + 1) * SIDE)
        a, b = (set(acquisition_dates(SEED, box, *FRAMES)) for box in (left, right))
        if a & b and a - b and b - a:
            return left, right
    pytest.fail("no pair of adjacent boxes shares an acquisition date")


@pytest.fixture(scope="module")
def truth(boxes: tuple[BBox, BBox]) -> list[EOPatch]:
    return [simulate_eopatch(box, SEED, *FRAMES) for box in boxes]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, boxes: tuple[BBox, BBox]) -> Path:
    return write_stac_catalog(
        tmp_path_factory.mktemp("stac") / "demo", boxes, seed=SEED, frames_min=FRAMES[0], frames_max=FRAMES[1]
    )


@pytest.fixture(scope="module")
def tiled_catalog(tmp_path_factory: pytest.TempPathFactory, boxes: tuple[BBox, BBox]) -> Path:
    """Each box its own tile: a date shared by the boxes has two items to mosaic."""
    root = tmp_path_factory.mktemp("stac") / "tiled"
    return write_stac_catalog(
        root, boxes, seed=SEED, frames_min=FRAMES[0], frames_max=FRAMES[1], tile_per_box=True
    )


@pytest.fixture(scope="module")
def loaded_a(catalog: Path, boxes: tuple[BBox, BBox]) -> EOPatch:
    return StacInputTask(catalog, maxcc=1.0, time_interval=ALL_TIME).execute(bbox=boxes[0])


def _mosaic_truth(truth: list[EOPatch]) -> tuple[list[dt.datetime], dict[str, np.ndarray]]:
    """The union of both boxes (60 x 120 px) on every date of either, no data where a box was not acquired."""
    dates = sorted(set(truth[0].timestamps) | set(truth[1].timestamps))
    names = {"BANDS": contract.BANDS, "SCL": contract.SCL, "IS_DATA": contract.IS_DATA, "CLP": contract.CLP}
    out = {}
    for name, feature in names.items():
        channels = truth[0][feature].shape[-1]
        array = np.zeros((len(dates), 60, 120, channels), dtype=truth[0][feature].dtype)
        for side, patch in enumerate(truth):
            for t, when in enumerate(patch.timestamps):
                array[dates.index(when), :, 60 * side : 60 * (side + 1)] = patch[feature][t]
        out[name] = array
    return dates, out


def _cloud_cover(scl: np.ndarray, valid: np.ndarray) -> float:
    return round(100.0 * np.isin(scl[valid], CLOUD_CLASSES).sum() / valid.sum(), 4)


# --- the written catalog ----------------------------------------------------------------------------


def test_catalog_items_follow_earth_search(
    catalog: Path, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    root = pystac.Catalog.from_file(str(catalog))
    assert root.catalog_type == pystac.CatalogType.SELF_CONTAINED
    (collection,) = root.get_collections()
    assert collection.id == "sentinel-2-l2a"
    items = sorted(collection.get_items(), key=lambda item: item.datetime)
    dates, mosaic = _mosaic_truth(truth)
    assert [item.datetime.replace(tzinfo=None) for item in items] == dates
    assert all(item.datetime.utcoffset() == dt.timedelta(0) for item in items)
    assert [item.id for item in items] == [f"S2A_33SIM_{when:%Y%m%d}_0_L2A" for when in dates]
    assert set(items[0].assets) == {*EARTH_SEARCH_ASSETS.values(), "cloud"}
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    for t, item in enumerate(items):
        raw = json.loads(Path(item.get_self_href()).read_text())["properties"]
        assert raw["proj:epsg"] == 32633 and raw["proj:code"] == "EPSG:32633"  # projection v1 and v2
        assert item.properties["s2:processing_baseline"] == "05.00"
        valid = mosaic["IS_DATA"][t, ..., 0]
        assert item.properties["eo:cloud_cover"] == pytest.approx(
            _cloud_cover(mosaic["SCL"][t, ..., 0], valid)
        )
        # the footprint is the union of the boxes acquired that day, in EPSG:4326
        covered = [box for box, patch in zip(boxes, truth, strict=True) if dates[t] in patch.timestamps]
        x, y = to_utm.transform(*np.array(item.geometry["coordinates"][0]).T)
        assert min(x) == pytest.approx(covered[0].min_x, abs=1e-3)
        assert max(x) == pytest.approx(covered[-1].max_x, abs=1e-3)
        assert min(y) == pytest.approx(Y0, abs=1e-3) and max(y) == pytest.approx(Y0 + SIDE, abs=1e-3)


def test_assets_are_native_resolution_cogs_with_the_baseline_4_offset(
    catalog: Path, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    items = sorted(pystac.Catalog.from_file(str(catalog)).get_items(recursive=True), key=lambda i: i.datetime)
    _, mosaic = _mosaic_truth(truth)
    t = next(t for t, item in enumerate(items) if mosaic["IS_DATA"][t].all())  # a date of both boxes
    item = items[t]
    for band, res in contract.BAND_RESOLUTION_M.items():
        asset = item.assets[EARTH_SEARCH_ASSETS[band]]
        assert asset.media_type == pystac.MediaType.COG
        assert asset.extra_fields["raster:bands"] == [
            {"nodata": 0, "data_type": "uint16", "spatial_resolution": res, "scale": 0.0001, "offset": -0.1}
        ]
        with rasterio.open(asset.get_absolute_href()) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
            assert src.crs.to_epsg() == 32633 and src.nodata == 0 and src.dtypes == ("uint16",)
            assert list(src.transform)[:6] == [res, 0.0, boxes[0].min_x, 0.0, -res, Y0 + SIDE]
            assert list(src.transform)[:6] == asset.extra_fields["proj:transform"]
            assert [src.height, src.width] == asset.extra_fields["proj:shape"] == [600 // res, 1200 // res]
            stored = src.read(1)
        # the native raster, stored as DN + 1000: every (res/10)-th 10 m pixel of the simulator
        step = res // 10
        expected = mosaic["BANDS"][t, ::step, ::step, contract.BAND_INDEX[band]].astype(np.int64) + 1000
        np.testing.assert_array_equal(stored, expected, err_msg=band)
    with rasterio.open(item.assets["rededge1"].get_absolute_href()) as src:
        assert src.res == (20.0, 20.0) and src.shape == (30, 60)
    with rasterio.open(item.assets["cloud"].get_absolute_href()) as src:
        percent = src.read(1)
    clp = mosaic["CLP"][t, ..., 0].astype(np.float64).reshape(30, 2, 60, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(percent, np.rint(clp * 100 / 255))


# --- loading --------------------------------------------------------------------------------------


def test_loaded_box_equals_the_simulator(
    loaded_a: EOPatch, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    expected = truth[0]
    assert loaded_a.bbox == boxes[0] and loaded_a.bbox.crs.epsg == 32633
    assert loaded_a.timestamps == expected.timestamps
    for feature in (contract.BANDS, contract.SCL, contract.IS_DATA):
        assert loaded_a[feature].dtype == expected[feature].dtype
        np.testing.assert_array_equal(loaded_a[feature], expected[feature], err_msg=feature[1])
    scl = loaded_a[contract.SCL]
    np.testing.assert_array_equal(loaded_a[contract.CLM], np.isin(scl, CLOUD_CLASSES).astype(np.uint8))
    assert loaded_a[contract.CLM].dtype == np.uint8 and loaded_a[contract.CLP].dtype == np.uint8
    norm = loaded_a[contract.NORM_FACTORS]
    assert (
        norm.dtype == np.float32
        and norm.shape == (len(expected.timestamps), 1)
        and np.all(norm == np.float32(1e-4))
    )
    assert loaded_a.meta_info["source"] == "stac"


def test_clp_is_the_written_cloud_probability(loaded_a: EOPatch, catalog: Path) -> None:
    items = {
        i.datetime.replace(tzinfo=None): i
        for i in pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)
    }
    for t, when in enumerate(loaded_a.timestamps):
        with rasterio.open(items[when].assets["cloud"].get_absolute_href()) as src:
            percent = src.read(1)[:, :30]  # box A is the left half of the tile
        probability = np.repeat(np.repeat(percent, 2, axis=0), 2, axis=1) * 0.01  # raster:bands scale
        expected = np.rint(probability * 255).astype(np.uint8)
        expected[~loaded_a[contract.IS_DATA][t, ..., 0]] = 0
        np.testing.assert_array_equal(loaded_a[contract.CLP][t, ..., 0], expected)


def test_clp_from_scl_without_a_probability_asset(catalog: Path, boxes: tuple[BBox, BBox]) -> None:
    patch = StacInputTask(catalog, maxcc=1.0, time_interval=ALL_TIME, cloud_probability_asset=None).execute(
        bbox=boxes[0]
    )
    scl, clp = patch[contract.SCL], patch[contract.CLP]
    expected = np.select([scl == 9, scl == 8, scl == 10], [255, 170, 128], 0).astype(np.uint8)
    np.testing.assert_array_equal(clp, expected)
    assert (clp > 0.4 * 255).astype(np.uint8).tolist() == patch[contract.CLM].tolist()


@pytest.mark.parametrize("which", ["catalog", "tiled_catalog"])
def test_box_across_both_boxes_is_mosaicked(
    which: str, request: pytest.FixtureRequest, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    across = _box(boxes[0].min_x + SIDE / 2)  # right half of A, left half of B; on the 60 m grid
    patch = StacInputTask(request.getfixturevalue(which), maxcc=1.0, time_interval=ALL_TIME).execute(
        bbox=across
    )
    dates, mosaic = _mosaic_truth(truth)
    assert patch.timestamps == dates
    for name, feature in (("BANDS", contract.BANDS), ("SCL", contract.SCL), ("IS_DATA", contract.IS_DATA)):
        np.testing.assert_array_equal(patch[feature], mosaic[name][:, :, 30:90], err_msg=name)
    shared = [t for t, when in enumerate(dates) if all(when in p.timestamps for p in truth)]
    assert shared  # dates on which the box has data from both boxes
    groups = patch.meta_info["stac_items"]
    assert [len(groups[t]) for t in shared] == [2 if which == "tiled_catalog" else 1] * len(shared)


def test_filters_drop_cloudy_dates_and_dates_outside_the_interval(
    catalog: Path, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    dates, mosaic = _mosaic_truth(truth)
    cover = {
        when: _cloud_cover(mosaic["SCL"][t, ..., 0], mosaic["IS_DATA"][t, ..., 0])
        for t, when in enumerate(dates)
    }
    own = truth[0].timestamps
    values = sorted(cover[when] for when in own)
    maxcc = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 200  # between two dates of box A
    patch = StacInputTask(catalog, maxcc=maxcc, time_interval=ALL_TIME).execute(bbox=boxes[0])
    kept = [when for when in own if cover[when] <= maxcc * 100]
    assert patch.timestamps == kept and 0 < len(kept) < len(own)
    np.testing.assert_array_equal(
        patch[contract.BANDS], truth[0][contract.BANDS][[own.index(w) for w in kept]]
    )

    interval = (f"{own[1]:%Y-%m-%d}", f"{own[-2]:%Y-%m-%d}")  # whole days: the end day is included
    patch = StacInputTask(catalog, maxcc=1.0).execute(bbox=boxes[0], time_interval=interval)
    assert patch.timestamps == own[1:-1]


def test_box_in_another_utm_zone_is_reprojected(
    catalog: Path, truth: list[EOPatch], boxes: tuple[BBox, BBox]
) -> None:
    to_34 = Transformer.from_crs(32633, 32634, always_xy=True)
    cx, cy = to_34.transform(boxes[0].min_x + SIDE / 2, Y0 + SIDE / 2)
    cx, cy = round(cx / 10) * 10, round(cy / 10) * 10
    bbox = BBox((cx - 150, cy - 150, cx + 150, cy + 150), crs=CRS(32634))  # inside box A once reprojected
    patch = StacInputTask(catalog, maxcc=1.0, time_interval=ALL_TIME).execute(bbox=bbox)
    assert patch.bbox.crs.epsg == 32634 and patch.timestamps == truth[0].timestamps
    assert patch[contract.BANDS].shape == (len(truth[0].timestamps), 30, 30, 12)
    # expected: the simulator's pixel under each output pixel centre
    xs, ys = np.meshgrid(cx - 145 + 10 * np.arange(30), cy + 145 - 10 * np.arange(30))
    x33, y33 = Transformer.from_crs(32634, 32633, always_xy=True).transform(xs, ys)
    rows, cols = ((Y0 + SIDE - y33) // 10).astype(int), ((x33 - boxes[0].min_x) // 10).astype(int)
    expected = truth[0][contract.BANDS][:, rows, cols]
    assert (patch[contract.BANDS] == expected).all(axis=-1).mean() >= 0.99
    assert (patch[contract.IS_DATA] == truth[0][contract.IS_DATA][:, rows, cols]).mean() >= 0.99


def test_saved_eopatch_passes_the_contract(loaded_a: EOPatch, tmp_path: Path) -> None:
    loaded_a.save(str(tmp_path / "eopatch"))
    assert validate_eopatch(tmp_path / "eopatch") == []
    assert EOPatch.load(str(tmp_path / "eopatch")).meta_info["source"] == "stac"


# --- over HTTP and through a STAC API -------------------------------------------------------------


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range requests, which GDAL's /vsicurl/ needs."""

    ranges_served: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        ranges = self.headers.get("Range")
        if not ranges:
            return super().send_head()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        data = Path(path).read_bytes()
        self.ranges_served.append(self.path)
        first, _, last = ranges.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])


class _StacApiHandler(http.server.BaseHTTPRequestHandler):
    """A minimal STAC API (core, collections, item-search; no query extension) over a static catalog."""

    catalog: Path
    searches: ClassVar[list[dict]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _base(self) -> str:
        return f"http://{self.headers['Host']}"

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        root = pystac.Catalog.from_file(str(self.catalog))
        if url.path == "/":
            base = self._base()
            self._send({
                "type": "Catalog", "id": "api", "stac_version": "1.0.0", "description": "test API",
                "conformsTo": [f"https://api.stacspec.org/v1.0.0/{c}" for c in ("core", "collections", "item-search")],
                "links": [{"rel": "self", "href": f"{base}/"}, {"rel": "root", "href": f"{base}/"},
                          {"rel": "data", "href": f"{base}/collections"},
                          {"rel": "search", "href": f"{base}/search", "method": "POST", "type": "application/geo+json"}],
            })  # fmt: skip
        elif url.path == "/collections":
            collections = [
                c.to_dict(include_self_link=False, transform_hrefs=False) for c in root.get_collections()
            ]
            for c in collections:
                c["links"] = []
            self._send({"collections": collections, "links": []})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.searches.append(query)
        start, end = (
            dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in query["datetime"].split("/")
        )
        features = []
        for collection in pystac.Catalog.from_file(str(self.catalog)).get_collections():
            if collection.id not in query.get("collections", [collection.id]):
                continue
            for item in collection.get_items():
                west, south, east, north = query["bbox"]
                overlaps = (
                    item.bbox[0] <= east
                    and west <= item.bbox[2]
                    and item.bbox[1] <= north
                    and south <= item.bbox[3]
                )
                if overlaps and start <= item.datetime <= end:
                    item.make_asset_hrefs_absolute()
                    feature = item.to_dict(include_self_link=False, transform_hrefs=False)
                    feature["links"] = []
                    features.append(feature)
        self._send({"type": "FeatureCollection", "features": features, "links": []})


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[..., Any]], str]]:
    """Start HTTP servers on 127.0.0.1 (bypassing any proxy); returns their base URL."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    servers = []

    def start(handler: Callable[..., Any]) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_catalog_over_http_gives_the_same_arrays(
    serve: Callable[[Callable[..., Any]], str], catalog: Path, loaded_a: EOPatch, boxes: tuple[BBox, BBox]
) -> None:
    url = serve(functools.partial(_RangeHandler, directory=str(catalog.parent)))
    patch = StacInputTask(f"{url}/catalog.json", maxcc=1.0, time_interval=ALL_TIME).execute(bbox=boxes[0])
    assert any(path.endswith("/nir09.tif") for path in _RangeHandler.ranges_served)  # COGs over /vsicurl/
    assert patch.timestamps == loaded_a.timestamps
    for feature in (contract.BANDS, contract.SCL, contract.IS_DATA, contract.CLM, contract.CLP):
        np.testing.assert_array_equal(patch[feature], loaded_a[feature], err_msg=feature[1])

    missing = f"{url}/nothing/catalog.json"
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(missing).execute(bbox=boxes[0])
    assert str(error.value) == (
        f"STAC catalog {missing}: cannot read it (HTTP Error 404: File not found): "
        "give the URL or path of a reachable STAC API root or static catalog.json"
    )


def test_stac_api_search_gives_the_same_arrays(
    serve: Callable[[Callable[..., Any]], str], catalog: Path, loaded_a: EOPatch, boxes: tuple[BBox, BBox]
) -> None:
    handler = type("Handler", (_StacApiHandler,), {"catalog": catalog, "searches": []})
    url = serve(handler)
    patch = StacInputTask(url, maxcc=1.0, time_interval=ALL_TIME).execute(bbox=boxes[0])
    (search,) = handler.searches  # one POST /search: pystac-client, not a walk of the catalog
    assert search["collections"] == ["sentinel-2-l2a"] and "query" not in search
    assert search["datetime"] == "2019-01-01T00:00:00Z/2019-12-31T23:59:59Z"
    assert patch.timestamps == loaded_a.timestamps
    for feature in (contract.BANDS, contract.SCL, contract.IS_DATA, contract.CLP):
        np.testing.assert_array_equal(patch[feature], loaded_a[feature], err_msg=feature[1])
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(url, "landsat-c2-l2").execute(bbox=boxes[0])
    assert (
        str(error.value) == f"STAC catalog {url} has no collection 'landsat-c2-l2': use one of sentinel-2-l2a"
    )


# --- errors ---------------------------------------------------------------------------------------


def test_source_errors_are_one_line(catalog: Path, boxes: tuple[BBox, BBox], tmp_path: Path) -> None:
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(catalog).execute(bbox=boxes[0], time_interval=("2019-01-01", "2019-01-31"))
    assert str(error.value) == (
        f"STAC catalog {catalog}: no item in sentinel-2-l2a over the bbox in 2019-01-01T00:00:00/2019-01-31T23:59:59 "
        "with cloud cover <= 50 %: widen the time interval or raise maxcc"
    )
    far = _box(500040.0)  # 50 km east of the tile
    with pytest.raises(
        S2AgriSourceError,
        match=r"^STAC catalog .*: no item in sentinel-2-l2a over the bbox in 2019-03-01T00:00:00/2019-09-01T23:59:59 with cloud cover <= 100 %",
    ):
        StacInputTask(catalog, maxcc=1.0).execute(bbox=far)

    missing = tmp_path / "none" / "catalog.json"
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(missing).execute(bbox=boxes[0])
    assert str(error.value) == (
        f"STAC catalog {missing}: cannot read it ([Errno 2] No such file or directory: '{missing}'): "
        "give the URL or path of a reachable STAC API root or static catalog.json"
    )
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(catalog.parent, "sentinel-2-l1c").execute(
            bbox=boxes[0]
        )  # a folder means its catalog.json
    assert (
        str(error.value)
        == f"STAC catalog {catalog} has no collection 'sentinel-2-l1c': use one of sentinel-2-l2a"
    )


def test_broken_asset_names_the_item_and_asset(
    catalog: Path, truth: list[EOPatch], boxes: tuple[BBox, BBox], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(catalog.parent, copy)
    items = pystac.Catalog.from_file(str(copy / "catalog.json")).get_items(recursive=True)
    item = next(i for i in items if i.datetime.replace(tzinfo=None) == truth[0].timestamps[0])
    href = Path(item.assets["nir09"].get_absolute_href())
    href.write_bytes(b"not a tiff")
    with pytest.raises(S2AgriSourceError) as error:
        StacInputTask(copy, maxcc=1.0, time_interval=ALL_TIME).execute(bbox=boxes[0])
    message = str(error.value)
    assert message.startswith(f"STAC item {item.id}: cannot read asset 'nir09' at {href} (")
    assert message.endswith("): check that the asset exists and is reachable") and "\n" not in message

    assets = dict(EARTH_SEARCH_ASSETS, B09="B09")
    with pytest.raises(
        S2AgriSourceError, match=r"^STAC item S2A_33SIM_\d{8}_0_L2A has no asset 'B09': pass assets="
    ):
        StacInputTask(catalog, maxcc=1.0, time_interval=ALL_TIME, assets=assets).execute(bbox=boxes[0])


def test_bad_input_errors(catalog: Path, boxes: tuple[BBox, BBox], tmp_path: Path) -> None:
    with pytest.raises(S2AgriInputError, match=r"^maxcc=1.5 is outside 0..1"):
        StacInputTask(catalog, maxcc=1.5)
    with pytest.raises(S2AgriInputError, match=r"^assets has no key for B8A, SCL: map every band"):
        StacInputTask(
            catalog, assets={k: v for k, v in EARTH_SEARCH_ASSETS.items() if k not in ("B8A", "SCL")}
        )
    with pytest.raises(S2AgriInputError, match=r"^bbox CRS EPSG:4326 is geographic"):
        StacInputTask(catalog).execute(bbox=BBox((14.3, 45.8, 14.4, 45.9), crs=CRS.WGS84))
    with pytest.raises(
        S2AgriInputError, match=r"^bbox sides 605 x 600 are not whole multiples of the resolution 10"
    ):
        StacInputTask(catalog).execute(bbox=BBox((450000, Y0, 450605, Y0 + 600), crs=CRS(32633)))
    with pytest.raises(S2AgriInputError) as error:
        write_stac_catalog(catalog.parent, boxes[:1], frames_min=1, frames_max=1)
    assert (
        str(error.value)
        == f"{catalog.parent} exists: remove it, choose another folder or pass overwrite=True"
    )
    with pytest.raises(S2AgriInputError, match=r"^boxes in several CRS \(EPSG:32633, EPSG:32634\)"):
        write_stac_catalog(tmp_path / "x", [boxes[0], _box(500000.0, epsg=32634)], frames_min=1, frames_max=1)
    assert not (tmp_path / "x").exists()
