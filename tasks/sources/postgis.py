"""Parcel polygons from a PostGIS table (needs ``psycopg2``: ``pip install 's2agri[postgis]'``).

Reading (:func:`read_parcels_postgis`, :class:`PostgisParcelsTask`): the parcels of one box, as the
:data:`~s2agri.tasks.contract.REFERENCE` GeoDataFrame (``id``, ``label``, ``geometry``) in the box
CRS. One parameterised query; the candidate rows come from the GIST index of the geometry column
(``geom && <box, slightly enlarged, densified and transformed to the table SRID>``), the exact test
is ``ST_Intersects`` in the box CRS, where PostGIS also reprojects the geometries. Invalid
geometries are repaired with ``shapely.make_valid`` (polygonal parts kept, warning with the count).

Writing parcels to PostGIS: :mod:`s2agri.tasks.postgis_export`.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError
from s2agri.tasks.postgis_db import (
    TableInfo,
    check_identifier,
    check_postgis,
    column_srid,
    connect,
    describe_table,
    geometry_tables,
    redact_dsn,
    server_error,
)

from .. import contract
from ..reference import repair_parcels
from .parcels import resolve_bbox

try:  # the 'postgis' extra
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    from psycopg2 import sql
except ImportError:  # pragma: no cover - checked by require_psycopg2()
    psycopg2 = None

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

__all__ = ["PostgisParcelsTask", "check_identifier", "read_parcels_postgis", "redact_dsn"]

LOGGER = logging.getLogger(__name__)

_POLYGON, _MULTIPOLYGON = 3, 6  # shapely type ids


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
    with connect(dsn, connect_timeout_s, readonly=True) as conn:
        where = redact_dsn(dsn)
        try:
            with conn.cursor() as cur:
                check_postgis(cur, where)
                described = describe_table(cur, schema, table)
                column, table_srid = _reading_column(cur, described, schema, table, geometry_column, where)
                columns = described.columns if described is not None else ()  # None raised above
                for option, name in (("id_column", id_column), ("label_column", label_column)):
                    if name not in columns:
                        raise S2AgriInputError(
                            f"PostGIS table {schema}.{table} has no column '{name}' (columns: "
                            f"{', '.join(columns)}): pass {option}=..."
                        )
                if table_srid is None:  # no geometry at all
                    rows: list[tuple[Any, ...]] = []
                else:
                    query, params = _select(schema, table, column, id_column, label_column, bbox, table_srid)
                    cur.execute(query, params)
                    LOGGER.debug("PostGIS query: %s", cur.query.decode())
                    rows = cur.fetchall()
        except psycopg2.Error as exc:
            raise server_error(exc, where, f"reading {schema}.{table} failed") from exc
    parcels = gpd.GeoDataFrame(
        {"id": _int_column([row[0] for row in rows]), "label": _int_column([row[1] for row in rows])},
        geometry=gpd.GeoSeries(shapely.from_wkb([bytes(row[2]) for row in rows]), crs=crs),
        crs=crs,
    )
    parcels = repair_parcels(parcels).reset_index(drop=True)  # warns with the counts
    LOGGER.info("PostGIS %s.%s: %d parcels intersect box %r", schema, table, len(parcels), bbox)
    return parcels


def _reading_column(
    cur: cursor, described: TableInfo | None, schema: str, table: str, geometry_column: str | None, where: str
) -> tuple[str, int | None]:
    """The geometry column to read and its SRID, or an S2AgriInputError naming the fix."""
    if described is None:
        raise S2AgriInputError(
            f"PostGIS {where}: no table {schema}.{table}; tables with geometry: {geometry_tables(cur)}: "
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
    srid = column_srid(cur, schema, table, geometry_column, described.geometry[geometry_column][0])
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
