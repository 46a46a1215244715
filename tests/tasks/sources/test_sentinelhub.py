"""The Sentinel Hub L2A source end to end: real sentinelhub-py and eo-learn against a local fake
of the token, Catalog and Process APIs (``fake_sentinelhub``) that answers from the simulator.

The fetched box must equal the simulator's box exactly; every failure must become one
``S2AgriSourceError`` line naming the call, the status and the fix, without the client secret.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from eolearn.core import EOPatch
from fake_sentinelhub import FakeSentinelHub
from sentinelhub import CRS, BBox, DataCollection, SentinelHubDownloadClient, SHConfig
from sentinelhub.exceptions import SHRateLimitWarning

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.sources.sentinelhub import L2AInputTask, l2a_collection, sentinelhub_config
from s2agri.tasks.sources.simulator import box_bbox, simulate_eopatch
from s2agri.workflows.validate import validate_eopatch

SEED, SIZE, FRAMES = 7, 48, 4
BBOX = box_bbox(3, SIZE)  #: 480 m x 480 m in EPSG:32633; 4 acquisitions with 1 % .. 40 % cloud cover
ATTEMPTS = 3
CLIENT_ID, SECRET = "s2agri-test-client", "s2agri-test-secret-2f9c"
SH_ENV = ("SH_CLIENT_ID", "SH_CLIENT_SECRET", "SH_BASE_URL", "SH_TOKEN_URL", "SH_PROFILE")


@pytest.fixture(scope="module")
def reference() -> EOPatch:
    return simulate_eopatch(BBOX, SEED, FRAMES, FRAMES)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """No user configuration, credentials or cached sessions leak in; http allowed for OAuth."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in SH_ENV:
        monkeypatch.delenv(name, raising=False)
    SentinelHubDownloadClient.clear_cache()
    yield
    SentinelHubDownloadClient.clear_cache()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSentinelHub]:
    with FakeSentinelHub(
        seed=SEED, frames_min=FRAMES, frames_max=FRAMES, client_id=CLIENT_ID, client_secret=SECRET
    ) as server:
        monkeypatch.setenv("SH_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)
        yield server


def config_for(fake: FakeSentinelHub, **kwargs: Any) -> SHConfig:
    options = {"timeout_s": 5.0, "max_attempts": ATTEMPTS, "sleep_s": 0.01} | kwargs
    return sentinelhub_config(base_url=fake.base_url, token_url=fake.token_url, **options)


def fetch(fake: FakeSentinelHub, *, config: SHConfig | None = None, **kwargs: Any) -> EOPatch:
    interval = kwargs.pop("time_interval", None)
    task = L2AInputTask(config=config or config_for(fake), **kwargs)
    return task.execute(bbox=BBOX, time_interval=interval)


def assert_matches(eopatch: EOPatch, reference: EOPatch, frames: list[int]) -> None:
    """The contract features of ``eopatch`` are the reference's at ``frames``, dtypes included."""
    assert eopatch.bbox == BBOX
    assert eopatch.timestamps == [reference.timestamps[t] for t in frames]
    for spec in contract.INPUT_FEATURES:
        array = eopatch[spec.feature]
        assert array.dtype == spec.dtype, spec.path
        if spec.kind == "scalar":
            assert array.shape == (len(frames), 1)
        else:
            assert array.shape == (len(frames), SIZE, SIZE, spec.channels), spec.path
            np.testing.assert_array_equal(array, reference[spec.feature][frames], err_msg=spec.path)
    np.testing.assert_array_equal(eopatch[contract.NORM_FACTORS], np.float32(1e-4))
    assert eopatch.meta_info["source"] == "sentinelhub"


def test_fetch_equals_the_simulator_and_passes_the_validator(
    fake: FakeSentinelHub, reference: EOPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, requests-oauthlib's included
    eopatch = fetch(fake)

    assert_matches(eopatch, reference, list(range(FRAMES)))
    assert eopatch[contract.BANDS].max() <= contract.MAX_DN
    assert eopatch[contract.IS_DATA].any() and eopatch[contract.CLM].max() <= 1
    # one token, the catalog in pages of 2 (context.next), one Process API call per date
    assert fake.calls == {"token": 1, "catalog": FRAMES // 2, "process": FRAMES}
    search = fake.bodies["catalog"][0]
    assert search["collections"] == ["sentinel-2-l2a"]
    assert search["datetime"] == "2019-03-01T00:00:00Z/2019-09-01T23:59:59Z"
    assert search["filter"] == "eo:cloud_cover < 50"  # the challenge's maxcc 0.5
    assert [body.get("next") for body in fake.bodies["catalog"]] == [None, 2]
    process = sorted(
        fake.bodies["process"], key=lambda b: b["input"]["data"][0]["dataFilter"]["timeRange"]["from"]
    )
    for body, when in zip(process, reference.timestamps, strict=True):
        assert body["input"]["bounds"] == {
            "properties": {"crs": "http://www.opengis.net/def/crs/EPSG/0/32633"},
            "bbox": list(BBOX),
        }
        data_filter = body["input"]["data"][0]["dataFilter"]
        assert data_filter["maxCloudCoverage"] == 50
        assert data_filter["timeRange"] == {  # time_difference 120 min either side
            "from": f"{when - dt.timedelta(hours=2):%Y-%m-%dT%H:%M:%S}Z",
            "to": f"{when + dt.timedelta(hours=2):%Y-%m-%dT%H:%M:%S}Z",
        }
        assert (body["output"]["width"], body["output"]["height"]) == (SIZE, SIZE)
        assert [r["identifier"] for r in body["output"]["responses"]] == [
            *contract.BAND_NAMES, "dataMask", "SCL", "CLM", "CLP",
        ]  # fmt: skip
        assert 'units: ["DN", "DN"' in body["evalscript"] and '"UINT16"' in body["evalscript"]
    # neither the client secret nor the issued token reaches a log, at DEBUG level either
    assert SECRET not in caplog.text
    assert fake._tokens and not any(token in caplog.text for token in fake._tokens)
    assert "client_secret=***" in caplog.text  # requests-oauthlib logged the request body, masked

    eopatch.save(str(tmp_path / "eopatch"))
    assert validate_eopatch(tmp_path / "eopatch") == []


def test_maxcc_drops_cloudy_dates(fake: FakeSentinelHub, reference: EOPatch) -> None:
    covers = [fake.cloud_cover(when) for when in reference.timestamps]
    kept = [t for t, cover in enumerate(covers) if cover < 20]
    assert 0 < len(kept) < FRAMES  # the box has clear and cloudy dates

    eopatch = fetch(fake, maxcc=0.2)

    assert_matches(eopatch, reference, kept)
    assert fake.bodies["catalog"][0]["filter"] == "eo:cloud_cover < 20"
    assert fake.calls["process"] == len(kept)
    assert {b["input"]["data"][0]["dataFilter"]["maxCloudCoverage"] for b in fake.bodies["process"]} == {20}


def test_time_interval_of_execute_and_an_input_eopatch(fake: FakeSentinelHub, reference: EOPatch) -> None:
    spring = [t for t, when in enumerate(reference.timestamps) if when < dt.datetime(2019, 6, 1)]
    assert 0 < len(spring) < FRAMES
    task = L2AInputTask(config=config_for(fake), maxcc=1.0)
    eopatch = EOPatch(bbox=BBOX)

    result = task.execute(eopatch, time_interval=("2019-03-01", "2019-05-31"))

    assert result is eopatch
    assert_matches(eopatch, reference, spring)
    assert fake.bodies["catalog"][0]["datetime"] == "2019-03-01T00:00:00Z/2019-05-31T23:59:59Z"


@pytest.mark.parametrize(
    ("endpoint", "fault", "extra_calls"),
    [
        ("process", {"status": 429, "times": 2}, 2),  # rate limit: waits Retry-After, asks again
        ("catalog", {"status": 500, "times": 2}, 2),  # server error: back-off and retry
        ("token", {"status": 503, "times": 1}, 1),
        # a time-out is retried too; the delay is far above the time-out and the time-out far above a
        # normal answer under load, so the call counts do not depend on the machine's speed
        ("process", {"delay_s": 8.0, "times": 1}, 1),
    ],
    ids=["429-process", "500-catalog", "503-token", "timeout-process"],
)
def test_transient_faults_are_retried(
    fake: FakeSentinelHub, reference: EOPatch, endpoint: str, fault: dict[str, Any], extra_calls: int
) -> None:
    fake.inject(endpoint, **fault)
    config = config_for(fake, timeout_s=4.0 if "delay_s" in fault else 60.0)

    if fault.get("status") == 429:
        with pytest.warns(SHRateLimitWarning):
            eopatch = fetch(fake, config=config)
    else:
        eopatch = fetch(fake, config=config)

    assert_matches(eopatch, reference, list(range(FRAMES)))
    expected = {"token": 1, "catalog": FRAMES // 2, "process": FRAMES}
    expected[endpoint] += extra_calls
    assert fake.calls == expected


@pytest.mark.filterwarnings("ignore::sentinelhub.exceptions.SHRateLimitWarning")
@pytest.mark.parametrize(
    ("endpoint", "status", "message", "calls"),
    [
        (
            "catalog",
            429,
            f"Sentinel Hub catalog request rate limited (HTTP 429) {ATTEMPTS} times: retry later or lower max_threads",
            {"token": 1, "catalog": ATTEMPTS},
        ),
        (
            "catalog",
            500,
            f"Sentinel Hub catalog request failed with HTTP 500 (Illegal state): the service failed {ATTEMPTS} "
            "times: retry later",
            {"token": 1, "catalog": ATTEMPTS},
        ),
        (
            "process",
            500,
            f"Sentinel Hub process request failed with HTTP 500 (Illegal state): the service failed {ATTEMPTS} "
            "times: retry later",
            {"token": 1, "catalog": 2, "process": FRAMES * ATTEMPTS},
        ),
        (
            "token",
            503,
            f"Sentinel Hub token request failed with HTTP 503 (Service unavailable): the service failed {ATTEMPTS} "
            "times: retry later",
            {"token": ATTEMPTS},
        ),
        (
            "process",
            400,
            "Sentinel Hub process request failed with HTTP 400 (injected fault): check the bbox, resolution, time "
            "interval and maxcc",
            {"token": 1, "catalog": 2, "process": FRAMES},  # a client error is not retried
        ),
        (
            "process",
            401,
            "Sentinel Hub process request failed with HTTP 401 (injected fault): the token was not accepted: check "
            "SH_CLIENT_ID/SH_CLIENT_SECRET (or the sentinelhub-py profile) and SH_TOKEN_URL (it must belong to "
            "SH_BASE_URL)",
            {"token": 1, "catalog": 2, "process": FRAMES},
        ),
    ],
    ids=["429-catalog", "500-catalog", "500-process", "503-token", "400-process", "401-process"],
)
def test_lasting_failures_become_one_line(
    fake: FakeSentinelHub, endpoint: str, status: int, message: str, calls: dict[str, int]
) -> None:
    fake.inject(endpoint, status=status)
    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake)
    assert str(error.value) == message
    assert fake.calls == calls


def test_wrong_credentials(
    fake: FakeSentinelHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-secret-7d1e"
    monkeypatch.setenv("SH_CLIENT_SECRET", wrong)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake)

    assert str(error.value) == (
        "Sentinel Hub token request refused (HTTP 401, invalid_client): check SH_CLIENT_ID/SH_CLIENT_SECRET "
        "(or the sentinelhub-py profile) and SH_TOKEN_URL"
    )
    assert wrong not in str(error.value) and wrong not in caplog.text
    assert fake.calls == {"token": 1}  # refused credentials are not retried, nothing else is asked


def test_malformed_tiff(fake: FakeSentinelHub) -> None:
    fake.inject("process", malformed=True)
    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake)
    message = str(error.value)
    assert message.startswith("Sentinel Hub process answer is malformed (")
    assert message.endswith(
        f"): retry later; if it persists, check that SH_BASE_URL ({fake.base_url}) is a Sentinel Hub deployment"
    )
    assert "\n" not in message


def test_time_out(fake: FakeSentinelHub) -> None:
    fake.inject("catalog", delay_s=1.0)
    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake, config=config_for(fake, timeout_s=0.3, max_attempts=2))
    assert str(error.value) == (
        "Sentinel Hub catalog server did not answer within 0.3 s (2 attempts): retry later or raise the time-out"
    )
    assert fake.calls == {"token": 1, "catalog": 2}


def test_unreachable_server() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = SHConfig(
        sh_client_id=CLIENT_ID, sh_client_secret=SECRET, sh_base_url=url, sh_token_url=f"{url}/token"
    )
    config.max_download_attempts, config.download_sleep_time = 2, 0.01
    with pytest.raises(S2AgriSourceError) as error:
        L2AInputTask(config=config).execute(bbox=BBOX)
    assert str(error.value) == (
        f"Sentinel Hub token server {url}/token is unreachable (2 attempts): check the network and "
        "SH_BASE_URL/SH_TOKEN_URL"
    )


def test_empty_search(fake: FakeSentinelHub) -> None:
    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake, time_interval=("2019-09-02", "2019-09-20"))
    assert str(error.value) == (
        "Sentinel Hub catalog: no Sentinel-2 L2A acquisition in 2019-09-02/2019-09-20 with cloud cover < 50% "
        "over the bbox: widen --time or raise --maxcc"
    )
    assert fake.calls == {"token": 1, "catalog": 1}


def test_missing_credentials_and_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(S2AgriSourceError) as error:
        sentinelhub_config()
    assert str(error.value) == (
        "Sentinel Hub credentials missing: set SH_CLIENT_ID and SH_CLIENT_SECRET, or run "
        "`sentinelhub.config --sh_client_id ID --sh_client_secret SECRET` once"
    )
    with pytest.raises(
        S2AgriSourceError, match=r"^Sentinel Hub: profile 'absent' is not in .*config\.toml: "
    ):
        sentinelhub_config(profile="absent")
    with pytest.raises(S2AgriSourceError, match=r"^Sentinel Hub credentials missing"):
        L2AInputTask(config=SHConfig(use_defaults=True))

    SHConfig(sh_client_id="from-file", sh_client_secret="file-secret", use_defaults=True).save("s2agri")
    config = sentinelhub_config(profile="s2agri", timeout_s=7, max_attempts=2, sleep_s=0.5)
    assert (config.sh_client_id, config.sh_client_secret) == ("from-file", "file-secret")
    assert (config.download_timeout_seconds, config.max_download_attempts, config.max_retries) == (7, 2, 2)
    assert config.download_sleep_time == 0.5

    monkeypatch.setenv("SH_CLIENT_ID", "from-env")  # the environment wins over the file
    monkeypatch.setenv("SH_CLIENT_SECRET", "env-secret")
    monkeypatch.setenv("SH_BASE_URL", "https://sh.example.eu/")
    monkeypatch.setenv("SH_TOKEN_URL", "https://id.example.eu/token")
    config = sentinelhub_config(profile="s2agri")
    assert (config.sh_client_id, config.sh_base_url, config.sh_token_url) == (
        "from-env", "https://sh.example.eu", "https://id.example.eu/token",
    )  # fmt: skip
    assert sentinelhub_config(base_url="https://other.example.eu").sh_base_url == "https://other.example.eu"
    with pytest.raises(
        S2AgriInputError, match=r"^Sentinel Hub URL 'sh\.example\.eu' \(SH_BASE_URL\): give an http"
    ):
        sentinelhub_config(base_url="sh.example.eu")


def test_collection_follows_the_deployment() -> None:
    assert l2a_collection("https://services.sentinel-hub.com/") is DataCollection.SENTINEL2_L2A
    cdse = l2a_collection("https://sh.dataspace.copernicus.eu")
    assert cdse.service_url == "https://sh.dataspace.copernicus.eu"
    assert (cdse.api_id, cdse.catalog_id) == ("sentinel-2-l2a", "sentinel-2-l2a")
    assert l2a_collection("https://sh.dataspace.copernicus.eu/") is cdse


def test_bad_input(fake: FakeSentinelHub) -> None:
    config = config_for(fake)
    with pytest.raises(
        S2AgriInputError, match=r"^maxcc 1\.5 is not a cloud cover fraction: give 0 <= maxcc <= 1$"
    ):
        L2AInputTask(config=config, maxcc=1.5)
    with pytest.raises(S2AgriInputError, match=r"^time interval 'spring' \("):
        L2AInputTask(config=config, time_interval="spring")
    wgs84 = BBox((14.37, 45.87, 14.38, 45.88), CRS.WGS84)
    with pytest.raises(
        S2AgriInputError, match=r"^bbox CRS EPSG:4326 is not UTM: give the box in its UTM zone"
    ):
        L2AInputTask(config=config).execute(bbox=wgs84)
    with pytest.raises(S2AgriInputError, match=r"^no bbox: pass bbox="):
        L2AInputTask(config=config).execute()
    assert sum(fake.calls.values()) == 0
