"""PostgreSQL / PostGIS connections shared by the parcel source and the parcel upload (needs ``psycopg2``:
``pip install 's2agri[postgis]'``).

Names (schema, table, columns) must be plain SQL identifiers (letters, digits, ``_``); they are
checked before connecting and always quoted, and values travel as query parameters. The DSN is a
libpq URI or key=value string; messages and logs show it redacted (``postgresql://user:***@host:
port/db``). Keep the password out of the DSN with ``PGPASSWORD`` or ``~/.pgpass`` where you can.
An unreachable server, a refused login, a time-out or a server failure raise
:class:`~s2agri.tasks.errors.S2AgriSourceError`. Readers: :mod:`s2agri.tasks.sources.postgis`;
writers: :mod:`s2agri.tasks.postgis_export`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import S2AgriInputError, S2AgriSourceError

try:  # the 'postgis' extra
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    from psycopg2 import sql
except ImportError:  # pragma: no cover - checked by require_psycopg2()
    psycopg2 = None

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

LOGGER = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
LISTED_TABLES = 20  # tables named in an "unknown table" message
#: Server-side limit of one SQL statement (a parcel query of a box, an upload page).
STATEMENT_TIMEOUT_S = 300.0


def require_psycopg2() -> None:
    if psycopg2 is None:
        raise S2AgriInputError("PostGIS access needs psycopg2: pip install 's2agri[postgis]'")


def check_identifier(name: object, what: str) -> str:
    """``name`` if it is a plain SQL identifier, else an S2AgriInputError (nothing is executed)."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        hint = "; give the schema with schema=..." if what == "table name" else ""
        raise S2AgriInputError(
            f"{what} {name!r} is not a plain SQL name: use letters, digits and '_' (at most 63, "
            f"not starting with a digit){hint}"
        )
    return name


def redact_dsn(dsn: str) -> str:
    """``postgresql://user:***@host:port/db`` of a libpq URI or key=value DSN, for messages and logs."""
    require_psycopg2()
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except (psycopg2.ProgrammingError, TypeError):
        return "postgresql://<unparsable DSN>"
    user = params.get("user", "")
    secret = ":***" if "password" in params else ""
    at = "@" if user or secret else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{secret}{at}{params.get('host', '')}{port}/{params.get('dbname', '')}"


def one_line(message: str, password: str | None = None) -> str:
    """The first line of a server message, whitespace collapsed, a password (if any) masked."""
    line = " ".join(str(message).strip().splitlines()[0].split()) if str(message).strip() else ""
    if password and len(password) >= 3:
        line = line.replace(password, "***")
    return line.removeprefix("ERROR: ").removeprefix("FATAL: ").strip()


def connect_message(exc: Exception, where: str, password: str | None, timeout_s: int) -> str:
    detail = one_line(str(exc), password)
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
def connect(
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
    require_psycopg2()
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
        raise S2AgriSourceError(connect_message(exc, where, password, timeout)) from None
    try:
        if readonly:
            conn.set_session(readonly=True)
        yield conn
    finally:
        conn.close()


def server_error(exc: psycopg2.Error, where: str, action: str) -> S2AgriInputError:
    """One-line error for a failed statement; input problems are S2AgriInputError."""
    detail = one_line(str(exc))
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
class TableInfo:
    """What the catalogue says about one table or view."""

    columns: dict[str, str]  #: name -> SQL type, in column order
    identity: frozenset[str]  #: GENERATED ... AS IDENTITY columns
    geometry: dict[str, tuple[int, str]]  #: geometry column -> (typmod SRID, typmod type)
    readable: bool


def check_postgis(cur: cursor, where: str) -> None:
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'")
    if cur.fetchone() is None:
        raise S2AgriInputError(f"PostGIS {where}: the database has no PostGIS: run CREATE EXTENSION postgis")


def describe_table(cur: cursor, schema: str, table: str) -> TableInfo | None:
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
    return TableInfo(
        columns={name: kind for name, kind, *_ in rows},
        identity=frozenset(name for name, _, identity, *_ in rows if identity),
        geometry={row[0]: (int(row[4] or 0), str(row[5])) for row in rows if row[3]},
        readable=all(row[6] for row in rows),
    )


def geometry_tables(cur: cursor) -> str:
    cur.execute(
        "SELECT DISTINCT f_table_schema, f_table_name FROM geometry_columns ORDER BY 1, 2 LIMIT %s",
        (LISTED_TABLES + 1,),
    )
    names = [f"{schema}.{table}" for schema, table in cur.fetchall()]
    if not names:
        return "none"
    return ", ".join(names[:LISTED_TABLES]) + (", ..." if len(names) > LISTED_TABLES else "")


def column_srid(cur: cursor, schema: str, table: str, column: str, typmod_srid: int) -> int | None:
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
