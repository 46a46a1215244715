"""Predicted parcels to a PostGIS table (needs ``psycopg2``: ``pip install 's2agri[postgis]'``).

:func:`upload_parcels`, :class:`UploadParcelsTask`: one transaction per call, so a failure leaves
nothing half-written. The table gets the attribute columns of the GeoDataFrame (SQL types from the
dtypes), a ``geometry(MultiPolygon, srid)`` column (polygons are promoted), a GIST index, and
``id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY`` when the frame has no ``id`` column.
``if_exists="replace"`` fills a new table and swaps it in (drop + rename) at commit: readers see the
old rows or the new rows, never a partial table. ``"append"`` creates the table when missing and
otherwise checks the SRID and the columns. Writers of one table are serialised with a
transaction-level advisory lock. Names, DSNs and errors as in :mod:`s2agri.tasks.postgis_db`; bad
names, tables, columns or values raise :class:`~s2agri.tasks.errors.S2AgriInputError`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from .errors import S2AgriInputError
from .outputs import box_name
from .postgis_db import (
    TableInfo,
    check_identifier,
    check_postgis,
    column_srid,
    connect,
    describe_table,
    one_line,
    redact_dsn,
    require_psycopg2,
    server_error,
)
from .vectorise import PARCELS_PRED

try:  # the 'postgis' extra
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extras import execute_values
except ImportError:  # pragma: no cover - checked by require_psycopg2()
    psycopg2 = None

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

__all__ = ["UploadParcelsTask", "upload_parcels"]

LOGGER = logging.getLogger(__name__)

IfExists = Literal["fail", "replace", "append"]
_POLYGON, _MULTIPOLYGON = 3, 6  # shapely type ids
_PAGE_SIZE = 500  # rows per INSERT statement


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
    require_psycopg2()
    schema = check_identifier(schema, "schema")
    table = check_identifier(table, "table name")
    upload = _prepare(parcels, srid)
    with connect(dsn, connect_timeout_s) as conn:
        where = redact_dsn(dsn)
        try:
            with conn, conn.cursor() as cur:  # one transaction: commit at the end, rollback on any error
                check_postgis(cur, where)
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"s2agri:{schema}.{table}",))
                existing = describe_table(cur, schema, table)
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
            raise server_error(exc, where, f"writing {schema}.{table} failed, nothing was written") from exc
        except S2AgriInputError:
            raise
        except ValueError as exc:  # a value psycopg2 cannot send, e.g. a NUL character in a string
            raise S2AgriInputError(
                f"PostGIS {where}: writing {schema}.{table} failed, nothing was written: {one_line(str(exc))}"
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


def _check_append(cur: cursor, existing: TableInfo, schema: str, table: str, upload: _Upload) -> None:
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
    table_srid = column_srid(cur, schema, table, upload.geometry_column, typmod_srid)
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
