"""Parcel polygons from an xcube geoDB collection, e.g. the challenge's ``ai4eo_reference``.

:func:`read_parcels_geodb` and :class:`GeoDBParcelsTask` give the parcels of one box as the
:data:`~s2agri.tasks.contract.REFERENCE` GeoDataFrame (``id``, ``label``, ``geometry``) in the box
CRS, through the xcube geoDB client (``xcube-geodb``; PostgREST behind it): the collection's SRID,
the box transformed to it (bounds of the densified box), ``get_collection_by_bbox`` with
``comparison_mode="intersects"``, then the exact test, repair and clipping of
:func:`~s2agri.tasks.sources.vector.to_reference` in the box CRS.

Connection settings default to what the client reads itself: ``GEODB_API_SERVER_URL``,
``GEODB_API_SERVER_PORT``, ``GEODB_AUTH_CLIENT_ID``, ``GEODB_AUTH_CLIENT_SECRET``,
``GEODB_AUTH_DOMAIN``, ``GEODB_AUTH_AUD`` (or ``GEODB_AUTH_ACCESS_TOKEN``), also from a ``.env`` file.
The database defaults to the user's own (``whoami``). Collection and database names must be plain
identifiers (checked before any request). Bad names and columns raise
:class:`~s2agri.tasks.errors.S2AgriInputError`; missing or refused credentials, an unknown
collection, an unreachable server or a time-out raise :class:`~s2agri.tasks.errors.S2AgriSourceError`,
in one line and never with a secret.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import geopandas as gpd
import pyproj
import pyproj.exceptions
import requests
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError

from .. import contract
from .parcels import bounds_in_crs, empty_reference, resolve_bbox, to_reference

try:  # the 'geodb' extra
    from xcube_geodb.core.error import GeoDBError
    from xcube_geodb.core.geodb import GeoDBClient
except ImportError:  # pragma: no cover - checked by _require()
    GeoDBClient = None

    class GeoDBError(ValueError):  # type: ignore[no-redef]
        """Stand-in so that ``except GeoDBError`` works without xcube-geodb."""


__all__ = ["DEFAULT_TIMEOUT_S", "GeoDBParcelsTask", "check_geodb_name", "geodb_client", "read_parcels_geodb"]

LOGGER = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0  #: the whole read of one box, all requests together
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_TABLE_NAME = 63  #: PostgreSQL cuts longer names, the table would be another one
_AUTH_CODES = frozenset({"PGRST300", "PGRST301", "PGRST302"})
_CREDENTIALS = "GEODB_AUTH_CLIENT_ID, GEODB_AUTH_CLIENT_SECRET and GEODB_AUTH_AUD"
_T = TypeVar("_T")


def _require() -> None:
    if GeoDBClient is None:
        raise S2AgriInputError("GeoDB access needs xcube-geodb: pip install 's2agri[geodb]'")


def check_geodb_name(name: object, what: str) -> str:
    """``name`` if it is a plain identifier (letters, digits, ``_``), else an S2AgriInputError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > _MAX_TABLE_NAME:
        raise S2AgriInputError(
            f"GeoDB {what} name {name!r} is not allowed: use letters, digits and '_' only "
            f"(not starting with a digit, at most {_MAX_TABLE_NAME} characters)"
        )
    return name


def geodb_client(
    *,
    server_url: str | None = None,
    server_port: int | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    auth_domain: str | None = None,
    auth_aud: str | None = None,
    access_token: str | None = None,
) -> GeoDBClient:
    """A ``GeoDBClient`` (raising on errors); unset settings come from the environment, as the client does."""
    _require()
    return GeoDBClient(
        server_url=server_url,
        server_port=server_port,
        client_id=client_id,
        client_secret=client_secret,
        auth_domain=auth_domain,
        auth_aud=auth_aud,
        access_token=access_token,
        raise_it=True,
    )


def _origin(url: str | None) -> str:
    """``scheme://host[:port]`` of a URL: no path, query or user info in messages."""
    if not url:
        return "?"
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _server_message(exc: BaseException) -> tuple[str, str]:
    """(PostgREST error code, message) of a GeoDBError, whose text is the response body."""
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        code, message = str(body.get("code") or ""), str(body.get("message") or body.get("error") or text)
    else:
        code, message = "", text
    message = " ".join(message.split())
    return code, (message[:200] + "...") if len(message) > 200 else message


def _source_error(exc: BaseException, where: str) -> S2AgriSourceError:
    """One line for a failed geoDB request: what went wrong and what to do."""
    if isinstance(exc, requests.Timeout):
        return S2AgriSourceError(f"GeoDB {where}: no answer in time: try again later")
    if isinstance(exc, requests.ConnectionError):
        url = getattr(exc.request, "url", None)
        return S2AgriSourceError(
            f"GeoDB {where}: cannot connect to {_origin(url)}: check GEODB_API_SERVER_URL, GEODB_API_SERVER_PORT "
            "and GEODB_AUTH_DOMAIN, and the network"
        )
    if isinstance(exc, requests.HTTPError):  # only the token request raises these
        status = exc.response.status_code if exc.response is not None else "?"
        origin = _origin(getattr(exc.response, "url", None))
        if status in (400, 401, 403):
            return S2AgriSourceError(
                f"GeoDB {where}: the authentication server {origin} refused the credentials (HTTP {status}): "
                f"check {_CREDENTIALS}"
            )
        return S2AgriSourceError(
            f"GeoDB {where}: the authentication server {origin} failed (HTTP {status}): try again later"
        )
    if isinstance(exc, requests.RequestException):
        return S2AgriSourceError(f"GeoDB {where}: request failed ({type(exc).__name__}): try again later")
    code, message = _server_message(exc)
    if "Invalid client_credentials configuration" in message or "Invalid password flow" in message:
        return S2AgriSourceError(
            f"GeoDB {where}: no credentials: set GEODB_AUTH_CLIENT_ID and GEODB_AUTH_CLIENT_SECRET "
            "(or GEODB_AUTH_ACCESS_TOKEN), or pass client_id= and client_secret="
        )
    if "did not return an access token" in message:
        return S2AgriSourceError(
            f"GeoDB {where}: the authentication server gave no access token: check GEODB_AUTH_DOMAIN and GEODB_AUTH_AUD"
        )
    if code in _AUTH_CODES or "JWT" in message or "JWS" in message:
        return S2AgriSourceError(
            f"GeoDB {where}: the server refused the access token ({message}): check {_CREDENTIALS}, "
            "or renew GEODB_AUTH_ACCESS_TOKEN"
        )
    if code == "42501":
        return S2AgriSourceError(
            f"GeoDB {where}: access denied ({message}): ask the owner to share the collection"
        )
    if code == "57014":
        return S2AgriSourceError(
            f"GeoDB {where}: the server stopped the query ({message}): use a smaller box or try again later"
        )
    if re.search(r"Collection \S+ does not exist", message):
        return _not_found(where)
    return S2AgriSourceError(f"GeoDB {where}: request failed ({message or 'no message'})")


def _not_found(where: str) -> S2AgriSourceError:
    return S2AgriSourceError(
        f"GeoDB {where}: no such collection, or not shared with you: check the collection and database names "
        "(GeoDBClient.get_my_collections() lists yours)"
    )


def _malformed(where: str, exc: BaseException) -> S2AgriSourceError:
    return S2AgriSourceError(
        f"GeoDB {where}: malformed answer ({type(exc).__name__}): check that GEODB_API_SERVER_URL is a geoDB server"
    )


def _with_deadline(function: Callable[[], _T], timeout: float, where: str) -> _T:
    """``function()`` in a worker thread, waited for at most ``timeout`` s (the client sets no time-out).

    After a time-out the thread is left to finish on its own (daemon): its result is discarded.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed over to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="s2agri-geodb", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise S2AgriSourceError(
            f"GeoDB {where}: no answer within {timeout:g} s: try again later, or pass a larger timeout="
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _query(client: GeoDBClient, collection: str, database: str | None, bbox: BBox) -> tuple[Any, int, str]:
    """(client result, SRID, database) of the bbox query; errors as S2AgriSourceError."""
    where = f"collection '{collection}'"
    try:
        database = database or client.database
        where = f"collection '{collection}' (database '{database}')"
        if len(f"{database}_{collection}") > _MAX_TABLE_NAME:
            raise S2AgriInputError(
                f"GeoDB {where}: the table name {database}_{collection} is longer than {_MAX_TABLE_NAME} characters: "
                "check the names"
            )
        srid = client.get_collection_srid(collection, database=database)
        if not isinstance(srid, int) or isinstance(srid, bool):
            client.whoami  # noqa: B018 - an access refused raises here; else the collection is missing
            raise _not_found(where)
        try:
            bounds = bounds_in_crs(bbox, f"EPSG:{srid}")
        except pyproj.exceptions.CRSError:
            raise S2AgriSourceError(
                f"GeoDB {where}: the collection's SRID {srid} is no EPSG code PROJ knows: store it in an EPSG CRS"
            ) from None
        LOGGER.debug("GeoDB %s: SRID %d, query bounds %s", where, srid, bounds)
        result = client.get_collection_by_bbox(
            collection, bounds, comparison_mode="intersects", bbox_crs=srid, database=database
        )
    except S2AgriInputError:
        raise
    except requests.exceptions.InvalidJSONError as exc:  # before RequestException: it is one
        raise _malformed(where, exc) from exc
    except (GeoDBError, requests.RequestException) as exc:
        raise _source_error(exc, where) from exc
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as exc:  # an answer the client misread
        raise _malformed(where, exc) from exc
    return result, srid, database


def read_parcels_geodb(
    collection: str,
    bbox: BBox,
    *,
    database: str | None = None,
    client: GeoDBClient | None = None,
    clip: bool = False,
    id_column: str = "id",
    label_column: str = "label",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> gpd.GeoDataFrame:
    """The parcels of a geoDB collection that intersect ``bbox``, as ``id, label, geometry`` in the box CRS.

    ``database``: default the user's own. ``client``: a ``GeoDBClient``, default :func:`geodb_client`
    (settings from the environment). ``id_column``/``label_column`` are renamed to ``id``/``label``.
    ``clip``: cut the parcels to the box. ``timeout``: seconds for all requests of the box together.
    """
    collection = check_geodb_name(collection, "collection")
    if database is not None:
        database = check_geodb_name(database, "database")
    if not isinstance(bbox, BBox):
        raise S2AgriInputError(f"bbox must be a sentinelhub.BBox, not {type(bbox).__name__}")
    if not timeout > 0:
        raise S2AgriInputError(f"timeout={timeout} must be positive (seconds)")
    client = client if client is not None else geodb_client()
    where = f"collection '{collection}'" + (f" (database '{database}')" if database else "")
    result, srid, database = _with_deadline(
        lambda: _query(client, collection, database, bbox), timeout, where
    )
    source = f"GeoDB collection '{collection}' (database '{database}')"
    if not isinstance(result, gpd.GeoDataFrame):
        message = (
            result["Error"].iloc[0] if hasattr(result, "columns") and "Error" in result.columns else result
        )
        raise S2AgriSourceError(f"{source}: request failed ({' '.join(str(message).split())[:200]})")
    if "Empty Result" in result.columns or result.empty:
        LOGGER.warning("%s: no parcel in the box %r", source, bbox)
        return empty_reference(bbox.crs.pyproj_crs())
    if "geometry" not in result.columns:
        raise S2AgriSourceError(f"{source}: the answer has no geometry column: check the collection")
    result = result.set_crs(f"EPSG:{srid}", allow_override=True)
    parcels = to_reference(
        result, bbox, source=source, id_column=id_column, label_column=label_column, clip=clip
    )
    LOGGER.info(
        "%s: %d parcels for the box (%d returned by the bbox query)", source, len(parcels), len(result)
    )
    return parcels


class GeoDBParcelsTask(EOTask):
    """Reads the parcels of the box from a geoDB collection into ``vector_timeless/REFERENCE``.

    ``execute(eopatch=None, *, bbox=...)`` returns the EOPatch (a new one holding only ``bbox`` when
    none is given) with the parcels of :func:`read_parcels_geodb` in the box CRS. Give either
    ``client`` (a ``GeoDBClient``) or the connection settings; unset settings come from the
    environment. Settings are keyword-only: eo-learn's task reports (``init_args``) leave them out.
    """

    def __init__(
        self,
        collection: str,
        *,
        database: str | None = None,
        server_url: str | None = None,
        server_port: int | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        auth_domain: str | None = None,
        auth_aud: str | None = None,
        access_token: str | None = None,
        clip: bool = False,
        id_column: str = "id",
        label_column: str = "label",
        timeout: float = DEFAULT_TIMEOUT_S,
        client: GeoDBClient | None = None,
        output_feature: Feature = contract.REFERENCE,
    ):
        self.collection = check_geodb_name(collection, "collection")
        self.database = None if database is None else check_geodb_name(database, "database")
        self.settings: dict[str, Any] = {
            "server_url": server_url,
            "server_port": server_port,
            "client_id": client_id,
            "client_secret": client_secret,
            "auth_domain": auth_domain,
            "auth_aud": auth_aud,
            "access_token": access_token,
        }
        given = [name for name, value in self.settings.items() if value is not None]
        if client is not None and given:
            raise S2AgriInputError(
                f"GeoDBParcelsTask got client= and {', '.join(given)}: give the client or the settings, not both"
            )
        if not timeout > 0:
            raise S2AgriInputError(f"timeout={timeout} must be positive (seconds)")
        self.clip = clip
        self.id_column = id_column
        self.label_column = label_column
        self.timeout = timeout
        self.client = client
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(collection={self.collection!r}, database={self.database!r})"

    def execute(self, eopatch: EOPatch | None = None, *, bbox: BBox | None = None) -> EOPatch:
        eopatch, bbox = resolve_bbox(eopatch, bbox)
        if self.client is None:  # made here, once: the environment is read when the task runs
            self.client = geodb_client(**self.settings)
        eopatch[self.output_feature] = read_parcels_geodb(
            self.collection,
            bbox,
            database=self.database,
            client=self.client,
            clip=self.clip,
            id_column=self.id_column,
            label_column=self.label_column,
            timeout=self.timeout,
        )
        return eopatch
