"""GeoDBParcelsTask / read_parcels_geodb end to end: the real GeoDBClient against the fake geoDB.

The fake (tests/fake_geodb.py) replays PostgREST answers recorded from simulator parcels
(tests/data/geodb/record.py): the collections hold the parcels of box_bbox(0, 60) grown by 300 m,
in EPSG:32633 (EWKB rows) and EPSG:4326 (GeoJSON rows). Expected values come from the simulator.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
from fake_geodb import (
    BOX,
    CLIENT_ID,
    CLIENT_SECRET,
    COLLECTIONS,
    EMPTY_BOX,
    MARGIN_M,
    SEED,
    USER,
    FakeGeoDB,
    Recordings,
    running,
)

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.sources.geodb import GeoDBParcelsTask, geodb_client, read_parcels_geodb
from s2agri.tasks.sources.simulator import box_bbox, generate_landscape

BBOX = box_bbox(*BOX)
AI4EO = ("ai4eo_reference", "ai4eo")  # collection, database
WHERE = "GeoDB collection 'ai4eo_reference' (database 'ai4eo')"
CREDENTIALS = "GEODB_AUTH_CLIENT_ID, GEODB_AUTH_CLIENT_SECRET and GEODB_AUTH_AUD"


@pytest.fixture(autouse=True)
def _no_geodb_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GEODB_* settings or proxies from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("GEODB_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server() -> Iterator[FakeGeoDB]:
    yield from running()


@pytest.fixture(scope="module")
def expected() -> gpd.GeoDataFrame:
    """The simulator parcels that intersect the box, by id."""
    parcels = generate_landscape(SEED, tuple(BBOX), margin=MARGIN_M)
    return parcels[parcels.intersects(BBOX.geometry)].set_index("id")


def paths(server: FakeGeoDB) -> list[str]:
    return [f"{request.method} {request.path}" for request in server.requests]


def assert_reference(parcels: gpd.GeoDataFrame, expected: gpd.GeoDataFrame) -> None:
    assert list(parcels.columns) == ["id", "label", "geometry"]
    assert parcels["id"].dtype == np.int64 and parcels["label"].dtype == np.int64
    assert parcels.crs == BBOX.crs.pyproj_crs()
    assert shapely.is_valid(parcels.geometry.to_numpy()).all()
    assert sorted(parcels["id"]) == sorted(expected.index)
    by_id = parcels.set_index("id").loc[expected.index]
    assert (by_id["label"] == expected["label"]).all()
    np.testing.assert_allclose(by_id.area, expected.area, rtol=1e-3)


# --- the normal path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("database, collection", list(COLLECTIONS), ids=[c for _, c in COLLECTIONS])
def test_task_reads_the_parcels_of_the_box(
    server: FakeGeoDB, expected: gpd.GeoDataFrame, database: str, collection: str
) -> None:
    own = database == USER  # the user's own database: found with whoami
    task = GeoDBParcelsTask(collection, database=None if own else database, **server.settings())
    patch = task.execute(bbox=BBOX)

    assert patch.bbox == BBOX
    assert_reference(patch[contract.REFERENCE], expected)
    assert server.unmatched == []
    requested = paths(server)
    assert sorted(requested[:2]) == ["GET /", "POST /oauth/token"]  # the token, the client's Winchester probe
    assert ("GET /rpc/geodb_whoami" in requested[:4]) is own  # the database, before the SRID
    assert "POST /rpc/geodb_get_by_bbox" in requested

    # The bbox sent is in the collection SRID and covers the box.
    srid = COLLECTIONS[(database, collection)][0]
    (query,) = [r.body for r in server.requests if r.path == "/rpc/geodb_get_by_bbox"]
    assert query["collection"] == f"{database}_{collection}"
    assert (query["bbox_crs"], query["comparison_mode"]) == (srid, "intersects")
    to_srid = pyproj.Transformer.from_crs(32633, srid, always_xy=True)
    corners_x, corners_y = to_srid.transform(*np.array(BBOX.geometry.exterior.coords).T)
    assert query["minx"] <= corners_x.min() and corners_x.max() <= query["maxx"]
    assert query["miny"] <= corners_y.min() and corners_y.max() <= query["maxy"]


def test_exact_intersects_drops_what_the_wider_bbox_query_returned(
    server: FakeGeoDB, expected: gpd.GeoDataFrame
) -> None:
    """In EPSG:4326 the query box is wider than the box: the server returns more, s2agri keeps the exact set."""
    (answer,) = [
        e.response.body["src"]
        for e in Recordings().exchanges
        if e.request.path == "/rpc/geodb_get_by_bbox"
        and e.request.body["collection"] == f"{USER}_parcels_wgs84"
    ]
    parcels = read_parcels_geodb("parcels_wgs84", BBOX, client=geodb_client(**server.settings()))
    assert len(answer) > len(parcels) == len(expected)
    assert {row["id"] for row in answer} > set(parcels["id"])


def test_clip_cuts_the_parcels_to_the_box(server: FakeGeoDB, expected: gpd.GeoDataFrame) -> None:
    patch = GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], clip=True, **server.settings()).execute(bbox=BBOX)
    parcels = patch[contract.REFERENCE]
    cut = expected.geometry.intersection(BBOX.geometry)
    cut = cut[cut.area > 0]

    assert parcels.crs == BBOX.crs.pyproj_crs()
    assert shapely.is_valid(parcels.geometry.to_numpy()).all()
    assert parcels.within(BBOX.geometry.buffer(1e-6)).all()
    assert sorted(parcels["id"]) == sorted(cut.index)
    np.testing.assert_allclose(parcels.set_index("id").loc[cut.index].area, cut.area, rtol=1e-3)
    assert parcels.area.sum() <= BBOX.geometry.area * (1 + 1e-9)


def test_an_empty_box_gives_an_empty_reference(server: FakeGeoDB, caplog: pytest.LogCaptureFixture) -> None:
    empty_box = box_bbox(*EMPTY_BOX)
    with caplog.at_level(logging.WARNING, logger="s2agri.tasks.sources.geodb"):
        patch = GeoDBParcelsTask(AI4EO[0], database=AI4EO[1], **server.settings()).execute(bbox=empty_box)
    parcels = patch[contract.REFERENCE]
    assert parcels.empty and list(parcels.columns) == ["id", "label", "geometry"]
    assert parcels.crs == empty_box.crs.pyproj_crs()
    assert f"{WHERE}: no parcel in the box" in caplog.text
    assert server.unmatched == []


def test_settings_default_to_the_environment(
    server: FakeGeoDB, expected: gpd.GeoDataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("GEODB_API_SERVER_URL", "http://127.0.0.1"),
        ("GEODB_API_SERVER_PORT", str(server.port)),
        ("GEODB_AUTH_CLIENT_ID", CLIENT_ID),
        ("GEODB_AUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("GEODB_AUTH_DOMAIN", server.url),
    ):
        monkeypatch.setenv(name, value)
    patch = GeoDBParcelsTask(AI4EO[0], database=AI4EO[1]).execute(bbox=BBOX)
    assert_reference(patch[contract.REFERENCE], expected)


def test_label_column_missing_names_the_columns(server: FakeGeoDB) -> None:
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_geodb(
            *AI4EO[:1], BBOX, database=AI4EO[1], label_column="crop", client=geodb_client(**server.settings())
        )
    assert str(error.value) == (
        f"{WHERE} has no 'crop' column (columns: id, created_at, modified_at, label): "
        "pass label_column= naming the column with the label codes"
    )


# --- bad input: nothing is sent -------------------------------------------------------------------------

BAD_NAMES = ["ai4eo_reference; DROP TABLE x", "ai4eo'--", 'a"b', "1abc", "", "a b", "a" * 64, "réf"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("what", ["collection", "database"])
def test_bad_names_are_rejected_before_any_request(server: FakeGeoDB, name: str, what: str) -> None:
    message = (
        f"GeoDB {what} name {name!r} is not allowed: use letters, digits and '_' only "
        "(not starting with a digit, at most 63 characters)"
    )
    collection, database = (name, "ai4eo") if what == "collection" else ("ai4eo_reference", name)
    with pytest.raises(S2AgriInputError) as error:
        GeoDBParcelsTask(collection, database=database, **server.settings())
    assert str(error.value) == message
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_geodb(collection, BBOX, database=database, client=geodb_client(**server.settings()))
    assert str(error.value) == message
    assert server.requests == []


def test_client_and_settings_together_are_rejected(server: FakeGeoDB) -> None:
    with pytest.raises(S2AgriInputError) as error:
        GeoDBParcelsTask("ai4eo_reference", client=geodb_client(**server.settings()), server_url=server.url)
    assert str(error.value) == (
        "GeoDBParcelsTask got client= and server_url: give the client or the settings, not both"
    )


def test_secrets_stay_out_of_the_task_report() -> None:
    task = GeoDBParcelsTask(
        "ai4eo_reference", client_id="me", client_secret="s3cret-value", access_token="t0ken"
    )
    init_args = task.private_task_config.init_args  # what eo-learn's EOExecutor reports show
    assert init_args == {"collection": "'ai4eo_reference'"}
    assert "s3cret-value" not in repr(task) and "t0ken" not in repr(task)


# --- the source fails -----------------------------------------------------------------------------------


def test_missing_credentials(server: FakeGeoDB) -> None:
    settings = server.settings(client_id=None, client_secret=None)
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], **settings).execute(bbox=BBOX)
    assert str(error.value) == (
        f"{WHERE}: no credentials: set GEODB_AUTH_CLIENT_ID and GEODB_AUTH_CLIENT_SECRET "
        "(or GEODB_AUTH_ACCESS_TOKEN), or pass client_id= and client_secret="
    )
    assert server.requests == []


def test_refused_credentials(server: FakeGeoDB) -> None:
    secret = "wrong-secret-4711"
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], **server.settings(client_secret=secret)).execute(
            bbox=BBOX
        )
    assert str(error.value) == (
        f"{WHERE}: the authentication server {server.url} refused the credentials (HTTP 401): check {CREDENTIALS}"
    )
    assert secret not in str(error.value)
    assert paths(server) == ["POST /oauth/token"]


@pytest.mark.parametrize(
    "fault, access_token, detail",
    [("expired_token", None, "JWT expired"), (None, "not-the-token", "JWSError JWSInvalidSignature")],
)
def test_refused_access_token(
    server: FakeGeoDB, fault: str | None, access_token: str | None, detail: str
) -> None:
    server.fault = fault
    settings = server.settings(access_token=access_token)
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], **settings).execute(bbox=BBOX)
    assert str(error.value) == (
        f"{WHERE}: the server refused the access token ({detail}): check {CREDENTIALS}, "
        "or renew GEODB_AUTH_ACCESS_TOKEN"
    )
    assert "not-the-token" not in str(error.value)
    assert "POST /rpc/geodb_get_by_bbox" not in paths(server)


def test_unknown_collection(server: FakeGeoDB) -> None:
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask("no_such_collection", database="ai4eo", **server.settings()).execute(bbox=BBOX)
    assert str(error.value) == (
        "GeoDB collection 'no_such_collection' (database 'ai4eo'): no such collection, or not shared with you: "
        "check the collection and database names (GeoDBClient.get_my_collections() lists yours)"
    )
    assert paths(server)[-2:] == ["POST /rpc/geodb_get_collection_srid", "GET /rpc/geodb_whoami"]
    assert server.unmatched == []


def test_time_out_when_the_server_does_not_answer(server: FakeGeoDB) -> None:
    server.fault, server.fault_path = "hang", "/rpc/geodb_get_by_bbox"
    start = time.monotonic()
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], timeout=1.0, **server.settings()).execute(bbox=BBOX)
    assert str(error.value) == f"{WHERE}: no answer within 1 s: try again later, or pass a larger timeout="
    assert time.monotonic() - start < 5
    assert paths(server)[-1] == "POST /rpc/geodb_get_by_bbox"


def test_time_out_on_the_server(server: FakeGeoDB) -> None:
    server.fault, server.fault_path = "statement_timeout", "/rpc/geodb_get_by_bbox"
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(*AI4EO[:1], database=AI4EO[1], **server.settings()).execute(bbox=BBOX)
    assert str(error.value) == (
        f"{WHERE}: the server stopped the query (canceling statement due to statement timeout): "
        "use a smaller box or try again later"
    )


def test_unreachable_server() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    settings = {"server_url": "http://127.0.0.1", "server_port": port, "auth_domain": url}
    with pytest.raises(S2AgriSourceError) as error:
        GeoDBParcelsTask(
            *AI4EO[:1], database=AI4EO[1], client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **settings
        ).execute(bbox=BBOX)
    assert str(error.value) == (
        f"{WHERE}: cannot connect to {url}: check GEODB_API_SERVER_URL, GEODB_API_SERVER_PORT "
        "and GEODB_AUTH_DOMAIN, and the network"
    )
