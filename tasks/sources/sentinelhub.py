"""Sentinel-2 L2A from Sentinel Hub, fetched the way the challenge data was (``challenge-data.md``).

:class:`L2AInputTask` runs eo-learn's ``SentinelHubInputTask`` with the challenge settings and
returns the contract features. Retries are sentinelhub-py's own (see :func:`sentinelhub_config`):

* 429 (rate limit): the client waits the service's ``Retry-After`` (30 s when absent) and asks
  again, at most ``max_attempts`` times in all (``SHConfig.max_retries``);
* 5xx, time-outs and dropped connections: ``max_attempts`` tries (``max_download_attempts``),
  sleeping ``sleep_s``, then 3x longer after each failure (``download_sleep_time``);
* other 4xx: no retry.

Whatever still fails becomes one :class:`S2AgriSourceError` line naming the call (token,
catalog or process), the HTTP status and the fix. The client secret never enters a message or a log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import requests
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.io import SentinelHubInputTask
from oauthlib.oauth2 import BackendApplicationClient, InsecureTransportError, OAuth2Error
from requests_oauthlib import OAuth2Session
from sentinelhub import (
    BBox,
    DataCollection,
    SentinelHubDownloadClient,
    SentinelHubSession,
    SHConfig,
    parse_time_interval,
)
from sentinelhub.config import DEFAULT_PROFILE, SH_PROFILE_ENV_VAR
from sentinelhub.constants import SHConstants
from sentinelhub.download.handlers import fail_user_errors, retry_temporary_errors
from sentinelhub.download.models import DownloadRequest
from sentinelhub.exceptions import (
    DownloadFailedException,
    ImageDecodingError,
    MissingDataInRequestException,
    OutOfRequestsException,
)
from sentinelhub.types import RawTimeIntervalType

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.secrets import redact_uri, uri_secret

LOGGER = logging.getLogger(__name__)

SOURCE = "sentinelhub"
ENV_CLIENT_ID, ENV_CLIENT_SECRET = "SH_CLIENT_ID", "SH_CLIENT_SECRET"
ENV_BASE_URL, ENV_TOKEN_URL = "SH_BASE_URL", "SH_TOKEN_URL"
DEFAULT_MAXCC = 0.5
DEFAULT_TIME_DIFFERENCE = dt.timedelta(minutes=120)
#: ``additional_data`` of the challenge fetch: Sentinel Hub band -> contract feature.
ADDITIONAL_DATA: tuple[Any, ...] = (
    (FeatureType.MASK, "dataMask", contract.IS_DATA[1]),
    (FeatureType.MASK, "SCL", contract.SCL[1]),
    (FeatureType.MASK, "CLM", contract.CLM[1]),
    (FeatureType.DATA, "CLP", contract.CLP[1]),
)
_CREDENTIALS_FIX = (
    f"check {ENV_CLIENT_ID}/{ENV_CLIENT_SECRET} (or the sentinelhub-py profile) and {ENV_TOKEN_URL}"
)
_MAX_SERVER_MESSAGE = 200
#: Credentials in a log message: form fields, token JSON, Authorization headers.
_SECRET_PATTERNS = (
    re.compile(r"(client_secret=)[^&\s'\"]+"),
    re.compile(r"((?:access_token|refresh_token|id_token|client_secret)['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,}]+"),
    re.compile(r"((?:Bearer|Basic)\s+)[\w.~+/=-]+"),
)


class RedactSecrets(logging.Filter):
    """Masks client secrets and tokens in log records (requests-oauthlib logs them at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern in _SECRET_PATTERNS:
            redacted = pattern.sub(r"\1***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _guard_oauth_logs() -> None:
    """Install :class:`RedactSecrets` on requests-oauthlib's OAuth2 logger, once."""
    oauth_logger = logging.getLogger("requests_oauthlib.oauth2_session")
    if not any(isinstance(f, RedactSecrets) for f in oauth_logger.filters):
        oauth_logger.addFilter(RedactSecrets())


_guard_oauth_logs()


def sentinelhub_config(
    *,
    base_url: str | None = None,
    token_url: str | None = None,
    profile: str | None = None,
    timeout_s: float = 120.0,
    max_attempts: int = 4,
    sleep_s: float = 5.0,
) -> SHConfig:
    """An ``SHConfig`` with credentials and the retry policy of s2agri.

    Credentials come from ``SH_CLIENT_ID``/``SH_CLIENT_SECRET``, else from the sentinelhub-py
    configuration file (``profile``, ``SH_PROFILE`` or the default one). The deployment is
    ``base_url``/``token_url``, else ``SH_BASE_URL``/``SH_TOKEN_URL``, else the configuration's.
    ``timeout_s`` bounds each HTTP answer, ``max_attempts`` the tries of one request, ``sleep_s``
    the first pause between tries. No credentials: :class:`S2AgriSourceError`.
    """
    if timeout_s <= 0 or max_attempts < 1 or sleep_s < 0:
        raise S2AgriInputError(
            f"Sentinel Hub timeout_s={timeout_s}, max_attempts={max_attempts}, sleep_s={sleep_s}: "
            "give timeout_s > 0, max_attempts >= 1 and sleep_s >= 0"
        )
    profile_name = profile or os.environ.get(SH_PROFILE_ENV_VAR) or DEFAULT_PROFILE
    location = SHConfig.get_config_location()
    try:
        config = SHConfig(profile)
    except KeyError:
        raise S2AgriSourceError(
            f"Sentinel Hub: profile '{profile_name}' is not in {location}: create it with "
            f"`sentinelhub.config --profile {profile_name} --sh_client_id ID --sh_client_secret SECRET` "
            f"or set {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}"
        ) from None
    except (OSError, ValueError) as exc:
        raise S2AgriSourceError(
            f"Sentinel Hub: cannot read the sentinelhub-py configuration {location} "
            f"({_one_line(exc)}): fix or delete the file"
        ) from None
    for value, env, field in (
        (base_url, ENV_BASE_URL, "sh_base_url"),
        (token_url, ENV_TOKEN_URL, "sh_token_url"),
    ):
        url = value or os.environ.get(env)
        if url:
            if not url.startswith(("http://", "https://")):
                raise S2AgriInputError(
                    f"Sentinel Hub URL {redact_uri(url)!r} ({env}): give an http:// or https:// URL"
                )
            where = uri_secret(url)
            if where:
                raise S2AgriInputError(
                    f"Sentinel Hub URL {redact_uri(url)} ({env}) holds a secret ({where}), which would be "
                    f"written to reports and logs: remove it and set {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}"
                )
            setattr(config, field, url.rstrip("/"))
    config.download_timeout_seconds = float(timeout_s)
    config.max_download_attempts = int(max_attempts)
    config.max_retries = int(max_attempts)  # 429 answers; None would retry rate limits forever
    config.download_sleep_time = float(sleep_s)
    require_credentials(config)
    LOGGER.debug(
        "Sentinel Hub at %s, token from %s (profile %s)",
        config.sh_base_url,
        config.sh_token_url,
        profile_name,
    )
    return config


def require_credentials(config: SHConfig) -> None:
    """:class:`S2AgriSourceError` unless ``config`` holds an OAuth client id and secret."""
    if not (config.sh_client_id and config.sh_client_secret):
        raise S2AgriSourceError(
            f"Sentinel Hub credentials missing: set {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}, or run "
            "`sentinelhub.config --sh_client_id ID --sh_client_secret SECRET` once"
        )


def l2a_collection(base_url: str) -> DataCollection:
    """``SENTINEL2_L2A`` served by ``base_url``: sentinelhub-py pins the built-in one to its main
    deployment, so another deployment (e.g. the Copernicus Data Space) needs its own definition."""
    default = DataCollection.SENTINEL2_L2A
    base_url = base_url.rstrip("/")
    if base_url == default.service_url:
        return default
    name = "S2AGRI_SENTINEL2_L2A_" + hashlib.sha1(base_url.encode()).hexdigest()[:12]
    return default.define_from(name, service_url=base_url)


class TimedSentinelHubSession(SentinelHubSession):
    """A ``SentinelHubSession`` whose token request has the config's time-out.

    sentinelhub-py 3.x asks for OAuth tokens without a time-out, so a token endpoint that accepts the
    connection and never answers blocks for ever. Here every token request waits at most
    ``config.download_timeout_seconds`` and is retried like any download (``max_download_attempts``).
    """

    @retry_temporary_errors
    @fail_user_errors
    def _fetch_token(self, request: DownloadRequest) -> dict[str, Any]:
        oauth_client = BackendApplicationClient(client_id=self.config.sh_client_id)
        with OAuth2Session(client=oauth_client) as oauth_session:
            oauth_session.register_compliance_hook("access_token_response", self._compliance_hook)
            return oauth_session.fetch_token(
                token_url=request.url,
                client_id=self.config.sh_client_id,
                client_secret=self.config.sh_client_secret,
                headers={**self.DEFAULT_HEADERS, **SHConstants.HEADERS},
                include_client_id=True,
                timeout=self.config.download_timeout_seconds,
            )


def timed_session(config: SHConfig) -> SentinelHubSession:
    """The cached session of ``config``'s client and deployment, a :class:`TimedSentinelHubSession`
    created (token fetched with a time-out) and cached for every sentinelhub-py client when missing."""
    key = SentinelHubDownloadClient._get_cache_key(config)
    cached = SentinelHubDownloadClient._CACHED_SESSIONS.get(key)
    if isinstance(cached, TimedSentinelHubSession):
        return cached
    session = TimedSentinelHubSession(config=config)
    SentinelHubDownloadClient.cache_session(session)
    return session


class L2AInputTask(EOTask):
    """Create the contract features of a box from Sentinel Hub (the challenge's own fetch).

    ``SentinelHubInputTask`` with SENTINEL2_L2A, the 12 bands of ``contract.BAND_NAMES`` as uint16
    DN into ``data/BANDS``, dataMask -> ``mask/IS_DATA``, SCL, CLM -> ``mask/``, CLP -> ``data/``,
    plus ``scalar/NORM_FACTORS`` (1e-4) and ``meta_info["source"] = "sentinelhub"``.
    Acquisitions closer than ``time_difference`` count as one; scenes need cloud cover < ``maxcc``.
    """

    def __init__(
        self,
        *,
        time_interval: RawTimeIntervalType = contract.TIME_INTERVAL,
        maxcc: float = DEFAULT_MAXCC,
        resolution: float = contract.INPUT_RESOLUTION_M,
        time_difference: dt.timedelta = DEFAULT_TIME_DIFFERENCE,
        config: SHConfig | None = None,
        max_threads: int | None = None,
    ):
        if not 0.0 <= maxcc <= 1.0:
            raise S2AgriInputError(f"maxcc {maxcc} is not a cloud cover fraction: give 0 <= maxcc <= 1")
        if resolution <= 0:
            raise S2AgriInputError(f"resolution {resolution} m: give a positive pixel size in metres")
        self.time_interval = _interval(time_interval)
        self.maxcc, self.resolution, self.time_difference = maxcc, resolution, time_difference
        self.config = config if config is not None else sentinelhub_config()
        require_credentials(self.config)
        l2a_collection(self.config.sh_base_url)  # define it here, not concurrently in execute
        self.max_threads = max_threads

    def execute(
        self,
        eopatch: EOPatch | None = None,
        *,
        bbox: BBox | None = None,
        time_interval: RawTimeIntervalType | None = None,
    ) -> EOPatch:
        """Fetch ``bbox`` (default: the EOPatch's) over ``time_interval`` (default: the task's)."""
        bbox = bbox if bbox is not None else (eopatch.bbox if eopatch is not None else None)
        if bbox is None:
            raise S2AgriInputError("no bbox: pass bbox=... to execute or an EOPatch that has one")
        if not contract.is_utm_epsg(bbox.crs.epsg):
            raise S2AgriInputError(
                f"bbox CRS EPSG:{bbox.crs.epsg} is not UTM: give the box in its UTM zone, e.g. EPSG:32633"
            )
        interval = _interval(time_interval) if time_interval is not None else self.time_interval
        with source_errors("token", self.config):
            timed_session(self.config)
        request = _L2ARequestTask(
            data_collection=l2a_collection(self.config.sh_base_url),
            resolution=self.resolution,
            bands_feature=contract.BANDS,
            bands=list(contract.BAND_NAMES),
            additional_data=list(ADDITIONAL_DATA),
            maxcc=self.maxcc,
            time_difference=self.time_difference,
            bands_dtype=np.uint16,
            config=self.config,
            max_threads=self.max_threads,
        )
        LOGGER.debug("fetching %r, %s .. %s, maxcc %g", bbox, *interval, self.maxcc)
        with source_errors("process", self.config):
            fetched = request.execute(bbox=bbox, time_interval=interval)
        for spec in contract.INPUT_FEATURES:
            if spec.feature != contract.NORM_FACTORS:
                fetched[spec.feature] = fetched[spec.feature].astype(spec.dtype, copy=False)
        fetched[contract.NORM_FACTORS] = np.full(
            (len(fetched.get_timestamps()), 1), contract.NORM_FACTOR, np.float32
        )
        fetched.meta_info["source"] = SOURCE
        fetched.meta_info["time_interval"] = [when.isoformat() for when in interval]
        fetched.meta_info["maxcc"] = self.maxcc
        LOGGER.info("fetched %d acquisitions of %r from Sentinel Hub", len(fetched.get_timestamps()), bbox)
        if eopatch is None:
            return fetched
        eopatch.timestamps = fetched.timestamps
        for feature in fetched.get_features():
            eopatch[feature] = fetched[feature]
        eopatch.meta_info.update(fetched.meta_info)
        return eopatch


class _L2ARequestTask(SentinelHubInputTask):
    """``SentinelHubInputTask`` whose catalog search reports its own failures and an empty result."""

    def _get_timestamps(self, time_interval: RawTimeIntervalType | None, bbox: BBox) -> list[dt.datetime]:
        with source_errors("catalog", self.config):
            timestamps = super()._get_timestamps(time_interval, bbox)
        if not timestamps:
            start, end = parse_time_interval(time_interval)
            raise S2AgriSourceError(
                f"Sentinel Hub catalog: no Sentinel-2 L2A acquisition in {start:%Y-%m-%d}/{end:%Y-%m-%d} with "
                f"cloud cover < {self.maxcc:.0%} over the bbox: widen --time or raise --maxcc"
            )
        LOGGER.debug("Sentinel Hub catalog: %d acquisitions", len(timestamps))
        return timestamps


def _interval(time_interval: RawTimeIntervalType) -> tuple[dt.datetime, dt.datetime]:
    try:
        start, end = parse_time_interval(time_interval)
        if start is None or end is None:
            raise ValueError("an open interval")
    except (ValueError, TypeError) as exc:
        raise S2AgriInputError(
            f"time interval {time_interval!r} ({_one_line(exc)}): give (START, END) as ISO dates, e.g. "
            f"{contract.TIME_INTERVAL}"
        ) from None
    return start, end


@contextmanager
def source_errors(call: str, config: SHConfig) -> Iterator[None]:
    """Turn the failures of a Sentinel Hub ``call`` (token, catalog, process) into one-line
    :class:`S2AgriSourceError` messages; an OAuth or token URL failure is always the token call."""
    try:
        yield
    except S2AgriSourceError:
        raise
    except InsecureTransportError as exc:
        raise S2AgriSourceError(
            f"Sentinel Hub token URL {config.sh_token_url} is not https: OAuth2 needs https "
            f"(fix {ENV_TOKEN_URL}; OAUTHLIB_INSECURE_TRANSPORT=1 allows http for a local test server)"
        ) from exc
    except OAuth2Error as exc:
        raise S2AgriSourceError(
            _scrub(
                f"Sentinel Hub token request refused (HTTP {exc.status_code}, {exc.error}): {_CREDENTIALS_FIX}",
                config,
            )
        ) from exc
    except OutOfRequestsException as exc:
        raise S2AgriSourceError(
            f"Sentinel Hub {call} request rate limited (HTTP 429) {config.max_retries} times: "
            "retry later or lower max_threads"
        ) from exc
    except DownloadFailedException as exc:
        cause = exc.request_exception
        if cause is None:
            raise S2AgriSourceError(
                _scrub(f"Sentinel Hub {call} request failed: {_one_line(exc)}", config)
            ) from exc
        raise S2AgriSourceError(_request_failure(call, cause, config)) from exc
    except requests.RequestException as exc:
        raise S2AgriSourceError(_request_failure(call, exc, config)) from exc
    except (
        ImageDecodingError,
        MissingDataInRequestException,
        tarfile.TarError,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        raise S2AgriSourceError(
            _scrub(
                f"Sentinel Hub {call} answer is malformed ({type(exc).__name__}: {_one_line(exc)}): retry later; "
                f"if it persists, check that {ENV_BASE_URL} ({config.sh_base_url}) is a Sentinel Hub deployment",
                config,
            )
        ) from exc


def _request_failure(call: str, exc: requests.RequestException, config: SHConfig) -> str:
    """The one-line message of a request that failed for good."""
    request = exc.request if exc.request is not None else getattr(exc.response, "request", None)
    url = getattr(request, "url", None) or ""
    if url.startswith(config.sh_token_url):
        call = "token"
    attempts = config.max_download_attempts
    response = exc.response
    if isinstance(exc, requests.Timeout):
        message = (
            f"Sentinel Hub {call} server did not answer within {config.download_timeout_seconds:g} s "
            f"({attempts} attempts): retry later or raise the time-out"
        )
    elif isinstance(exc, requests.ConnectionError):
        message = (
            f"Sentinel Hub {call} server {url.split('?')[0] or config.sh_base_url} is unreachable ({attempts} "
            f"attempts): check the network and {ENV_BASE_URL}/{ENV_TOKEN_URL}"
        )
    elif response is None:
        message = f"Sentinel Hub {call} request failed ({type(exc).__name__}: {_one_line(exc)}): retry later"
    else:
        status, detail = response.status_code, _server_message(response)
        if status == 429:
            fix = "rate limited: retry later or lower max_threads"
        elif status >= 500:
            fix = f"the service failed {attempts} times: retry later"
        elif status in (401, 403) and call == "token":
            fix = _CREDENTIALS_FIX
        elif status == 401:
            fix = f"the token was not accepted: {_CREDENTIALS_FIX} (it must belong to {ENV_BASE_URL})"
        elif status == 403:
            fix = "the account may not use this collection or has no processing units left: check the account"
        else:
            fix = "check the bbox, resolution, time interval and maxcc"
        message = f"Sentinel Hub {call} request failed with HTTP {status}{detail}: {fix}"
    return _scrub(message, config)


def _server_message(response: requests.Response) -> str:
    """`` (message)`` from Sentinel Hub's JSON error body, one line and short; empty when none."""
    try:
        payload: Any = json.loads(response.content)
    except ValueError:
        return ""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        error = error.get("message") or error.get("error_description") or error.get("reason") or ""
    text = _one_line(error)[:_MAX_SERVER_MESSAGE]
    return f" ({text})" if text else ""


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _scrub(message: str, config: SHConfig) -> str:
    """The message with the client secret masked, should any server ever echo it."""
    secret = config.sh_client_secret
    return message.replace(secret, "***") if secret else message
