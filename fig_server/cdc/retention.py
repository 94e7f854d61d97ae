"""Hot retention: delete rows older than a table's retention from hot once cold has them.

The deletes run on a session with a replication origin, so the CDC stream recognises and
skips them: they are tiering, not user deletes. For each table, writers are blocked
(EXCLUSIVE lock, readers continue) while the WAL position is taken, CDC catches up to it
and commits to Iceberg, and the old rows are deleted: no row leaves hot before it is in cold.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from fig_server import metrics
from fig_server.cdc.control import BOUNDARY_LOCK
from fig_server.cdc.replication import session_conninfo
from fig_server.errors import ObjectNotInPrerequisiteState
from fig_server.storage.tables import str_to_lsn

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess, TieredTable

log = logging.getLogger(__name__)
APPLICATION = "fig_cdc_retention"
CATCH_UP_S = 30.0
# Comfortably above fig_server.session.federation.TieredCatalog's refresh interval.
ENDPOINT_GRACE_S = 2.0


def origin_name(slot: str) -> str:
    return f"fig_retention_{slot}"


class BoundaryBusy(ObjectNotInPrerequisiteState):
    """Federated statements hold the boundary lock: retention tries again shortly."""


# How long retention waits in the boundary lock's queue: federated statements arriving
# meanwhile queue behind it, so the wait is kept short.
BOUNDARY_WAIT = "500ms"


def take_boundary_lock(conn: psycopg.Connection) -> None:
    """The boundary lock for this transaction, exclusive, or BoundaryBusy.

    Waited for in the lock's queue: a stream of federated statements (each holds it shared
    while it runs) cannot keep it from retention for ever, as only trying it did on any busy
    table. The caller holds the table's EXCLUSIVE lock, which a session holding the boundary
    lock shared may be waiting for: that deadlock is found by this session first (a
    deadlock_timeout of 10 ms, where this role may set it), which gives way, so the user's
    statement goes on; one that joins the wait later outlasts BOUNDARY_WAIT.
    """
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (BOUNDARY_WAIT,))
    conn.execute("SELECT set_config('deadlock_timeout', '10ms', true) "
                 "WHERE current_setting('is_superuser') = 'on'")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOUNDARY_LOCK,))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
        raise BoundaryBusy("federated statements are reading the boundary") from exc
    conn.execute("SELECT set_config('lock_timeout', %s, true)",
                 (previous[0] if previous else "0",))


class RetentionRunner:
    """Owns the origin-tagged session that deletes tiered rows from hot."""

    def __init__(self, process: CdcProcess) -> None:
        self.process = process
        self.batch_rows = max(process.config.tiering.retention_batch_rows, 1)
        self.origin = origin_name(process.slot)
        self.conn = psycopg.connect(
            session_conninfo(process.dsn, application_name=APPLICATION), autocommit=True)
        self.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() AND pid <> pg_backend_pid()", (APPLICATION,))
        if not self.conn.execute("SELECT 1 FROM pg_replication_origin WHERE roname = %s",
                                 (self.origin,)).fetchone():
            self.conn.execute("SELECT pg_replication_origin_create(%s)", (self.origin,))
        self._setup_origin()

    def _setup_origin(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn.execute("SELECT pg_replication_origin_session_setup(%s)",
                                  (self.origin,))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.conn.close()

    def run_all(self) -> None:
        for table in list(self.process.tables.values()):
            if table.state == "active" and table.relid in self.process.appliers:
                try:
                    # In batches, so CDC (which skips these deletes) and writers keep going;
                    # until no old row is left (a batch may delete fewer rows than
                    # batch_rows: it ends between two time values).
                    while self._run_table_patiently(table):
                        pass
                except (psycopg.errors.LockNotAvailable, BoundaryBusy,
                        ObjectNotInPrerequisiteState) as exc:
                    log.warning("retention of %s.%s postponed: %s", table.schema, table.name,
                                exc)
                    self.process.status.table(table.relid, None, last_error=str(exc))

    def _run_table_patiently(self, table: TieredTable, attempts: int = 5) -> bool:
        """run_table, trying again when busy writers kept the table lock out of reach."""
        for attempt in range(attempts):
            try:
                return self.run_table(table)
            except (psycopg.errors.LockNotAvailable, BoundaryBusy):
                if attempt == attempts - 1:
                    raise
                self.process.pump(0.2)
        return False

    def run_table(self, table: TieredTable) -> bool:
        """Delete one batch of what the table's retention allows; whether old rows remain."""
        name = sql.Identifier(table.schema, table.name)
        # Until Fig's endpoints have seen a newly tiered table (their list refreshes every
        # REFRESH_S), they relay its statements to hot alone: that is only right while every
        # row is still in hot, so the first boundary move waits that long after tiering.
        young = self.conn.execute(
            "SELECT extract(epoch FROM tiered_at + make_interval(secs => %s) - now()) "
            "FROM fig.tiered_tables WHERE table_oid = %s", (ENDPOINT_GRACE_S, table.relid)
        ).fetchone()
        if young is not None and young[0] is not None and young[0] > 0:
            time.sleep(float(young[0]))
        with self.conn.transaction():
            self.conn.execute("SET LOCAL lock_timeout = '2s'")
            # date and timestamp time columns compare with the boundary (a timestamptz) in
            # UTC, as the planner does (planner/bounds.py boundary_value)
            self.conn.execute("SET LOCAL TimeZone = 'UTC'")
            self.conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(name))
            row = self.conn.execute(
                "SELECT now() - hot_retention > boundary, now() - hot_retention, "
                "pg_current_wal_insert_lsn()::text FROM fig.tiered_tables "
                "WHERE table_oid = %s", (table.relid,)).fetchone()
            if row is None or not row[0]:
                return False
            cutoff, target = row[1], str_to_lsn(row[2])
            time_column = sql.Identifier(table.time_column)
            more = False
            batch_end = self.conn.execute(
                sql.SQL("SELECT {c} FROM {t} WHERE {c} < %s ORDER BY {c} OFFSET %s LIMIT 1")
                .format(c=time_column, t=name), (cutoff, self.batch_rows)).fetchone()
            if batch_end is not None:
                first = self.conn.execute(sql.SQL("SELECT min({c}) FROM {t}").format(
                    c=time_column, t=name)).fetchone()
                if first is not None and batch_end[0] > first[0]:
                    cutoff = batch_end[0]  # rows before it: at most batch_rows
                    more = True
            self.wait_cold(table, target)
            # Fig's federated statements hold this shared while they read a boundary and run
            # (fig_server.session.federation), so the boundary never moves under a statement.
            take_boundary_lock(self.conn)
            deleted = self.conn.execute(sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                name, sql.Identifier(table.time_column)), (cutoff,)).rowcount
            self.conn.execute("UPDATE fig.tiered_tables SET boundary = greatest(boundary, %s) "
                              "WHERE table_oid = %s", (cutoff, table.relid))
            # after the deletes: they are tiering, not late changes
            self.process.late.track(self.conn, table.relid)
        metrics.RETENTION_RUNS.inc()
        metrics.RETENTION_ROWS.inc(deleted)
        log.info("retention %s.%s: %d rows older than %s deleted from hot", table.schema,
                 table.name, deleted, cutoff)
        return more

    def wait_cold(self, table: TieredTable, target: int) -> None:
        """Let CDC commit everything up to `target` to Iceberg (writers are blocked)."""
        process = self.process
        deadline = time.monotonic() + CATCH_UP_S
        while process.applied_lsn < target:
            if table.relid not in process.appliers:
                raise ObjectNotInPrerequisiteState("table is no longer streaming")
            if time.monotonic() > deadline:
                raise ObjectNotInPrerequisiteState(
                    "CDC did not commit the table to cold in time; hot rows kept")
            process.pump(0.05)
            if process.txn is None and process.batch.changes \
                    and process.batch.end_lsn >= target:
                process.try_flush()
            elif process.txn is None and not process.batch.changes:
                process.send_status(reply=True)  # idle: learn the server's WAL end now
