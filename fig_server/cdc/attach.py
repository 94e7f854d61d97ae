"""fig.attach_iceberg: an existing Iceberg table of Fig's catalog becomes queryable by name.

The caller's session signals with an advisory lock whose key is hashtext('namespace.table')
(its own transaction is still open, so a request row would be invisible); the CDC process
finds the catalog table with that hash, creates an empty shadow table of the same columns in
Postgres (catalogs, \\d, Describe see it; a trigger refuses writes), registers it in
fig.tiered_tables with state 'attached' and boundary +infinity (every row is cold), and
stamps fig.iceberg_attachments. CDC, retention and maintenance leave attached tables alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from fig_server.errors import FeatureNotSupported, FigError

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess

log = logging.getLogger(__name__)

SCALARS: dict[type, str] = {
    BooleanType: "boolean", IntegerType: "integer", LongType: "bigint", FloatType: "real",
    DoubleType: "double precision", DateType: "date", TimeType: "time",
    TimestampType: "timestamp", TimestamptzType: "timestamptz", StringType: "text",
    UUIDType: "uuid", BinaryType: "bytea", FixedType: "bytea",
}
TIME_TYPES = ("timestamptz", "timestamp", "date")


def pg_type(ice: IcebergType, column: str) -> str:
    """The Postgres type a column of this Iceberg type is shown as."""
    if isinstance(ice, DecimalType):
        return f"numeric({ice.precision},{ice.scale})"
    if isinstance(ice, ListType):
        return pg_type(ice.element_type, column) + "[]"
    for kind, name in SCALARS.items():
        if isinstance(ice, kind):
            return name
    raise FeatureNotSupported(f'column "{column}" has Iceberg type {ice}, which Fig cannot '
                              "show as a Postgres column")


class Attacher:
    def __init__(self, process: CdcProcess) -> None:
        self.process = process

    def requested(self, key: int) -> None:
        conn = self.process.conn
        catalog = self.process.catalog
        names = [".".join(ident) for ns in catalog.list_namespaces()
                 for ident in catalog.list_tables(ns)]
        # pg_locks shows the low half of the bigint key as an unsigned objid.
        hashes = conn.execute("SELECT n, hashtext(n)::bigint & 4294967295 "
                              "FROM unnest(%s::text[]) AS n",
                              (names,)).fetchall() if names else []
        name = next((n for n, h in hashes if h == key), None)
        error = None
        if name is None:
            error = "no such table in Fig's Iceberg catalog"
        else:
            try:
                self.attach(name)
            except (FigError, psycopg.Error, OSError, ValueError) as exc:
                log.exception("attaching %s failed", name)
                error = f"{type(exc).__name__}: {exc}"
        conn.execute(
            "INSERT INTO fig.iceberg_attachments AS a (name_hash, name, done_at, error) "
            "VALUES (%s, %s, clock_timestamp(), %s) ON CONFLICT (name_hash) DO UPDATE "
            "SET name = excluded.name, done_at = excluded.done_at, error = excluded.error",
            (key - (1 << 32) if key >= 1 << 31 else key, name, error))

    def attach(self, name: str) -> None:
        namespace, _, table_name = name.rpartition(".")
        table = self.process.catalog.load_table((namespace, table_name))
        columns = [(f.name, pg_type(f.field_type, f.name)) for f in table.schema().fields]
        time_column = next((n for n, kind in columns if kind in TIME_TYPES), columns[0][0])
        shadow = sql.Identifier(namespace, table_name)
        conn = self.process.conn
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(namespace)))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(shadow, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(kind))
                for n, kind in columns)))
            conn.execute(sql.SQL(
                "COMMENT ON TABLE {} IS {}").format(shadow, sql.Literal(
                    f"Fig: rows of Iceberg table {name} (read-only)")))
            for when in ("ROW", "STATEMENT"):
                events = "INSERT OR UPDATE OR DELETE" if when == "ROW" else "TRUNCATE"
                conn.execute(sql.SQL(
                    "CREATE TRIGGER {} BEFORE {} ON {} FOR EACH {} "
                    "EXECUTE FUNCTION fig._refuse_attached_write()").format(
                        sql.Identifier(f"fig_attached_{when.lower()}"), sql.SQL(events),
                        shadow, sql.SQL(when)))
            conn.execute(
                "INSERT INTO fig.tiered_tables (table_oid, schema_name, table_name, "
                "time_column, hot_retention, boundary, state) "
                "VALUES (%s::regclass, %s, %s, %s, interval '0', 'infinity', 'attached')",
                (shadow.as_string(conn), namespace, table_name, time_column))
        log.info("attached Iceberg table %s (%d columns)", name, len(columns))
