"""Late changes: fig.late_changes records changes cold may not hold yet, cleared once it does.

A record is written in the writer's own transaction by a trigger on a change to a row below
the tier boundary that is still in hot (fig._late_change, cdc/control.py), or by
fig.confirm_cold_write. Federated statements that see one wait for CDC before they read cold
rows. Records visible together with a WAL insert position belong to transactions that
committed before it: once CDC has committed up to it, Iceberg holds their changes. A cold
write's record goes once its request is done. Records of a table that is not streaming
(paused, copying) stay, so statements over it wait, or fail naming the pause
(fig._wait_cdc), rather than read stale cold rows; records of a table no longer tiered go.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from fig_server.storage.tables import str_to_lsn

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess

log = logging.getLogger(__name__)
TRIGGERS = ("fig_late_insert", "fig_late_update", "fig_late_delete", "fig_late_truncate")


# Applied records move to fig.late_applied (from a CTE named gone) ...
APPLIED = ("INSERT INTO fig.late_applied (table_oid, xid) "
           "SELECT table_oid, xid FROM gone WHERE xid IS NOT NULL")
# ... until no running transaction's snapshot (its xmin) is older than their writer
FORGOTTEN = ("forgotten AS (DELETE FROM fig.late_applied a WHERE NOT EXISTS (SELECT 1 FROM "
             "pg_stat_activity s WHERE age(s.backend_xmin) >= age(xid(a.xid)))) ")


class LateChanges:
    """Clears fig.late_changes as CDC commits; owns the tables' late-change triggers."""

    def __init__(self, process: CdcProcess) -> None:
        self.process = process
        # (WAL insert position, records visible with it), waiting for CDC to reach it
        self.probe: tuple[int, list[int]] | None = None

    def clear(self) -> None:
        conn, process = self.process.conn, self.process
        streaming = list(process.appliers)
        if self.probe is not None and process.applied_lsn >= self.probe[0]:
            conn.execute("WITH gone AS (DELETE FROM fig.late_changes WHERE id = ANY(%s) "
                         "AND table_oid = ANY(%s) RETURNING table_oid, xid) " + APPLIED,
                         (self.probe[1], streaming))
            self.probe = None
        # one statement per call when nothing is pending (it runs every PERIODIC_S): records
        # that need no CDC go, applied ones no running snapshot can miss are forgotten, and a
        # new probe is read in the same snapshot
        row = conn.execute(
            "WITH gone AS (DELETE FROM fig.late_changes l WHERE NOT EXISTS (SELECT 1 FROM "
            "fig.tiered_tables t WHERE t.table_oid = l.table_oid) OR EXISTS (SELECT 1 FROM "
            "fig.cold_write_requests r WHERE r.id = l.request_id AND r.done_at IS NOT NULL) "
            "RETURNING l.id, l.table_oid, l.xid), "
            "applied AS (" + APPLIED + "), " + FORGOTTEN +
            "SELECT pg_current_wal_insert_lsn()::text, array_agg(id) FROM fig.late_changes "
            "WHERE %s AND request_id IS NULL AND table_oid = ANY(%s) "
            "AND id NOT IN (SELECT id FROM gone)", (self.probe is None, streaming)).fetchone()
        if self.probe is None and row is not None and row[1]:
            self.probe = (str_to_lsn(row[0]), list(row[1]))

    def track(self, conn: psycopg.Connection, relid: int, only_missing: bool = False) -> None:
        """Make (or replace) the table's triggers for its boundary as conn sees it."""
        conn.execute("SELECT fig._track_late(table_oid::regclass, boundary, %s) "
                     "FROM fig.tiered_tables WHERE table_oid = %s", (only_missing, relid))

    def untrack(self, schema: str, name: str) -> None:
        """Drop a table's triggers once it is no longer tiered (best effort: left behind,
        they record nothing for a table that is not tiered)."""
        conn = self.process.conn
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '1s'")
                for trigger in TRIGGERS:
                    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(trigger), sql.Identifier(schema, name)))
        except psycopg.Error as exc:
            log.warning("late-change triggers of %s.%s left in place: %s", schema, name, exc)
