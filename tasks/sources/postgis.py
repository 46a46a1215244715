"""Parcel polygons from and to a PostGIS table (needs ``psycopg2``: ``pip install 's2agri[postgis]'``).

Reading (:func:`read_parcels_postgis`, :class:`PostgisParcelsTask`): the parcels of one box, as the
:data:`~s2agri.tasks.contract.REFERENCE` GeoDataFrame (``id``, ``label``, ``geometry``) in the box
CRS. One parameterised query; the candidate rows come from the GIST index of the geometry column
(``geom && <box, slightly enlarged, densified and transformed to the table SRID>``), the exact test
is ``ST_Intersects`` in the box CRS, where PostGIS also reprojects the geometries. Invalid
geometries are repaired with ``shapely.make_valid`` (polygonal parts kept, warning with the count).

Writing (:func:`upload_parcels`, :class:`UploadParcelsTask`): one transaction per call, so a
failure leaves nothing half-written. The table gets the attribute columns of the GeoDataFrame
(SQL types from the dtypes), a ``geometry(MultiPolygon, srid)`` column (polygons are promoted),
a GIST index, and ``id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY`` when the frame has no
``id`` column. ``if_exists="replace"`` fills a new table and swaps it in (drop + rename) at commit:
readers see the old rows or the new rows, never a partial table. ``"append"`` creates the table
when missing and otherwise checks the SRID and the columns. Writers of one table are serialised
with a transaction-level advisory lock.

Names (schema, table, columns) must be plain SQL identifiers (letters, digits, ``_``); they are
checked before connecting and always quoted, and values travel as query parameters. The DSN is a
libpq URI or key=value string; messages and logs show it redacted (``postgresql://user:***@host:
port/db``). Keep the password out of the DSN with ``PGPASSWORD`` or ``~/.pgpass`` where you can.
Bad names, tables, columns or values raise :class:`~s2agri.tasks.errors.S2AgriInputError`;
an unreachable server, a refused login, a time-out or a server failure raise
:class:`~s2agri.tasks.errors.S2AgriSourceError`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError

from .. import contract
from ..prediction import box_name
from ..reference import repair_parcels
from ..vectorise import PARCELS_PRED
from .parcels import resolve_bbox

try:  # the 'postgis' extra
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    from psycopg2 import sql
    from psycopg2.extras import execute_values
except ImportError:  # pragma: no cover - checked by _require()
    psycopg2 = None

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

__all__ = [
    "PostgisParcelsTask",
    "UploadParcelsTask",
    "check_identifier",
    "read_parcels_postgis",
    "redact_dsn",
    "upload_parcels",
]

LOGGER = logging.getLogger(__name__)

IfExists = Literal["fail", "replace", "append"]
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_POLYGON, _MULTIPOLYGON = 3, 6  # shapely type ids
_PAGE_SIZE = 500  # rows per INSERT statement
_LISTED = 20  # tables named in an "unknown table" message
#: Server-side limit of one SQL statement (a parcel query of a box, an upload page).
STATEMENT_TIMEOUT_S = 300.0


def _require() -> None:
    if psycopg2 is None:
        raise S2AgriInputError("PostGIS access needs psycopg2: pip install 's2agri[postgis]'")


def check_identifier(name: object, what: str) -> str:
    """``name`` if it is a plain SQL identifier, else an S2AgriInputError (nothing is executed)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        hint = "; give the schema with schema=..." if what == "table name" else ""
        raise S2AgriInputError(
            f"{what} {name!r} is not a plain SQL name: use letters, digits and '_' (at most 63, "
            f"not starting with a digit){hint}"
        )
    return name


def redact_dsn(dsn: str) -> str:
    """``postgresql://user:***@host:port/db`` of a libpq URI or key=value DSN, for messages and logs."""
    _require()
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except (psycopg2.ProgrammingError, TypeError):
        return "postgresql://<unparsable DSN>"
    user = params.get("user", "")
    secret = ":***" if "password" in params else ""
    at = "@" if user or secret else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{secret}{at}{params.get('host', '')}{port}/{params.get('dbname', '')}"


def _one_line(message: str, password: str | None = None) -> str:
    """The first line of a server message, whitespace collapsed, a password (if any) masked."""
    line = " ".join(str(message).strip().splitlines()[0].split()) if str(message).strip() else ""
    if password and len(password) >= 3:
        line = line.replace(password, "***")
    return line.removeprefix("ERROR: ").removeprefix("FATAL: ").strip()


def _connect_message(exc: Exception, where: str, password: str | None, timeout_s: int) -> str:
    detail = _one_line(str(exc), password)
    text = str(exc).lower()
    if "password authentication failed" in text or "no password supplied" in text:
        fix = "authentication failed: check the user name and password (in the DSN, PGPASSWORD or ~/.pgpass)"
    elif "timeout expired" in text:
        fix = f"no answer within {timeout_s} s: check the host, the port and the firewall, or raise connect_timeout_s"
    elif "connection refused" in text:
        fix = "connection refused: check the host and the port, and that the server runs and listens there"
    elif "could not translate host name" in text or "name or service not known" in text:
        fix = "unknown host: check the host name in the DSN"
    elif "does not exist" in text and "database" in text:
        fix = "the database does not exist: check the database name in the DSN"
    elif "no pg_hba.conf entry" in text:
        fix = "the server does not let this user/host in (pg_hba.conf): ask its administrator"
    else:
        fix = f"cannot connect ({detail}): check the DSN and that the server is reachable"
    return f"PostGIS {where}: {fix}"


@contextmanager
def _connect(
    dsn: str,
    connect_timeout_s: float,
    *,
    readonly: bool = False,
    statement_timeout_s: float | None = None,
) -> Iterator[connection]:
    """A connection (closed at the end); connection failures become one-line S2AgriSourceErrors.

    Every statement is cancelled by the server after ``statement_timeout_s`` (default
    :data:`STATEMENT_TIMEOUT_S`), and TCP keepalives
    notice a server that vanished, so no call waits for ever once connected either.
    """
    _require()
    if not isinstance(dsn, str) or not dsn.strip():
        raise S2AgriInputError("no PostGIS DSN: give a libpq URI like postgresql://user@host:5432/db")
    if not connect_timeout_s > 0:
        raise S2AgriInputError(f"connect_timeout_s={connect_timeout_s} must be positive")
    where = redact_dsn(dsn)
    try:
        password = psycopg2.extensions.parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        raise S2AgriInputError(
            f"PostGIS DSN {where} is not a libpq URI or key=value string: write postgresql://user@host:port/db"
        ) from None
    timeout = max(2, int(np.ceil(connect_timeout_s)))  # libpq's minimum is 2 s
    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=timeout,
            application_name="s2agri",
            options=f"-c statement_timeout={int((statement_timeout_s or STATEMENT_TIMEOUT_S) * 1000)}",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg2.OperationalError as exc:
        raise S2AgriSourceError(_connect_message(exc, where, password, timeout)) from None
    try:
        if readonly:
            conn.set_session(readonly=True)
        yield conn
    finally:
        conn.close()


def _server_error(exc: psycopg2.Error, where: str, action: str) -> S2AgriInputError:
    """One-line error for a failed statement; input problems are S2AgriInputError."""
    detail = _one_line(str(exc))
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return S2AgriSourceError(f"PostGIS {where}: {action}: {detail}: ask for the privileges (GRANT)")
    if isinstance(exc, psycopg2.DataError | psycopg2.IntegrityError):
        return S2AgriInputError(f"PostGIS {where}: {action}: {detail}: fix these values")
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        return S2AgriSourceError(
            f"PostGIS {where}: {action}: no result within the statement time-out ({detail}): "
            "check the server's load and the table's spatial index, then retry"
        )
    if isinstance(exc, psycopg2.OperationalError):
        return S2AgriSourceError(f"PostGIS {where}: {action}: {detail}: check the server and retry")
    return S2AgriSourceError(f"PostGIS {where}: {action}: {detail}")


@dataclass(frozen=True)
class _Table:
    """What the catalogue says about one table or view."""

    columns: dict[str, str]  #: name -> SQL type, in column order
    identity: frozenset[str]  #: GENERATED ... AS IDENTITY columns
    geometry: dict[str, tuple[int, str]]  #: geometry column -> (typmod SRID, typmod type)
    readable: bool


def _check_postgis(cur: cursor, where: str) -> None:
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'")
    if cur.fetchone() is None:
        raise S2AgriInputError(f"PostGIS {where}: the database has no PostGIS: run CREATE EXTENSION postgis")


def _describe(cur: cursor, schema: str, table: str) -> _Table | None:
    """The columns of ``schema.table`` from pg_catalog; ``None`` when there is no such relation."""
    qualified = sql.Identifier(schema, table).as_string(cur)
    cur.execute("SELECT to_regclass(%s)::oid", (qualified,))
    oid = cur.fetchone()[0]
    if oid is None:
        return None
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> '', t.typname = 'geometry',"
        " CASE WHEN t.typname = 'geometry' THEN postgis_typmod_srid(a.atttypmod) END,"
        " CASE WHEN t.typname = 'geometry' THEN postgis_typmod_type(a.atttypmod) END,"
        " has_table_privilege(a.attrelid, 'SELECT')"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,),
    )
    rows = cur.fetchall()
    return _Table(
        columns={name: kind for name, kind, *_ in rows},
        identity=frozenset(name for name, _, identity, *_ in rows if identity),
        geometry={row[0]: (int(row[4] or 0), str(row[5])) for row in rows if row[3]},
        readable=all(row[6] for row in rows),
    )


def _geometry_tables(cur: cursor) -> str:
    cur.execute(
        "SELECT DISTINCT f_table_schema, f_table_name FROM geometry_columns ORDER BY 1, 2 LIMIT %s",
        (_LISTED + 1,),
    )
    names = [f"{schema}.{table}" for schema, table in cur.fetchall()]
    if not names:
        return "none"
    return ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")


def _table_srid(cur: cursor, schema: str, table: str, column: str, typmod_srid: int) -> int | None:
    """The SRID of a geometry column: its type's, else that of its first geometry (None: no rows)."""
    if typmod_srid:
        return typmod_srid
    cur.execute(
        sql.SQL("SELECT ST_SRID({g}) FROM {t} WHERE {g} IS NOT NULL LIMIT 1").format(
            g=sql.Identifier(column), t=sql.Identifier(schema, table)
        )
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def _int_column(values: Sequence[Any]) -> pd.Series:
    """int64 when every value is an integer (SQL integer types), else the values as they came."""
    if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        return pd.Series(values, dtype=np.int64)
    return pd.Series(values, dtype=object)


def read_parcels_postgis(
    dsn: str,
    table: str,
    bbox: BBox,
    *,
    schema: str = "public",
    geometry_column: str | None = None,
    id_column: str = "id",
    label_column: str = "label",
    connect_timeout_s: float = 10.0,
) -> gpd.GeoDataFrame:
    """The parcels of ``schema.table`` that intersect ``bbox``, as ``id, label, geometry`` in the box CRS.

    ``geometry_column``: default, the table's only geometry column. ``id_column`` and
    ``label_column`` are renamed to ``id`` and ``label``. Rows come ordered by id.
    """
    schema = check_identifier(schema, "schema")
    table = check_identifier(table, "table name")
    id_column = check_identifier(id_column, "id_column")
    label_column = check_identifier(label_column, "label_column")
    if geometry_column is not None:
        geometry_column = check_identifier(geometry_column, "geometry_column")
    if not isinstance(bbox, BBox):
        raise S2AgriInputError(f"bbox must be a sentinelhub.BBox, not {type(bbox).__name__}")
    crs = bbox.crs.pyproj_crs()
    with _connect(dsn, connect_timeout_s, readonly=True) as conn:
        where = redact_dsn(dsn)
        try:
            with conn.cursor() as cur:
                _check_postgis(cur, where)
                described = _describe(cur, schema, table)
                column, table_srid = _reading_column(cur, described, schema, table, geometry_column, where)
                for option, name in (("id_column", id_column), ("label_column", label_column)):
                    if name not in described.columns:
                        raise S2AgriInputError(
                            f"PostGIS table {schema}.{table} has no column '{name}' (columns: "
                            f"{', '.join(described.columns)}): pass {option}=..."
                        )
                if table_srid is None:  # no geometry at all
                    rows: list[tuple[Any, ...]] = []
                else:
                    query, params = _select(schema, table, column, id_column, label_column, bbox, table_srid)
                    cur.execute(query, params)
                    LOGGER.debug("PostGIS query: %s", cur.query.decode())
                    rows = cur.fetchall()
        except psycopg2.Error as exc:
            raise _server_error(exc, where, f"reading {schema}.{table} failed") from exc
    parcels = gpd.GeoDataFrame(
        {"id": _int_column([row[0] for row in rows]), "label": _int_column([row[1] for row in rows])},
        geometry=gpd.GeoSeries(shapely.from_wkb([bytes(row[2]) for row in rows]), crs=crs),
        crs=crs,
    )
    parcels = repair_parcels(parcels).reset_index(drop=True)  # warns with the counts
    LOGGER.info("PostGIS %s.%s: %d parcels intersect box %r", schema, table, len(parcels), bbox)
    return parcels


def _reading_column(
    cur: cursor, described: _Table | None, schema: str, table: str, geometry_column: str | None, where: str
) -> tuple[str, int | None]:
    """The geometry column to read and its SRID, or an S2AgriInputError naming the fix."""
    if described is None:
        raise S2AgriInputError(
            f"PostGIS {where}: no table {schema}.{table}; tables with geometry: {_geometry_tables(cur)}: "
            "check the table name and schema=..."
        )
    if not described.readable:
        raise S2AgriSourceError(
            f"PostGIS {where}: no SELECT privilege on {schema}.{table}: ask for GRANT SELECT to this user"
        )
    if not described.geometry:
        raise S2AgriInputError(
            f"PostGIS table {schema}.{table} has no geometry column (columns: {', '.join(described.columns)}): "
            "give a table with a PostGIS geometry column"
        )
    names = ", ".join(described.geometry)
    if geometry_column is None:
        if len(described.geometry) > 1:
            raise S2AgriInputError(
                f"PostGIS table {schema}.{table} has several geometry columns ({names}): pass geometry_column=..."
            )
        geometry_column = next(iter(described.geometry))
    elif geometry_column not in described.geometry:
        raise S2AgriInputError(
            f"PostGIS table {schema}.{table} has no geometry column '{geometry_column}' (geometry columns: "
            f"{names}): pass one of them as geometry_column"
        )
    srid = _table_srid(cur, schema, table, geometry_column, described.geometry[geometry_column][0])
    if srid == 0:
        raise S2AgriInputError(
            f"PostGIS table {schema}.{table}: column '{geometry_column}' has no SRID: set it, e.g. "
            f"UPDATE {schema}.{table} SET {geometry_column} = ST_SetSRID({geometry_column}, 4326)"
        )
    return geometry_column, srid


def _select(
    schema: str, table: str, column: str, id_column: str, label_column: str, bbox: BBox, table_srid: int
) -> tuple[sql.Composed, tuple[Any, ...]]:
    """The parcels query and its parameters.

    The index test uses the box enlarged by 1 % and densified (32 segments a side) before it is
    transformed to the table SRID, so its bounding box holds the box's curved image; the exact test
    is done in the box CRS.
    """
    (minx, miny), (maxx, maxy) = bbox.lower_left, bbox.upper_right
    side = max(maxx - minx, maxy - miny)
    box_srid = bbox.crs.epsg
    query = sql.SQL(
        "SELECT {id}, {label}, ST_AsBinary(ST_Transform({geom}, %s)) FROM {table}"
        " WHERE {geom} && ST_Transform(ST_Segmentize(ST_Expand(ST_MakeEnvelope(%s, %s, %s, %s, %s), %s), %s), %s)"
        " AND ST_Intersects(ST_Transform({geom}, %s), ST_MakeEnvelope(%s, %s, %s, %s, %s))"
        " ORDER BY {id}"
    ).format(
        id=sql.Identifier(id_column),
        label=sql.Identifier(label_column),
        geom=sql.Identifier(column),
        table=sql.Identifier(schema, table),
    )
    envelope = (float(minx), float(miny), float(maxx), float(maxy), box_srid)
    params = (box_srid, *envelope, 0.01 * side, side / 32, table_srid, box_srid, *envelope)
    return query, params


class PostgisParcelsTask(EOTask):
    """Writes the parcels of a PostGIS table that intersect the box into ``vector_timeless/REFERENCE``.

    Configuration as :func:`read_parcels_postgis`; ``execute(eopatch=None, *, bbox=None)`` reads for
    ``bbox`` (default the EOPatch's) into the given EOPatch, or a new one with that bbox.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        schema: str = "public",
        geometry_column: str | None = None,
        id_column: str = "id",
        label_column: str = "label",
        output_feature: Feature = contract.REFERENCE,
        connect_timeout_s: float = 10.0,
    ):
        self.private_task_config.init_args["dsn"] = repr(redact_dsn(dsn))  # eo-learn reports show these
        self.dsn = dsn
        self.table = check_identifier(table, "table name")
        self.schema = check_identifier(schema, "schema")
        self.geometry_column = (
            None if geometry_column is None else check_identifier(geometry_column, "geometry_column")
        )
        self.id_column = check_identifier(id_column, "id_column")
        self.label_column = check_identifier(label_column, "label_column")
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )
        self.connect_timeout_s = connect_timeout_s

    def execute(self, eopatch: EOPatch | None = None, *, bbox: BBox | None = None) -> EOPatch:
        eopatch, bbox = resolve_bbox(eopatch, bbox)
        eopatch[self.output_feature] = read_parcels_postgis(
            self.dsn,
            self.table,
            bbox,
            schema=self.schema,
            geometry_column=self.geometry_column,
            id_column=self.id_column,
            label_column=self.label_column,
            connect_timeout_s=self.connect_timeout_s,
        )
        return eopatch


@dataclass(frozen=True)
class _Upload:
    """Parcels ready for INSERT: attribute columns with SQL types, WKB multipolygons, rows."""

    columns: dict[str, str]  #: attribute name -> SQL type
    geometry_column: str
    srid: int
    rows: list[tuple[Any, ...]]  #: attribute values, then the WKB


_INFERRED_TYPES = {
    "string": "text",
    "empty": "text",
    "integer": "bigint",
    "floating": "double precision",
    "mixed-integer-float": "double precision",
    "integer-na": "double precision",
    "decimal": "numeric",
    "boolean": "boolean",
    "datetime": "timestamp",
    "datetime64": "timestamp",
    "date": "date",
    "bytes": "bytea",
}


def _sql_type(name: str, series: pd.Series) -> str:
    """The SQL type of one attribute column; an S2AgriInputError for what has none here."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "numeric(20, 0)" if str(dtype).lower() == "uint64" else "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "real" if str(dtype).lower() == "float32" else "double precision"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamptz" if getattr(dtype, "tz", None) is not None else "timestamp"
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind in _INFERRED_TYPES and not isinstance(dtype, pd.IntervalDtype | pd.PeriodDtype):
        return _INFERRED_TYPES[kind]
    raise S2AgriInputError(
        f"parcel column '{name}' holds {kind} values, which have no SQL type here: convert it to str, int, float, bool or datetime"
    )


def _values(series: pd.Series) -> list[Any]:
    """Python values of a column (what psycopg2 adapts), missing values as None."""
    missing = series.isna().to_numpy()
    return [None if gone else value for value, gone in zip(series.tolist(), missing, strict=True)]


def _prepare(parcels: gpd.GeoDataFrame, srid: int | None) -> _Upload:
    if not isinstance(parcels, gpd.GeoDataFrame):
        raise S2AgriInputError(f"parcels must be a GeoDataFrame, not {type(parcels).__name__}")
    if parcels.crs is None:
        raise S2AgriInputError("the parcels have no CRS: set it first (parcels.set_crs(...))")
    if srid is None:
        srid = parcels.crs.to_epsg()
        if srid is None:
            raise S2AgriInputError(f"the parcels' CRS {parcels.crs.name!r} has no EPSG code: pass srid=...")
    srid = int(srid)
    if parcels.crs.to_epsg() != srid:
        parcels = parcels.to_crs(epsg=srid)
    geometry_column = check_identifier(parcels.geometry.name, "geometry column")
    names = [name for name in parcels.columns if name != geometry_column]
    for name in names:
        check_identifier(name, "parcel column")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise S2AgriInputError(f"the parcels have duplicated columns {duplicated}: rename them")
    geometries = parcels.geometry.to_numpy()
    missing = int((shapely.is_missing(geometries) | shapely.is_empty(geometries)).sum())
    if missing:
        raise S2AgriInputError(f"{missing} parcel(s) have no geometry (None or empty): drop or repair them")
    types = shapely.get_type_id(geometries)
    other = ~np.isin(types, (_POLYGON, _MULTIPOLYGON))
    if other.any():
        kinds = ", ".join(sorted({geometry.geom_type for geometry in geometries[other]}))
        raise S2AgriInputError(f"{int(other.sum())} parcel(s) are not polygons ({kinds}): keep polygons only")
    polygons = types == _POLYGON
    geometries = geometries.copy()
    geometries[polygons] = shapely.multipolygons(geometries[polygons][:, np.newaxis])
    columns = {name: _sql_type(name, parcels[name]) for name in names}
    attributes = [_values(parcels[name]) for name in names]
    wkb = shapely.to_wkb(geometries, output_dimension=2).tolist()  # a Z coordinate is dropped
    rows = [(*values, shape) for *values, shape in zip(*attributes, wkb, strict=True)]
    return _Upload(columns=columns, geometry_column=geometry_column, srid=srid, rows=rows)


def upload_parcels(
    parcels: gpd.GeoDataFrame,
    dsn: str,
    table: str,
    *,
    schema: str = "public",
    if_exists: IfExists = "fail",
    srid: int | None = None,
    connect_timeout_s: float = 10.0,
) -> int:
    """Writes ``parcels`` into ``schema.table`` in one transaction; returns the number of rows written.

    ``if_exists``: ``"fail"`` (S2AgriInputError when the table exists), ``"replace"`` (a new table
    swapped in at commit; the old table's grants are not carried over, and views on it make it
    fail) or ``"append"`` (same SRID and columns required; the table is created when missing).
    ``srid``: EPSG code of the stored geometries, default the parcels' CRS (reprojected otherwise).
    """
    if if_exists not in ("fail", "replace", "append"):
        raise S2AgriInputError(f"if_exists={if_exists!r}: give 'fail', 'replace' or 'append'")
    return _upload(parcels, dsn, table, schema, if_exists, srid, connect_timeout_s)


def _upload(
    parcels: gpd.GeoDataFrame,
    dsn: str,
    table: str,
    schema: str,
    if_exists: IfExists,
    srid: int | None,
    connect_timeout_s: float,
    *,
    replace_box: tuple[str, str] | None = None,
) -> int:
    """:func:`upload_parcels`; ``replace_box=(column, value)`` first deletes those rows (same transaction)."""
    _require()
    schema = check_identifier(schema, "schema")
    table = check_identifier(table, "table name")
    upload = _prepare(parcels, srid)
    with _connect(dsn, connect_timeout_s) as conn:
        where = redact_dsn(dsn)
        try:
            with conn, conn.cursor() as cur:  # one transaction: commit at the end, rollback on any error
                _check_postgis(cur, where)
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"s2agri:{schema}.{table}",))
                existing = _describe(cur, schema, table)
                target = table
                if existing is None:
                    _create(cur, schema, table, upload)
                elif if_exists == "fail":
                    raise S2AgriInputError(
                        f"PostGIS table {schema}.{table} exists: pass if_exists='replace' or 'append'"
                    )
                elif if_exists == "append":
                    _check_append(cur, existing, schema, table, upload)
                    if replace_box is not None:
                        column, value = replace_box
                        cur.execute(
                            sql.SQL("DELETE FROM {t} WHERE {c} = %s").format(
                                t=sql.Identifier(schema, table), c=sql.Identifier(column)
                            ),
                            (value,),
                        )
                        if cur.rowcount:
                            LOGGER.info(
                                "PostGIS %s.%s: %d rows of %s deleted", schema, table, cur.rowcount, value
                            )
                else:
                    target = f"{table[:40]}_s2agri_{uuid.uuid4().hex[:8]}"
                    _create(cur, schema, target, upload)
                _insert(cur, schema, target, upload)
                if existing is None or target != table:
                    _index(cur, schema, target, upload.geometry_column)
                if target != table:  # swap at commit: readers see the old or the new table
                    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
                    cur.execute(
                        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            sql.Identifier(schema, target), sql.Identifier(table)
                        )
                    )
                    cur.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(schema, _index_name(target, upload.geometry_column)),
                            sql.Identifier(_index_name(table, upload.geometry_column)),
                        )
                    )
        except psycopg2.Error as exc:
            raise _server_error(exc, where, f"writing {schema}.{table} failed, nothing was written") from exc
        except S2AgriInputError:
            raise
        except ValueError as exc:  # a value psycopg2 cannot send, e.g. a NUL character in a string
            raise S2AgriInputError(
                f"PostGIS {where}: writing {schema}.{table} failed, nothing was written: {_one_line(str(exc))}"
            ) from exc
    LOGGER.info(
        "PostGIS %s: %d parcels written to %s.%s (%s)",
        redact_dsn(dsn),
        len(upload.rows),
        schema,
        table,
        if_exists,
    )
    return len(upload.rows)


def _index_name(table: str, column: str) -> str:
    return f"{table}_{column}_gist"[:63]


def _create(cur: cursor, schema: str, table: str, upload: _Upload) -> None:
    parts = [] if "id" in upload.columns else [sql.SQL("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")]
    parts += [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in upload.columns.items()
    ]
    parts.append(
        sql.SQL("{} geometry(MultiPolygon, {}) NOT NULL").format(
            sql.Identifier(upload.geometry_column), sql.Literal(upload.srid)
        )
    )
    cur.execute(
        sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, table), sql.SQL(", ").join(parts))
    )


def _index(cur: cursor, schema: str, table: str, column: str) -> None:
    cur.execute(
        sql.SQL("CREATE INDEX {} ON {} USING GIST ({})").format(
            sql.Identifier(_index_name(table, column)), sql.Identifier(schema, table), sql.Identifier(column)
        )
    )


def _check_append(cur: cursor, existing: _Table, schema: str, table: str, upload: _Upload) -> None:
    columns = [
        name for name in existing.columns if name not in existing.identity and name not in existing.geometry
    ]
    if set(columns) != set(upload.columns) or upload.geometry_column not in existing.geometry:
        raise S2AgriInputError(
            f"PostGIS table {schema}.{table} has columns ({', '.join(columns)}; geometry "
            f"{', '.join(existing.geometry) or 'none'}), the parcels ({', '.join(upload.columns)}; geometry "
            f"{upload.geometry_column}): make them match, or use if_exists='replace'"
        )
    typmod_srid = existing.geometry[upload.geometry_column][0]
    table_srid = _table_srid(cur, schema, table, upload.geometry_column, typmod_srid)
    if table_srid is not None and table_srid != upload.srid:
        raise S2AgriInputError(
            f"PostGIS table {schema}.{table} has SRID {table_srid}, the parcels {upload.srid}: "
            f"pass srid={table_srid} to reproject them"
        )


def _insert(cur: cursor, schema: str, table: str, upload: _Upload) -> None:
    if not upload.rows:
        return
    names = [*upload.columns, upload.geometry_column]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    values = [sql.Placeholder()] * len(upload.columns)
    values.append(sql.SQL("ST_GeomFromWKB(%s, {})").format(sql.Literal(upload.srid)))
    template = sql.SQL("({})").format(sql.SQL(", ").join(values))
    execute_values(cur, statement, upload.rows, template=template.as_string(cur), page_size=_PAGE_SIZE)


class UploadParcelsTask(EOTask):
    """Appends a vector feature of the EOPatch (default the predicted parcels) to a PostGIS table.

    Every row gets the box name (``box_id``, else :func:`~s2agri.tasks.prediction.box_name`) in
    ``box_column``; the box's earlier rows are deleted in the same transaction, so running a box
    twice leaves one copy. The table is created on the first upload. ``srid``: as
    :func:`upload_parcels`; give one (e.g. 4326) when boxes come in several UTM zones.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        feature: Feature = PARCELS_PRED,
        *,
        schema: str = "public",
        box_column: str = "box_id",
        box_id: str | None = None,
        srid: int | None = None,
        connect_timeout_s: float = 10.0,
    ):
        self.private_task_config.init_args["dsn"] = repr(redact_dsn(dsn))  # eo-learn reports show these
        self.dsn = dsn
        self.table = check_identifier(table, "table name")
        self.schema = check_identifier(schema, "schema")
        self.feature = self.parse_feature(feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS])
        self.box_column = check_identifier(box_column, "box_column")
        self.box_id = box_id
        self.srid = srid
        self.connect_timeout_s = connect_timeout_s

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if self.feature not in eopatch:
            raise S2AgriInputError(
                f"the EOPatch has no {self.feature[0].value}/{self.feature[1]}: vectorise the prediction first"
            )
        parcels = eopatch[self.feature].copy()
        if parcels.crs is None and eopatch.bbox is not None:
            parcels = parcels.set_crs(eopatch.bbox.crs.pyproj_crs())
        box = box_name(eopatch, self.box_id)
        parcels[self.box_column] = pd.Series([box] * len(parcels), index=parcels.index, dtype=object)
        count = _upload(
            parcels,
            self.dsn,
            self.table,
            self.schema,
            "append",
            self.srid,
            self.connect_timeout_s,
            replace_box=(self.box_column, box),
        )
        LOGGER.info("box %s: %d parcels uploaded to %s.%s", box, count, self.schema, self.table)
        return eopatch
