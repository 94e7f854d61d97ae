"""fig.untier_table(t, cold_rows => 'restore'): rows only in cold move back to hot, then the
table is untiered, in one hot transaction.

The caller signals with a session advisory lock (class UNTIER_LOCK, key = table oid modulo
2^31 - 1) and waits until the table leaves fig.tiered_tables, or until this process records
an error for it in fig.table_status (prefixed "fig.untier_table:"). Here, in one transaction:

1. LOCK TABLE ... IN EXCLUSIVE MODE (writers wait, readers go on), then let CDC commit every
   change up to the current WAL position (a row deleted in hot must not come back);
2. the boundary lock, only tried, as retention does: no federated statement is between
   reading the boundary and finishing;
3. the Iceberg rows below the tier boundary whose key hot does not hold (hot's rows are the
   newer truth) are copied into the table, batch by batch;
4. the table's row of fig.tiered_tables is deleted; COMMIT.

A crash before COMMIT changes nothing; after it the table is plain Postgres again and
refresh_tables forgets it and drops its Iceberg copy.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa
from psycopg import sql
from pyiceberg.expressions import LessThan, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table

from fig_server.cdc.control import KEY_MODULUS
from fig_server.cdc.initial_copy import first_kept_value, primary_key
from fig_server.cdc.retention import BoundaryBusy, take_boundary_lock
from fig_server.errors import FigError
from fig_server.storage.tables import str_to_lsn
from fig_server.storage.typemap import to_copy_csv

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess, TieredTable

log = logging.getLogger(__name__)


class Restorer:
    """Moves a table's cold-only rows back to hot and untiers it, on request."""

    def __init__(self, process: CdcProcess) -> None:
        self.process = process

    def requested(self, key: int) -> None:
        for relid, table in list(self.process.tables.items()):
            if relid % KEY_MODULUS != key:
                continue
            try:
                moved = self.restore(table)
            except BoundaryBusy:
                continue  # the caller still waits: tried again at the next round
            except (FigError, OSError, ValueError, psycopg.Error) as exc:
                log.exception("restoring %s.%s to hot failed", table.schema, table.name)
                self.process.status.table(
                    relid, None, last_error=f"fig.untier_table: {type(exc).__name__}: {exc}")
                continue
            log.info("untiered %s.%s: %d cold-only rows moved back to hot", table.schema,
                     table.name, moved)
            self.process.refresh_tables()

    def restore(self, table: TieredTable) -> int:
        process = self.process
        conn = process.conn
        name = sql.Identifier(table.schema, table.name)
        applier = process.appliers.get(table.relid)
        if applier is None:
            raise RestoreRefused("the table is not streaming to cold (paused or copying): "
                                 "re-tier it first")
        moved = 0
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(name))
            row = conn.execute(
                "SELECT boundary, pg_current_wal_insert_lsn()::text FROM fig.tiered_tables "
                "WHERE table_oid = %s AND boundary > '-infinity'", (table.relid,)).fetchone()
            if row is not None:
                process.retention.wait_cold(table, str_to_lsn(row[1]))
                take_boundary_lock(conn)
                moved = self._copy_back(conn, applier.table, table, name, row[0])
            conn.execute("DELETE FROM fig.tiered_tables WHERE table_oid = %s", (table.relid,))
        return moved

    def _copy_back(self, conn: psycopg.Connection, iceberg: Table, table: TieredTable,
                   name: sql.Identifier, boundary: dt.datetime) -> int:
        """Copy the cold rows below the boundary into a scratch table, then insert those whose
        key hot does not hold (Postgres compares the keys, in their own types)."""
        iceberg.refresh()
        time_type = iceberg.schema().find_field(table.time_column).field_type
        first = first_kept_value(boundary, time_type)
        columns = [f.name for f in iceberg.schema().fields]
        listed = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        scratch = sql.Identifier("fig_restore")
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
            scratch, name))
        scan = iceberg.scan(row_filter=LessThan(term=Reference(table.time_column),
                                                value=literal(first)))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                scratch, listed)) as copy:
            for batch in scan.to_arrow_batch_reader():
                if batch.num_rows:
                    copy.write(to_copy_csv(pa.Table.from_batches([batch]).select(columns)))
        held = sql.SQL(" AND ").join(
            sql.SQL("h.{0} = s.{0}").format(sql.Identifier(k))
            for k in primary_key(conn, table.relid))
        return conn.execute(sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} s "
            "WHERE NOT EXISTS (SELECT 1 FROM ONLY {} h WHERE {})").format(
                name, listed, listed, scratch, name, held)).rowcount


class RestoreRefused(FigError):
    sqlstate = "55000"
