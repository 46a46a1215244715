"""``s2agri fetch`` and ``s2agri run`` end to end with the real sources: Sentinel Hub (local fake of its
APIs), GeoDB (recorded responses), PostGIS (a real server) and vector files.

The boxes come from the simulator behind each fake, so every fetched array and every reference mask
can be compared exactly with what the simulator gives for the same box.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg2
import pytest
import yaml
from eolearn.core import EOPatch
from fake_geodb import BOX as GEODB_BOX
from fake_geodb import CLIENT_ID as GEODB_CLIENT_ID
from fake_geodb import CLIENT_SECRET as GEODB_SECRET
from fake_geodb import SEED as GEODB_SEED
from fake_geodb import FakeGeoDB, running
from fake_sentinelhub import FakeSentinelHub
from postgres_server import postgis_dsn  # noqa: F401 (the session fixture)
from sentinelhub import BBox, SentinelHubDownloadClient

from s2agri.tasks import contract
from s2agri.tasks.postgis_export import upload_parcels
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import box_bbox, simulate_eopatch
from s2agri.workflows import cli
from s2agri.workflows.validate import validate_eopatch

SEED, FRAMES = 7, 4
BBOX = box_bbox(3, 48)
CLIENT_ID, SECRET = "cli-client", "cli-secret-77aa"


def bbox_argument(bbox: BBox) -> list[str]:
    return ["--bbox", ",".join(f"{v:.0f}" for v in bbox), "--crs", str(bbox.crs.epsg)]


def simulated_box(bbox: BBox, seed: int, frames: int) -> EOPatch:
    """The simulator's box with its own reference masks: what every source must reproduce."""
    return RasteriseReferenceTask().execute(simulate_eopatch(bbox, seed, frames, frames))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    for name in list(os.environ):
        if name.startswith(("SH_", "GEODB_", "PG")):
            monkeypatch.delenv(name)
    SentinelHubDownloadClient.clear_cache()
    yield
    SentinelHubDownloadClient.clear_cache()


@pytest.fixture
def sentinelhub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSentinelHub]:
    with FakeSentinelHub(
        seed=SEED, frames_min=FRAMES, frames_max=FRAMES, client_id=CLIENT_ID, client_secret=SECRET
    ) as server:
        for name, value in (
            ("SH_BASE_URL", server.base_url),
            ("SH_TOKEN_URL", server.token_url),
            ("SH_CLIENT_ID", CLIENT_ID),
            ("SH_CLIENT_SECRET", SECRET),
        ):
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def expected() -> EOPatch:
    return simulated_box(BBOX, SEED, FRAMES)


def test_fetch_sentinelhub_with_parcels_from_a_file(
    sentinelhub: FakeSentinelHub, expected: EOPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parcels = tmp_path / "parcels.gpkg"
    expected[contract.REFERENCE].rename(columns={"label": "crop_code"}).to_file(parcels, driver="GPKG")
    out = tmp_path / "box"
    argv = [
        "fetch",
        str(out),
        "--source",
        "sentinelhub",
        *bbox_argument(BBOX),
        "--time",
        "2019-03-01/2019-09-01",
    ]
    status = cli.main([*argv, "--parcels", str(parcels), "--label-column", "crop_code"])
    assert status == 0, capsys.readouterr().err
    assert validate_eopatch(out) == []
    patch = EOPatch.load(str(out))
    assert patch.timestamps == expected.timestamps
    for feature in (contract.BANDS, contract.CLM, contract.SCL, contract.IS_DATA, contract.CULTIVATED):
        np.testing.assert_array_equal(patch[feature], expected[feature])
        assert patch[feature].dtype == expected[feature].dtype
    assert patch.meta_info["source"] == "sentinelhub"
    assert sentinelhub.calls["process"] == FRAMES
    assert "4 acquisitions of 48 x 48 px at 10 m in EPSG:32633 from sentinelhub" in capsys.readouterr().out


def test_fetch_sentinelhub_refused_credentials(
    sentinelhub: FakeSentinelHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SH_CLIENT_SECRET", "wrong-secret-1234")
    out = tmp_path / "box"
    status = cli.main(["-vv", "fetch", str(out), "--source", "sentinelhub", *bbox_argument(BBOX)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert status == 2
    assert last.startswith("s2agri: error: Sentinel Hub") and "SH_CLIENT_ID" in last
    assert "wrong-secret-1234" not in err
    assert not out.exists() and not list(tmp_path.glob(".box*")), "nothing half-written"


def test_fetch_with_geodb_parcels_reproduces_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bbox = box_bbox(*GEODB_BOX)
    server: FakeGeoDB
    for server in running():
        for name, value in (
            ("GEODB_API_SERVER_URL", "http://127.0.0.1"),
            ("GEODB_API_SERVER_PORT", str(server.port)),
            ("GEODB_AUTH_CLIENT_ID", GEODB_CLIENT_ID),
            ("GEODB_AUTH_CLIENT_SECRET", GEODB_SECRET),
            ("GEODB_AUTH_DOMAIN", server.url),
        ):
            monkeypatch.setenv(name, value)
        out = tmp_path / "box"
        argv = ["fetch", str(out), *bbox_argument(bbox), "--seed", str(GEODB_SEED), "--frames-min", "3"]
        status = cli.main([*argv, "--frames-max", "3", "--parcels", "geodb://ai4eo/ai4eo_reference"])
        assert status == 0, capsys.readouterr().err
        assert server.unmatched == []
    own = simulated_box(bbox, GEODB_SEED, 3)
    patch = EOPatch.load(str(out))
    assert sorted(patch[contract.REFERENCE]["id"]) == sorted(own[contract.REFERENCE]["id"])
    for feature in (contract.CULTIVATED, contract.NOT_DECLARED, contract.ALL_POLYS):
        np.testing.assert_array_equal(patch[feature], own[feature])


def _without_password(dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The DSN without its password, which goes to PGPASSWORD (config files refuse passwords)."""
    parts = urlsplit(dsn)
    monkeypatch.setenv("PGPASSWORD", parts.password or "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))


def test_fetch_with_postgis_parcels(
    postgis_dsn: str,  # noqa: F811
    expected: EOPatch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_parcels(expected[contract.REFERENCE].to_crs(4326), postgis_dsn, "cli_parcels", if_exists="replace")
    uri = _without_password(postgis_dsn, monkeypatch)
    out = tmp_path / "box"
    argv = ["fetch", str(out), *bbox_argument(BBOX), "--seed", str(SEED), "--frames-min", str(FRAMES)]
    status = cli.main([*argv, "--frames-max", str(FRAMES), "--parcels", f"{uri}?table=public.cli_parcels"])
    assert status == 0, capsys.readouterr().err
    patch = EOPatch.load(str(out))
    assert sorted(patch[contract.REFERENCE]["id"]) == sorted(expected[contract.REFERENCE]["id"])
    assert patch[contract.REFERENCE].crs.to_epsg() == 32633
    # a round trip through degrees moves vertices by nanometres: at most a handful of pixels change
    changed = np.count_nonzero(patch[contract.CULTIVATED] != expected[contract.CULTIVATED])
    assert changed <= 5


def test_fetch_postgis_unknown_table_writes_nothing(
    postgis_dsn: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = _without_password(postgis_dsn, monkeypatch)
    out = tmp_path / "box"
    status = cli.main(["fetch", str(out), *bbox_argument(BBOX), "--parcels", f"{uri}?table=nope"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "nope" in err and urlsplit(postgis_dsn).password not in err
    assert not out.exists()


def test_region_uploads_its_parcels_to_postgis(
    postgis_dsn: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import geopandas as gpd

    uri = _without_password(postgis_dsn, monkeypatch)
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box_bbox(0, 80).geometry], crs=32633).to_file(aoi, driver="GeoJSON")
    config = tmp_path / "region.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "aoi": str(aoi),
                "grid": {"size_m": 400},
                "source": {"kind": "simulator", "seed": 1, "frames_min": 4, "frames_max": 4},
                "export": {
                    "formats": ["gpkg"],
                    "mosaics": False,
                    "postgis": {"uri": f"{uri}?table=region_parcels"},
                },
            }
        )
    )
    out = tmp_path / "out"
    assert cli.main(["run", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    parcels = gpd.read_file(out / "parcels.gpkg")
    assert len(parcels) > 0
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*), min(ST_SRID(geometry)) FROM region_parcels")
        count, srid = cursor.fetchone()
        cursor.execute("SELECT sum(ST_Area(geometry)) FROM region_parcels")
        (area,) = cursor.fetchone()
    assert (count, srid) == (len(parcels), 32633)
    assert area == pytest.approx(parcels.area.sum(), rel=1e-9)
    # a resumed run replaces the table: still one row per parcel
    assert cli.main(["run", str(config), "--out", str(out), "--resume"]) == 0
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM region_parcels")
        assert cursor.fetchone()[0] == len(parcels)


# --- STAC ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stac_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s2agri.tasks.sources.stac_catalog import write_stac_catalog

    root = tmp_path_factory.mktemp("stac") / "catalog"
    return write_stac_catalog(root, [STAC_BOX], seed=SEED, frames_min=FRAMES, frames_max=FRAMES)


STAC_BOX = BBox((450000.0, 5079960.0, 450480.0, 5080440.0), crs="EPSG:32633")  # on the 60 m grid


def test_fetch_stac(stac_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = simulate_eopatch(STAC_BOX, SEED, FRAMES, FRAMES)
    out = tmp_path / "box"
    argv = ["fetch", str(out), "--source", "stac", "--catalog", str(stac_catalog), *bbox_argument(STAC_BOX)]
    assert cli.main([*argv, "--maxcc", "1"]) == 0, capsys.readouterr().err
    assert validate_eopatch(out) == []
    patch = EOPatch.load(str(out))
    assert patch.timestamps == own.timestamps
    for feature in (contract.BANDS, contract.SCL, contract.IS_DATA):
        np.testing.assert_array_equal(patch[feature], own[feature])
    assert contract.REFERENCE not in patch  # no --parcels: a box to predict, not to train on


def test_fetch_stac_empty_search(
    stac_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "box"
    argv = ["fetch", str(out), "--source", "stac", "--catalog", str(stac_catalog), *bbox_argument(STAC_BOX)]
    assert cli.main([*argv, "--time", "2020-01-01/2020-02-01"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "widen the time interval" in err
    assert not out.exists()


def test_region_from_a_stac_catalog_with_file_parcels(
    stac_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd

    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[STAC_BOX.geometry.buffer(-1)], crs=32633).to_file(aoi, driver="GeoJSON")
    parcels = tmp_path / "parcels.fgb"
    simulate_eopatch(STAC_BOX, SEED, FRAMES, FRAMES)[contract.REFERENCE].to_crs(3035).to_file(parcels)
    config = tmp_path / "region.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "aoi": str(aoi),
                "grid": {"size_m": 240},
                "source": {"kind": "stac", "catalog": str(stac_catalog), "maxcc": 1.0},
                "parcels": {"uri": str(parcels)},
                "export": {"mosaics": False},
            }
        )
    )
    out = tmp_path / "out"
    assert cli.main(["run", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    boxes = sorted(path.name for path in (out / "data").iterdir())
    assert len(boxes) == 6  # the 480 m AOI on the 240 m grid: 2 columns, 3 rows (y is not a multiple of 240)
    for name in boxes:
        patch = EOPatch.load(str(out / "data" / name))
        assert patch.meta_info["source"] == "stac"
        assert patch[contract.CULTIVATED].shape == (96, 96, 1) and patch[contract.CULTIVATED].any()
        assert patch[contract.IS_DATA].any()  # every box overlaps the catalog's footprint
    assert (out / "parcels.gpkg").is_file()
