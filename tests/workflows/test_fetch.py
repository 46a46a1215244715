"""``s2agri fetch``, the bbox checks and the source / parcel settings shared with ``s2agri run``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from eolearn.core import EOPatch
from pydantic import ValidationError

from s2agri.aoi.bbox import box_from_arguments
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.sources.simulator import simulate_eopatch
from s2agri.workflows import cli
from s2agri.workflows.region import RegionConfig
from s2agri.workflows.sources import (
    ParcelsConfig,
    SentinelHubSource,
    SimulatorSource,
    StacSource,
    parcels_kind,
    redact,
    split_geodb_uri,
    split_postgres_uri,
)
from s2agri.workflows.validate import validate_eopatch

BOX = "450000,5080000,450400,5080400"


# --- bbox ------------------------------------------------------------------------------------------


def test_utm_bbox_is_kept_and_grown_to_whole_pixels() -> None:
    bbox = box_from_arguments("450003,5080000,450395,5080401", "EPSG:32633")
    assert tuple(bbox) == (450000.0, 5080000.0, 450400.0, 5080410.0)
    assert bbox.crs.epsg == 32633


def test_degrees_are_reprojected_to_their_utm_zone() -> None:
    bbox = box_from_arguments("14.5,45.8,14.55,45.85", "4326")
    assert bbox.crs.epsg == 32633
    assert all(value % 10 == 0 for value in bbox)
    # the UTM box covers the degree box
    lon_lat = bbox.transform(4326)
    assert (
        lon_lat.min_x <= 14.5 and lon_lat.max_x >= 14.55 and lon_lat.min_y <= 45.8 and lon_lat.max_y >= 45.85
    )


@pytest.mark.parametrize(
    ("bbox", "crs", "message"),
    [
        (
            "14.5,45.8,14.55,45.85",
            "32633",
            "--bbox 14.5,45.8,14.55,45.85 looks like degrees, not metres of UTM zone 33 (--crs 32633): "
            "give --crs 4326 for longitude/latitude",
        ),
        (
            BOX,
            "4326",
            "--bbox 450000,5.08e+06,450400,5.0804e+06 is not longitude/latitude degrees but --crs is "
            "EPSG:4326: give the CRS of those numbers, e.g. --crs 32633 for UTM metres",
        ),
        (
            "11.9,45.8,12.1,45.85",
            "4326",
            "--bbox 11.9,45.8,12.1,45.85 crosses UTM zones 32 and 33: a box lies in one zone; fetch one box "
            "per zone or split the area with 's2agri aoi split'",
        ),
        (
            "-200000,5080000,-199000,5081000",
            "32633",
            "--bbox -200000,5.08e+06,-199000,5.081e+06 lies at longitude 6.0..6.0°, outside UTM zone 33 "
            "(12..18°) of --crs 32633: give the CRS the numbers are in",
        ),
        ("450400,5080000,450000,5080400", "32633", "has MINX >= MAXX or MINY >= MAXY"),
        ("1,2,3", "32633", "--bbox '1,2,3' is not MINX,MINY,MAXX,MAXY"),
        (BOX, "99999", "--crs 99999 is not a known CRS"),
        ("450000,5080000,480000,5081000", "32633", "3000 x 100 px at 10 m, above 2500 px a side"),
    ],
)
def test_bad_bboxes_are_refused_with_the_fix(bbox: str, crs: str, message: str) -> None:
    with pytest.raises(S2AgriInputError) as info:
        box_from_arguments(bbox, crs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- settings --------------------------------------------------------------------------------------


def test_postgres_uris_are_split_and_redacted() -> None:
    dsn, schema, table = split_postgres_uri(
        "postgresql://me@db.example:5433/agri?table=lpis.parcels&sslmode=require"
    )
    assert (dsn, schema, table) == ("postgresql://me@db.example:5433/agri?sslmode=require", "lpis", "parcels")
    assert split_postgres_uri("postgres://h/db?table=p")[1:] == ("public", "p")
    assert redact("postgresql://me:s3cret@h/db") == "postgresql://me:***@h/db"
    with pytest.raises(S2AgriInputError, match=r"names no table: add \?table=NAME"):
        split_postgres_uri("postgresql://h/db")


def test_parcel_uris_pick_their_source() -> None:
    assert parcels_kind("geodb://ai4eo/ai4eo_reference") == "geodb"
    assert split_geodb_uri("geodb://ai4eo/ai4eo_reference") == ("ai4eo", "ai4eo_reference")
    assert split_geodb_uri("geodb:///parcels") == (None, "parcels")
    assert parcels_kind("postgresql://h/db?table=p") == "postgis"
    assert parcels_kind("data/parcels.gpkg") == "file"
    with pytest.raises(S2AgriInputError, match=r"unknown scheme 's3://'"):
        parcels_kind("s3://bucket/parcels.gpkg")
    with pytest.raises(ValidationError, match=r"put it in PGPASSWORD or ~/\.pgpass"):
        ParcelsConfig(uri="postgresql://me:s3cret@h/db?table=p")


def test_region_config_sources() -> None:
    # older configs without a kind are the simulator
    config = RegionConfig.model_validate({"source": {"seed": 3}})
    assert config.source == SimulatorSource(seed=3)
    config = RegionConfig.model_validate(
        {
            "source": {"kind": "stac", "catalog": "/data/catalog.json", "maxcc": 0.3},
            "parcels": {"uri": "p.gpkg"},
        }
    )
    assert isinstance(config.source, StacSource)
    assert config.source.time_interval == (dt.date(2019, 3, 1), dt.date(2019, 9, 1))
    assert config.parcels == ParcelsConfig(uri="p.gpkg")
    sh = RegionConfig.model_validate(
        {"source": {"kind": "sentinelhub", "time_interval": ["2020-04-01", "2020-05-01"]}}
    )
    assert isinstance(sh.source, SentinelHubSource) and sh.source.interval_strings() == (
        "2020-04-01",
        "2020-05-01",
    )
    with pytest.raises(ValidationError, match="client_secret"):
        RegionConfig.model_validate({"source": {"kind": "sentinelhub", "client_secret": "x"}})
    with pytest.raises(ValidationError, match="ends before it starts"):
        StacSource(kind="stac", time_interval=("2019-05-01", "2019-04-01"))
    with pytest.raises(ValidationError, match="holds a secret"):
        RegionConfig.model_validate({"export": {"postgis": {"uri": "postgresql://u:p@h/db?table=t"}}})


# --- s2agri fetch --simulator ----------------------------------------------------------------------


def _fetch(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "box"
    argv = [
        "fetch",
        str(out),
        "--bbox",
        BOX,
        "--crs",
        "32633",
        "--frames-min",
        "5",
        "--frames-max",
        "5",
        *extra,
    ]
    return cli.main(argv), out


def test_fetch_simulator_box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _fetch(tmp_path)
    assert status == 0
    assert validate_eopatch(out) == []
    patch = EOPatch.load(str(out))
    expected = simulate_eopatch(box_from_arguments(BOX, "32633"), 0, 5, 5)
    assert patch.bbox.crs.epsg == 32633 and tuple(patch.bbox) == (450000.0, 5080000.0, 450400.0, 5080400.0)
    assert patch.timestamps == expected.timestamps
    np.testing.assert_array_equal(patch[contract.BANDS], expected[contract.BANDS])
    assert patch[contract.BANDS].dtype == np.uint16
    assert patch[contract.CULTIVATED].shape == (160, 160, 1)
    assert sorted(patch[contract.REFERENCE]["id"]) == sorted(expected[contract.REFERENCE]["id"])
    line = capsys.readouterr().out.strip()
    n = len(expected[contract.REFERENCE])
    assert line == (
        f"wrote {out}: 5 acquisitions of 40 x 40 px at 10 m in EPSG:32633 from simulator, "
        f"{n} parcels with reference masks"
    )
    assert not list(tmp_path.glob(".box*")), "no staging folder left behind"


def test_fetch_time_interval_keeps_frames_inside(tmp_path: Path) -> None:
    every = simulate_eopatch(box_from_arguments(BOX, "32633"), 0, 5, 5).timestamps
    start, end = every[1].date(), every[3].date()
    status, out = _fetch(tmp_path, "--time", f"{start}/{end}")
    assert status == 0
    assert EOPatch.load(str(out)).timestamps == every[1:4]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--time", "2019-03-01"), "--time '2019-03-01' is not START/END: give ISO dates"),
        (("--time", "2019-05-01/2019-04-01"), "--time 2019-05-01/2019-04-01 ends before it starts"),
        (("--time", "2018-01-01/2018-02-01"), "no acquisition of the box between 2018-01-01 and 2018-02-01"),
        (("--resolution", "20"), "--resolution 20: the simulator makes 10 m data only"),
        (("--parcels", "postgresql://u:pw@h/db?table=t"), "put it in PGPASSWORD or ~/.pgpass"),
    ],
)
def test_fetch_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    status, out = _fetch(tmp_path, *extra)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "pw@" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fetch_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "keep.txt").write_text("mine")
    status, _ = _fetch(tmp_path)
    assert status == 2
    assert "exists and is not empty: choose another path or add --overwrite" in capsys.readouterr().err
    assert (tmp_path / "box" / "keep.txt").read_text() == "mine"


def test_source_errors_are_input_errors() -> None:
    # the CLI prints both as one line with exit status 2
    assert issubclass(S2AgriSourceError, S2AgriInputError)
