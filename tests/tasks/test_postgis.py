"""PostGIS parcels against a real PostgreSQL + PostGIS server (``postgres_server.postgis_dsn``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from eolearn.core import EOPatch
from postgres_server import PASSWORD, free_port, postgis_dsn  # noqa: F401 (the fixture)
from sentinelhub import CRS, BBox

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.sources.simulator import box_bbox, simulate_eopatch
from s2agri.tasks.vectorise import PARCELS_PRED

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is missing: pip install 's2agri[postgis]'")
postgis = pytest.importorskip("s2agri.tasks.sources.postgis")
postgis_db = pytest.importorskip("s2agri.tasks.postgis_db")
postgis_export = pytest.importorskip("s2agri.tasks.postgis_export")


#: A 300 m box inside the simulated 600 m box: some parcels in it, some across its edges, some out.
BOX = BBox((450100.0, 5080100.0, 450400.0, 5080400.0), crs=CRS(32633))
TABLE = "sim_parcels"  # the simulated parcels, stored in EPSG:4326


def query(dsn: str, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one statement in its own autocommit connection."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def count(dsn: str, table: str) -> int:
    return query(dsn, f"SELECT count(*) FROM {table}")[0][0]


def exists(dsn: str, table: str) -> bool:
    return query(dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]


@pytest.fixture(scope="module")
def parcels() -> gpd.GeoDataFrame:
    """127 simulated reference parcels (EPSG:32633), some crossing the simulated box edges."""
    return simulate_eopatch(box_bbox(0, 60), seed=0, frames_min=3, frames_max=3)[contract.REFERENCE]


@pytest.fixture(scope="module")
def dsn(postgis_dsn: str, parcels: gpd.GeoDataFrame) -> Iterator[str]:  # noqa: F811
    """The server, with the simulated parcels in ``sim_parcels`` (EPSG:4326: reads reproject)."""
    assert postgis_export.upload_parcels(parcels, postgis_dsn, TABLE, srid=4326) == len(parcels)
    yield postgis_dsn


def box_parcels(parcels: gpd.GeoDataFrame, bbox: BBox) -> gpd.GeoDataFrame:
    return parcels[parcels.intersects(shapely.box(*bbox))].sort_values("id")


def test_read_returns_the_parcels_intersecting_the_box(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    assert query(dsn, f"SELECT DISTINCT ST_SRID(geometry), GeometryType(geometry) FROM {TABLE}") == [
        (4326, "MULTIPOLYGON")
    ]
    read = postgis.read_parcels_postgis(dsn, TABLE, BOX)
    expected = box_parcels(parcels, BOX)
    assert 10 < len(expected) < len(parcels) // 2  # a real selection, not the whole table
    assert list(read.columns) == ["id", "label", "geometry"]
    assert read.crs == BOX.crs.pyproj_crs()
    assert read["id"].dtype == np.int64 and read["label"].dtype == np.int64
    np.testing.assert_array_equal(read["id"], expected["id"])
    np.testing.assert_array_equal(read["label"], expected["label"])
    # 32633 -> 4326 (pyproj) -> 32633 (PostGIS): the same vertices within 1e-6 m
    original = shapely.multipolygons(expected.geometry.to_numpy()[:, np.newaxis])
    assert shapely.equals_exact(read.geometry.to_numpy(), original, tolerance=1e-6).all()
    assert not shapely.equals_exact(
        read.geometry.to_numpy(), original, tolerance=1e-12
    ).all()  # it did reproject


def test_read_a_box_without_parcels_gives_an_empty_frame(dsn: str) -> None:
    far = BBox((500000.0, 5000000.0, 500300.0, 5000300.0), crs=CRS(32633))
    read = postgis.read_parcels_postgis(dsn, TABLE, far)
    assert len(read) == 0
    assert list(read.columns) == ["id", "label", "geometry"] and read.crs == far.crs.pyproj_crs()


def test_task_writes_the_reference_feature(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    task = postgis.PostgisParcelsTask(dsn, TABLE)
    assert PASSWORD not in repr(task.private_task_config.init_args)  # eo-learn reports show these
    fresh = task.execute(bbox=BOX)
    assert fresh.bbox == BOX
    np.testing.assert_array_equal(fresh[contract.REFERENCE]["id"], box_parcels(parcels, BOX)["id"])
    existing = task.execute(EOPatch(bbox=BOX))
    assert existing[contract.REFERENCE].equals(fresh[contract.REFERENCE])
    with pytest.raises(S2AgriInputError, match="pass bbox"):
        task.execute()


def test_query_uses_the_gist_index(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    indexes = query(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (TABLE,))
    gist = [name for name, definition in indexes if "USING gist (geometry)" in definition]
    assert gist == [f"{TABLE}_geometry_gist"]
    with caplog.at_level(logging.DEBUG, logger=postgis.__name__):
        postgis.read_parcels_postgis(dsn, TABLE, BOX)
    (statement,) = [r.args[0] for r in caplog.records if r.msg.startswith("PostGIS query")]
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            cur.execute("EXPLAIN " + statement)
            plan = "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()
    assert f"Index Scan using {gist[0]}" in plan or f"Bitmap Index Scan on {gist[0]}" in plan, plan
    assert "Index Cond: (geometry && " in plan, plan  # the box test runs in the index


@pytest.mark.parametrize(
    "arguments",
    [
        {"table": "parcels; DROP TABLE victim"},
        {"table": 'sim_parcels" ; DROP TABLE victim; --'},
        {"table": TABLE, "schema": "public; DROP TABLE victim"},
        {"table": TABLE, "label_column": "label FROM victim; DROP TABLE victim; --"},
    ],
)
def test_sql_in_a_name_is_rejected_before_anything_runs(dsn: str, arguments: dict[str, str]) -> None:
    query(dsn, "CREATE TABLE IF NOT EXISTS victim (x int)")
    with pytest.raises(S2AgriInputError, match="is not a plain SQL name"):
        postgis.read_parcels_postgis(dsn, bbox=BOX, **arguments)
    with pytest.raises(S2AgriInputError, match="is not a plain SQL name"):
        postgis_export.upload_parcels(
            gpd.GeoDataFrame(geometry=[], crs=4326), dsn, arguments["table"] + "; --"
        )
    assert exists(dsn, "victim")


def test_table_without_geometry_column(dsn: str) -> None:
    query(dsn, "CREATE TABLE IF NOT EXISTS crops (id int, label int)")
    with pytest.raises(S2AgriInputError) as error:
        postgis.read_parcels_postgis(dsn, "crops", BOX)
    assert str(error.value) == (
        "PostGIS table public.crops has no geometry column (columns: id, label): "
        "give a table with a PostGIS geometry column"
    )


def test_several_geometry_columns_need_a_choice(dsn: str) -> None:
    query(dsn, "CREATE TABLE IF NOT EXISTS two_shapes (id int, label int, outline geometry, centre geometry)")
    with pytest.raises(
        S2AgriInputError, match=r"several geometry columns \(outline, centre\): pass geometry_column"
    ):
        postgis.read_parcels_postgis(dsn, "two_shapes", BOX)
    with pytest.raises(S2AgriInputError, match=r"no geometry column 'shape' .*outline, centre"):
        postgis.read_parcels_postgis(dsn, "two_shapes", BOX, geometry_column="shape")
    assert len(postgis.read_parcels_postgis(dsn, "two_shapes", BOX, geometry_column="centre")) == 0


def test_unknown_table_lists_the_tables_with_geometry(dsn: str) -> None:
    with pytest.raises(
        S2AgriInputError, match=r"no table public\.nothing_here; tables with geometry: .*public\.sim_parcels"
    ):
        postgis.read_parcels_postgis(dsn, "nothing_here", BOX)


def test_missing_label_column_names_the_columns(dsn: str) -> None:
    with pytest.raises(S2AgriInputError) as error:
        postgis.read_parcels_postgis(dsn, TABLE, BOX, label_column="crop")
    assert "has no column 'crop' (columns: id, label, geometry): pass label_column=..." in str(error.value)


def test_invalid_geometries_are_repaired(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    x, y = BOX.lower_left
    bowtie = shapely.Polygon([(x, y), (x + 100, y + 100), (x + 100, y), (x, y + 100)])  # self-intersecting
    square = shapely.box(x + 150, y + 150, x + 200, y + 200)
    frame = gpd.GeoDataFrame({"id": [1, 2], "label": [2, 3]}, geometry=[bowtie, square], crs=32633)
    postgis_export.upload_parcels(frame, dsn, "bowties", if_exists="replace")
    with caplog.at_level(logging.WARNING, logger=postgis.__name__):
        read = postgis.read_parcels_postgis(dsn, "bowties", BOX)
    assert read.is_valid.all() and read["id"].tolist() == [1, 2]
    assert read.area.tolist() == pytest.approx([5000.0, 2500.0])  # two triangles of the bow-tie
    assert (
        "1 parcel(s) have invalid geometries (e.g. self-intersecting): repaired with shapely.make_valid"
        in caplog.text
    )


def test_upload_refuses_parcels_without_polygons(dsn: str) -> None:
    frame = gpd.GeoDataFrame(
        {"id": [1, 2]}, geometry=[shapely.box(0, 0, 1, 1), shapely.Point(0, 0)], crs=32633
    )
    with pytest.raises(
        S2AgriInputError, match=r"1 parcel\(s\) are not polygons \(Point\): keep polygons only"
    ):
        postgis_export.upload_parcels(frame, dsn, "points")
    frame.loc[1, "geometry"] = None
    with pytest.raises(S2AgriInputError, match=r"1 parcel\(s\) have no geometry \(None or empty\)"):
        postgis_export.upload_parcels(frame, dsn, "points")
    assert not exists(dsn, "points")


def test_redacted_dsn() -> None:
    assert postgis.redact_dsn("host=db.example port=5433 user=me password=s3cret dbname=fields") == (
        "postgresql://me:***@db.example:5433/fields"
    )
    assert (
        postgis.redact_dsn("postgresql://me:s3cret@db.example/fields")
        == "postgresql://me:***@db.example/fields"
    )
    assert postgis.redact_dsn("postgresql://me@db.example/fields") == "postgresql://me@db.example/fields"


def test_wrong_password_is_a_one_line_source_error(dsn: str) -> None:
    wrong = dsn.replace(PASSWORD, "wrong-secret-123")
    with pytest.raises(S2AgriSourceError) as error:
        postgis.read_parcels_postgis(wrong, TABLE, BOX)
    message = str(error.value)
    port = dsn.rsplit(":", 1)[1].split("/")[0]
    assert message == (
        f"PostGIS postgresql://s2agri:***@127.0.0.1:{port}/s2agri_test: authentication failed: "
        "check the user name and password (in the DSN, PGPASSWORD or ~/.pgpass)"
    )


def test_closed_port_fails_fast_without_the_password(dsn: str) -> None:
    closed = dsn.replace(dsn.rsplit(":", 1)[1].split("/")[0], str(free_port()))
    start = time.perf_counter()
    with pytest.raises(S2AgriSourceError, match="connection refused: check the host and the port") as error:
        postgis_export.upload_parcels(gpd.GeoDataFrame(geometry=[], crs=4326), closed, "anything")
    assert time.perf_counter() - start < 1.5
    assert PASSWORD not in str(error.value) and "s2agri:***@127.0.0.1" in str(error.value)
    assert "\n" not in str(error.value)


def test_silent_server_times_out(dsn: str) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        start = time.perf_counter()
        with pytest.raises(S2AgriSourceError, match="no answer within 2 s") as error:
            postgis.read_parcels_postgis(
                f"postgresql://s2agri:{PASSWORD}@127.0.0.1:{port}/db", TABLE, BOX, connect_timeout_s=2
            )
    assert 1.5 < time.perf_counter() - start < 8
    assert PASSWORD not in str(error.value)


def test_replace_swaps_at_commit(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    """A reader in another transaction sees the old rows while the new table is filled."""
    postgis_export.upload_parcels(parcels.iloc[:60], dsn, "swapped", srid=4326)
    reader = psycopg2.connect(dsn)  # holds ACCESS SHARE on the old table: the swap must wait
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            postgis_export.upload_parcels(parcels, dsn, "swapped", if_exists="replace")
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM swapped")
            assert cur.fetchone()[0] == 60
            writer = threading.Thread(target=replace)
            writer.start()
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 's2agri' AND wait_event_type = 'Lock'"
            deadline = time.monotonic() + 20
            while query(dsn, waiting)[0][0] == 0:  # new table filled, DROP of the old one waits
                assert time.monotonic() < deadline and writer.is_alive(), errors
                time.sleep(0.02)
            cur.execute("SELECT count(*) FROM swapped")
            assert cur.fetchone()[0] == 60
            cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'swapped_s2agri_%'")
            assert cur.fetchone()[0] == 0  # the half-built table is invisible
    finally:
        reader.rollback()
        reader.close()
    writer.join(20)
    assert not errors
    assert count(dsn, "swapped") == len(parcels)
    assert query(dsn, "SELECT DISTINCT ST_SRID(geometry) FROM swapped") == [(32633,)]
    assert query(dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'swapped'") == [
        ("swapped_geometry_gist",)
    ]
    assert query(dsn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'swapped_s2agri_%'") == [(0,)]


def test_failing_upload_leaves_the_old_table(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    postgis_export.upload_parcels(parcels.iloc[:60], dsn, "kept")
    ids = query(dsn, "SELECT id FROM kept ORDER BY id")
    bigger = pd.concat([parcels] * 10, ignore_index=True)  # 1270 rows: three INSERT pages of 500
    bigger["note"] = "fine"
    bigger.loc[len(bigger) - 1, "note"] = "bad\x00value"  # only the last page fails
    with pytest.raises(S2AgriInputError, match=r"writing public\.kept failed, nothing was written: .*NUL"):
        postgis_export.upload_parcels(bigger, dsn, "kept", if_exists="replace")
    assert query(dsn, "SELECT id FROM kept ORDER BY id") == ids
    with pytest.raises(S2AgriInputError, match="nothing was written"):
        postgis_export.upload_parcels(bigger, dsn, "never_made")
    assert not exists(dsn, "never_made")
    assert query(dsn, "SELECT count(*) FROM pg_class WHERE relname LIKE '%s2agri_%'") == [(0,)]
    with pytest.raises(
        S2AgriInputError, match=r"table public\.kept exists: pass if_exists='replace' or 'append'"
    ):
        postgis_export.upload_parcels(parcels, dsn, "kept")
    assert query(dsn, "SELECT id FROM kept ORDER BY id") == ids


def test_append_checks_srid_and_columns(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    postgis_export.upload_parcels(parcels.iloc[:50], dsn, "appended", srid=4326)
    with pytest.raises(S2AgriInputError, match="has SRID 4326, the parcels 32633: pass srid=4326"):
        postgis_export.upload_parcels(parcels.iloc[50:], dsn, "appended", if_exists="append")
    with pytest.raises(
        S2AgriInputError, match=r"has columns \(id, label; geometry geometry\), the parcels \(id; geometry"
    ):
        postgis_export.upload_parcels(
            parcels[["id", "geometry"]], dsn, "appended", if_exists="append", srid=4326
        )
    assert count(dsn, "appended") == 50
    assert (
        postgis_export.upload_parcels(parcels.iloc[50:], dsn, "appended", if_exists="append", srid=4326) == 77
    )
    read = postgis.read_parcels_postgis(dsn, "appended", BOX)
    np.testing.assert_array_equal(read["id"], box_parcels(parcels, BOX)["id"])


def predicted_eopatch(parcels: gpd.GeoDataFrame, box: str) -> EOPatch:
    """An EOPatch with predicted parcels as VectoriseTask writes them."""
    predicted = gpd.GeoDataFrame(
        {
            "box_id": box,
            "model": "lightgbm",
            "area_m2": parcels.area.to_numpy(),
            "perimeter_m": parcels.length.to_numpy(),
            "mean_proba": np.r_[np.nan, np.linspace(0.5, 1.0, len(parcels) - 1)],
        },
        geometry=parcels.geometry.to_numpy(),
        crs=parcels.crs,
    )
    eopatch = EOPatch(bbox=box_bbox(0, 60), meta_info={"box_id": box})
    eopatch[PARCELS_PRED] = predicted
    return eopatch


def test_upload_task_is_idempotent_per_box(dsn: str, parcels: gpd.GeoDataFrame) -> None:
    task = postgis_export.UploadParcelsTask(dsn, "predicted")
    assert PASSWORD not in repr(task.private_task_config.init_args)
    task.execute(predicted_eopatch(parcels, "box-a"))
    task.execute(predicted_eopatch(parcels, "box-a"))
    task.execute(predicted_eopatch(parcels.iloc[:10], "box-b"))
    per_box = "SELECT box_id, count(*), count(mean_proba) FROM predicted GROUP BY box_id ORDER BY box_id"
    assert query(dsn, per_box) == [("box-a", 127, 126), ("box-b", 10, 9)]
    task.execute(predicted_eopatch(parcels.iloc[:30], "box-a"))  # box-a again, fewer parcels
    assert query(dsn, per_box) == [("box-a", 30, 29), ("box-b", 10, 9)]
    empty = predicted_eopatch(parcels.iloc[:10], "box-b")
    empty[PARCELS_PRED] = empty[PARCELS_PRED].iloc[:0]
    task.execute(empty)  # box-b has no parcels now
    assert query(dsn, per_box) == [("box-a", 30, 29)]
    types = query(
        dsn,
        "SELECT column_name, data_type, is_identity FROM information_schema.columns"
        " WHERE table_name = 'predicted' ORDER BY ordinal_position",
    )
    assert types == [
        ("id", "bigint", "YES"),
        ("box_id", "text", "NO"),
        ("model", "text", "NO"),
        ("area_m2", "double precision", "NO"),
        ("perimeter_m", "double precision", "NO"),
        ("mean_proba", "double precision", "NO"),
        ("geometry", "USER-DEFINED", "NO"),
    ]
    areas = query(dsn, "SELECT sum(abs(ST_Area(geometry) - area_m2)) FROM predicted")[0][0]
    assert areas < 1e-6


def test_a_statement_that_never_returns_is_cancelled(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connected is not done: a query the server never finishes is cancelled by its statement time-out."""
    query(dsn, f"CREATE OR REPLACE VIEW slow_parcels AS SELECT p.* FROM {TABLE} p, pg_sleep(30)")
    monkeypatch.setattr(postgis_db, "STATEMENT_TIMEOUT_S", 1.0)
    with pytest.raises(S2AgriSourceError, match="no result within the statement time-out") as error:
        postgis.read_parcels_postgis(dsn, "slow_parcels", BOX)
    assert "\n" not in str(error.value)
