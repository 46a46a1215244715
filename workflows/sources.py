"""Where boxes come from: validated source and parcel settings, and the EOTasks they build.

Input time series (one of, by ``kind``):

* ``simulator``: the embedded Sentinel-2 scene simulator (no account, the default);
* ``sentinelhub``: Sentinel-2 L2A from Sentinel Hub's Process API (credentials from the
  environment or the sentinelhub-py configuration, never from a config file);
* ``stac``: Sentinel-2 L2A COGs of a STAC API or static catalog (e.g. Earth Search).

Parcel polygons (optional; the simulator brings its own): a URI,

* ``geodb://DATABASE/COLLECTION`` for an xcube geoDB collection (server and credentials from the
  ``GEODB_*`` environment variables),
* ``postgresql://[user@]host[:port]/db?table=[schema.]table`` for a PostGIS table (password from
  ``PGPASSWORD`` or ``~/.pgpass``),
* or a vector file path (GeoPackage, GeoParquet, FlatGeobuf, Shapefile, GeoJSON).

``s2agri fetch`` and ``s2agri run`` (``source:`` and ``parcels:`` of the region config) share
these schemas and factories.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from eolearn.core import EOTask
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.secrets import redact_uri, uri_secret

SOURCE_KINDS = ("simulator", "sentinelhub", "stac")
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
_PG_SCHEMES = ("postgresql", "postgres")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _season() -> tuple[dt.date, dt.date]:
    start, end = contract.TIME_INTERVAL
    return dt.date.fromisoformat(start), dt.date.fromisoformat(end)


class _TimeSeriesSource(_Strict):
    time_interval: tuple[dt.date, dt.date] = Field(default_factory=_season)
    maxcc: float = Field(0.5, ge=0.0, le=1.0, description="largest scene cloud cover, 0..1")
    resolution: float = Field(contract.INPUT_RESOLUTION_M, gt=0, le=60)

    @model_validator(mode="after")
    def _ordered(self) -> _TimeSeriesSource:
        start, end = self.time_interval
        if end <= start:
            raise ValueError(
                f"time_interval {start}/{end} ends before it starts: give START/END with START < END"
            )
        return self

    def interval_strings(self) -> tuple[str, str]:
        """The interval as ISO dates (END inclusive up to midnight, as sentinelhub-py takes it)."""
        start, end = self.time_interval
        return start.isoformat(), end.isoformat()


class SimulatorSource(_Strict):
    kind: Literal["simulator"] = "simulator"
    seed: int = Field(0, ge=0, lt=2**63)
    frames_min: int = Field(contract.MIN_FRAMES, ge=1)
    frames_max: int = Field(contract.MAX_FRAMES, ge=1)
    time_interval: tuple[dt.date, dt.date] | None = Field(
        None, description="keep only simulated acquisitions in this interval (default: all of them)"
    )

    @model_validator(mode="after")
    def _frames(self) -> SimulatorSource:
        if self.frames_min > self.frames_max:
            raise ValueError(f"frames_min {self.frames_min} > frames_max {self.frames_max}")
        return self


class SentinelHubSource(_TimeSeriesSource):
    kind: Literal["sentinelhub"]
    time_difference_min: float = Field(120.0, ge=0, description="acquisitions closer than this are one")
    base_url: str | None = Field(
        None, description="Sentinel Hub deployment (default: SH_BASE_URL or sentinelhub-py's)"
    )
    token_url: str | None = Field(
        None, description="OAuth token URL (default: SH_TOKEN_URL or sentinelhub-py's)"
    )
    profile: str | None = Field(None, description="sentinelhub-py configuration profile with the credentials")
    max_threads: int = Field(4, ge=1, le=32)

    @field_validator("base_url", "token_url")
    @classmethod
    def _no_secret(cls, url: str | None) -> str | None:
        return refuse_secret(url, "set SH_CLIENT_ID and SH_CLIENT_SECRET (or use a sentinelhub-py profile)")


class StacSource(_TimeSeriesSource):
    kind: Literal["stac"]
    catalog: str = Field(EARTH_SEARCH, description="STAC API root or static catalog.json (URL or path)")
    collection: str = "sentinel-2-l2a"

    @field_validator("catalog")
    @classmethod
    def _no_secret(cls, url: str) -> str:
        return refuse_secret(url, "use a catalog that needs no credentials in its URL")


SourceConfig = Annotated[SimulatorSource | SentinelHubSource | StacSource, Field(discriminator="kind")]


class ParcelsConfig(_Strict):
    """Parcel polygons to rasterise as the reference of each box."""

    uri: str = Field(
        ..., description="geodb://DB/COLLECTION, postgresql://host/db?table=..., or a vector file"
    )
    layer: str | None = Field(None, description="layer of a multi-layer file (GeoPackage)")
    id_column: str = "id"
    label_column: str = Field("label", description="column holding the challenge label codes")
    clip: bool = Field(False, description="clip the parcels to the box (GeoDB)")

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str) -> str:
        return refuse_secret(
            uri, "put it in PGPASSWORD or ~/.pgpass (PostgreSQL) or the source's credential store"
        )


def refuse_secret(url: str | None, fix: str) -> Any:
    """``url`` unless it holds a secret (:func:`s2agri.tasks.secrets.uri_secret`): then a ``ValueError``
    ending in ``fix``."""
    where = None if url is None else uri_secret(url)
    if where:
        raise ValueError(
            f"the URL holds a secret ({where}), which would be written to configs, reports and logs: "
            f"remove it and {fix}"
        )
    return url


def default_source_kind(data: Any) -> Any:
    """Before validation: a source mapping without ``kind`` is the simulator (older configs)."""
    if isinstance(data, dict) and "kind" not in data:
        return {"kind": "simulator", **data}
    return data


# ---------------------------------------------------------------- factories


def input_task(source: SimulatorSource | SentinelHubSource | StacSource) -> EOTask:
    """The EOTask that creates a box's EOPatch: ``execute(bbox=...)`` -> contract features."""
    if isinstance(source, SimulatorSource):
        from s2agri.tasks.sources.simulator import SimulatorInputTask

        return SimulatorInputTask(source.seed, frames_min=source.frames_min, frames_max=source.frames_max)
    if isinstance(source, SentinelHubSource):
        from s2agri.tasks.sources.sentinelhub import L2AInputTask, sentinelhub_config

        config = sentinelhub_config(
            base_url=source.base_url, token_url=source.token_url, profile=source.profile
        )
        return L2AInputTask(
            time_interval=source.interval_strings(),
            maxcc=source.maxcc,
            resolution=source.resolution,
            time_difference=dt.timedelta(minutes=source.time_difference_min),
            config=config,
            max_threads=source.max_threads,
        )
    if isinstance(source, StacSource):
        from s2agri.tasks.sources.stac import StacInputTask

        return StacInputTask(
            source.catalog,
            source.collection,
            time_interval=source.interval_strings(),
            maxcc=source.maxcc,
            resolution=source.resolution,
        )
    raise TypeError(f"unknown source {source!r}")


def time_filter_task(source: SimulatorSource | SentinelHubSource | StacSource) -> EOTask | None:
    """For the simulator with a ``time_interval``: eo-learn's filter keeping frames inside it."""
    if not isinstance(source, SimulatorSource) or source.time_interval is None:
        return None
    from s2agri.tasks.sources.time_filter import TimeIntervalFilterTask

    return TimeIntervalFilterTask(*source.time_interval)


def _is_postgres(uri: str) -> bool:
    return urlsplit(uri).scheme in _PG_SCHEMES


def parcels_kind(uri: str) -> Literal["geodb", "postgis", "file"]:
    """Which parcel source a URI names."""
    scheme = urlsplit(uri).scheme
    if scheme == "geodb":
        return "geodb"
    if scheme in _PG_SCHEMES:
        return "postgis"
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri) and scheme not in ("file",):
        raise S2AgriInputError(
            f"parcels {redact(uri)}: unknown scheme '{scheme}://': give geodb://DB/COLLECTION, "
            "postgresql://host/db?table=NAME or a vector file path"
        )
    return "file"


def redact(uri: str) -> str:
    """A URI with its secrets replaced by ``***`` (for messages and logs): :func:`redact_uri`."""
    return redact_uri(uri)


def split_postgres_uri(uri: str) -> tuple[str, str, str]:
    """``postgresql://...?table=schema.name&...`` -> (libpq DSN without ``table``, schema, table)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tables = [value for key, value in query if key == "table"]
    if len(tables) != 1 or not tables[0]:
        raise S2AgriInputError(
            f"parcels {redact(uri)} names no table: add ?table=NAME (or ?table=SCHEMA.NAME) to the URI"
        )
    schema, _, table = tables[0].rpartition(".")
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "table"])))
    return dsn, schema or "public", table


def split_geodb_uri(uri: str) -> tuple[str | None, str]:
    """``geodb://DATABASE/COLLECTION`` (or ``geodb:///COLLECTION``, the user's database) -> parts."""
    parts = urlsplit(uri)
    collection = parts.path.strip("/")
    if not collection or "/" in collection:
        raise S2AgriInputError(f"parcels {uri} is not geodb://DATABASE/COLLECTION: name one collection")
    return parts.netloc or None, collection


def parcels_task(parcels: ParcelsConfig) -> EOTask:
    """The EOTask writing ``vector_timeless/REFERENCE`` of a box from the parcel source."""
    kind = parcels_kind(parcels.uri)
    if kind == "geodb":
        from s2agri.tasks.sources.geodb import GeoDBParcelsTask

        database, collection = split_geodb_uri(parcels.uri)
        return GeoDBParcelsTask(
            collection,
            database=database,
            clip=parcels.clip,
            id_column=parcels.id_column,
            label_column=parcels.label_column,
        )
    if kind == "postgis":
        from s2agri.tasks.sources.postgis import PostgisParcelsTask

        dsn, schema, table = split_postgres_uri(parcels.uri)
        return PostgisParcelsTask(
            dsn, table, schema=schema, id_column=parcels.id_column, label_column=parcels.label_column
        )
    from s2agri.tasks.sources.vector import VectorParcelsTask

    path = Path(parcels.uri.removeprefix("file://"))
    return VectorParcelsTask(
        path, layer=parcels.layer, id_column=parcels.id_column, label_column=parcels.label_column
    )
