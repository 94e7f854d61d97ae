"""The CDC process: stream pgoutput changes into Iceberg exactly once, run retention and
maintenance. `run()` is the entry point `fig serve` starts in its own process.

Exactly once: every Iceberg commit of a table records fig.lsn, the end LSN of the last
transaction it holds; a transaction is applied to a table only if its commit LSN is at or
after that table's fig.lsn (and, for a freshly copied table, if the copy's snapshot did not
already see it). The slot's flush position is reported only after the Iceberg commits, so
after SIGKILL the slot replays from at most what Iceberg lacks, and the rule skips the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from fig_server import metrics
from fig_server.cdc import pgoutput as pgo
from fig_server.cdc.applier import TableApplier, Unexpressible, column_spec
from fig_server.cdc.changes import Change, RowDelete, RowInsert, RowUpdate, TableTruncate
from fig_server.cdc.control import (
    ATTACH_LOCK,
    COLD_WRITE_LOCK,
    COMPACT_LOCK,
    RETENTION_LOCK,
    UNTIER_LOCK,
    install_control_schema,
)
from fig_server.cdc.initial_copy import CopySnapshot, copy_table, primary_key
from fig_server.cdc.replication import (
    Keepalive,
    ReplicationStream,
    ensure_slot,
    release_slot,
    session_conninfo,
)
from fig_server.cdc.spill import TxnSpill
from fig_server.cdc.status import RateWindow, StatusWriter
from fig_server.config import FigConfig
from fig_server.errors import DataException, FigError
from fig_server.storage.catalog import open_catalog
from fig_server.storage.tables import SPILL_MARK, Checkpoint, lsn_to_str, read_checkpoint
from fig_server.storage.typemap import PgColumn

log = logging.getLogger(__name__)
PERIODIC_S = 0.25
STATUS_S = 1.0
READ_LIMIT = 5000
# Longest an idle stream goes without asking the server for its WAL end.
PROBE_S = 0.2


@dataclass(frozen=True)
class TieredTable:
    relid: int
    schema: str
    name: str
    time_column: str
    retention: timedelta
    state: str

    @property
    def identifier(self) -> tuple[str, str]:
        return (self.schema, self.name)


def _spill_progress(properties: dict[str, str], mark: str) -> tuple[int, bool]:
    """For a table about to receive a spilled transaction cut as `mark` says: the index of
    the last group of it already committed (-1: none), and whether each further group must
    be written over rather than added. It must when an earlier attempt cut the transaction
    differently (spill_bytes or flush_bytes changed across a crash): some of it is in, and
    where it ends is not known in this cut, so every group is replayed, across later crashes
    too (the 'r' after the index)."""
    done, _, last = properties.get(SPILL_MARK, "").rpartition("#")
    if done.rpartition("/")[0] != mark.rpartition("/")[0]:
        return -1, False  # another transaction's mark: none of this one is in
    if done != mark:
        return -1, True
    return int(last.rstrip("r")), last.endswith("r")


@dataclass
class Txn:
    xid: int
    final_lsn: int
    commit_ts_us: int
    origin: str = ""
    changes: dict[int, list[Change]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[int, bool] = field(default_factory=dict)
    bytes: int = 0  # row text held in `changes`
    spill: TxnSpill | None = None  # earlier changes, once `bytes` passed [cdc] spill_bytes


@dataclass
class Batch:
    changes: dict[int, list[Change]] = field(default_factory=lambda: defaultdict(list))
    end_lsn: int = 0
    rows: int = 0
    bytes: int = 0
    first_at: float = 0.0
    last_commit_ts_us: int | None = None


class CdcProcess:
    """One life of the CDC process, from connecting to the first unrecoverable error."""

    def __init__(self, config: FigConfig, dsn: str) -> None:
        self.config = config
        self.dsn = dsn
        self.slot = config.cdc.slot_name
        self.publication = config.cdc.publication
        install_control_schema(dsn)
        self.conn = psycopg.connect(session_conninfo(dsn, application_name="fig_cdc"),
                                    autocommit=True)
        ensure_slot(self.conn, self.slot, self.publication)
        self.status = StatusWriter(self.conn, self.slot)
        self.catalog: Catalog = open_catalog(config)
        self.tables: dict[int, TieredTable] = {}
        self.appliers: dict[int, TableApplier] = {}
        self.checkpoints: dict[int, Checkpoint] = {}
        self.copy_snapshots: dict[int, CopySnapshot] = {}
        self.holds: dict[int, int] = {}
        self.relations: dict[int, pgo.Relation] = {}
        self.type_cache: dict[tuple[int, int], PgColumn] = {}
        self.txn: Txn | None = None
        self.batch = Batch()
        self.applied_lsn = self._slot_position()
        self.rows_total = 0
        self.rate = RateWindow()
        self.next_periodic = 0.0
        self.next_status = 0.0
        self.next_retention = time.monotonic() + config.tiering.retention_interval_s
        # When the last retention run began (Postgres's clock): a fig.run_retention() that
        # began before it was served by it, even while its lock still shows in pg_locks.
        self.retention_began: dt.datetime | None = None
        self.retry_at = 0.0
        self.in_periodic = False
        self.stream: ReplicationStream | None = None
        from fig_server.cdc.attach import Attacher
        from fig_server.cdc.cold_writes import ColdWriteHandler
        from fig_server.cdc.late import LateChanges
        from fig_server.cdc.maintenance import Maintenance
        from fig_server.cdc.restore import Restorer
        from fig_server.cdc.retention import RetentionRunner
        self.retention = RetentionRunner(self)
        self.maintenance = Maintenance(self)
        self.cold_writes = ColdWriteHandler(self)
        self.attacher = Attacher(self)
        self.restorer = Restorer(self)
        self.late = LateChanges(self)
        self.refresh_tables()
        release_slot(self.conn, self.slot)
        self.stream = ReplicationStream(dsn, self.slot, self.publication)
        self.stream.start()

    # -- positions ---------------------------------------------------------------------

    def _slot_position(self) -> int:
        row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                "WHERE slot_name = %s", (self.slot,)).fetchone()
        return pgo_lsn(row[0]) if row and row[0] else 0

    def reported_lsn(self) -> int:
        return min([self.applied_lsn, *self.holds.values()])

    last_probe = 0.0

    def send_status(self, reply: bool = False) -> None:
        """Standby status to the server; with reply, it answers at once with a keepalive
        carrying its WAL end (an idle walsender otherwise waits wal_sender_timeout / 2)."""
        if self.stream is not None:
            self.stream.send_status(self.reported_lsn(), reply)
        if self.holds and self.applied_lsn > self.published_lsn:
            # The slot stays at a paused table's position, so waiters for other tables
            # (fig._wait_cdc with rels) read how far Iceberg holds every other table here.
            self.status.applied(self.applied_lsn)
            self.published_lsn = self.applied_lsn

    published_lsn = 0  # the applied position last written to fig.cdc_state while held

    # -- tables ------------------------------------------------------------------------

    def _load_tiered(self) -> dict[int, TieredTable]:
        rows = self.conn.execute(
            "SELECT t.table_oid::bigint, t.schema_name, t.table_name, t.time_column, "
            "t.hot_retention, t.state FROM fig.tiered_tables t "
            "JOIN pg_class c ON c.oid = t.table_oid "
            "WHERE t.state <> 'attached'").fetchall()  # attached: Iceberg's, not CDC's
        return {row[0]: TieredTable(*row) for row in rows}

    def refresh_tables(self) -> None:
        """Bring appliers, publication and Iceberg in line with fig.tiered_tables."""
        wanted = self._load_tiered()
        self._handle_dropped()
        for relid in [r for r in self.tables if r not in wanted]:
            self.flush()
            self.forget(relid, drop=True)  # untiered: fig.untier_table drops the cold copy
        for relid, table in wanted.items():
            known = self.tables.get(relid)
            if table.state == "paused":
                if relid not in self.holds:
                    self.pause_loaded(table)
                continue
            if known is None or known.state != table.state or relid not in self.appliers:
                self.activate(table)
        self.maintenance.drop_unmanaged(set(wanted.values()))

    def _handle_dropped(self) -> None:
        """Tables dropped by DROP TABLE (fig._untier_dropped): forget them, and drop or keep
        their Iceberg table as configured; a kept one is no longer Fig-managed."""
        drop = self.config.tiering.drop_cold_on_drop_table
        rows = self.conn.execute(
            "SELECT table_oid::bigint, schema_name, table_name FROM fig.dropped_tables").fetchall()
        for relid, schema, name in rows:
            if relid in self.tables:
                self.flush()
                self.forget(relid, drop=drop)
            elif drop:
                self.maintenance.drop_table((schema, name))
            if not drop:
                self.maintenance.unmanage((schema, name))
            self.conn.execute("DELETE FROM fig.dropped_tables WHERE table_oid = %s", (relid,))

    def _in_publication(self, relid: int) -> bool:
        return bool(self.conn.execute(
            "SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
            "WHERE p.pubname = %s AND pr.prrelid = %s", (self.publication, relid)).fetchone())

    def activate(self, table: TieredTable) -> None:
        """Start streaming a table: reuse a finished copy in Iceberg or copy it now."""
        self.flush()
        self.tables[table.relid] = table
        self.holds.pop(table.relid, None)
        if not self._in_publication(table.relid):
            self.conn.execute(psycopg.sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                psycopg.sql.Identifier(self.publication),
                psycopg.sql.Identifier(table.schema, table.name)))
        iceberg = None
        if table.state == "active":
            try:
                iceberg = self.catalog.load_table(table.identifier)
            except NoSuchTableError:
                iceberg = None
            if iceberg is not None and not read_checkpoint(iceberg).copy_done:
                iceberg = None
        if iceberg is None:
            keep_below = self._cold_only_below(table)
            if keep_below is not None and not self.catalog.table_exists(table.identifier):
                self._pause_unloaded(table, f"its Iceberg table is missing: the rows older "
                                     f"than its tier boundary ({keep_below}) are lost")
                return
            # Its own connection: the copy holds one open COPY in a read-only snapshot while
            # progress is written through self.conn.
            try:
                with psycopg.connect(session_conninfo(self.dsn,
                                                      application_name="fig_cdc_copy"),
                                     autocommit=True) as copy_conn:
                    iceberg = copy_table(
                        copy_conn, self.catalog, table.identifier, table.relid,
                        table.time_column, self.applied_lsn,
                        lambda done, total, rate: self.status.table(
                            table.relid, None, copied_rows=done, copy_total_rows=total,
                            copy_rows_per_s=rate),
                        batch_rows=max(self.config.cdc.flush_rows, 1000) * 5,
                        keep_below=keep_below)
            except Unexpressible as exc:
                self._pause_unloaded(table, f"re-tiering keeps its rows older than the tier "
                                     f"boundary ({keep_below}) in cold, but {exc.message}")
                return
            except DataException as exc:
                self._pause_unloaded(table, f"copying it to cold: {exc.message}")
                return
        checkpoint = read_checkpoint(iceberg)
        self.checkpoints[table.relid] = checkpoint
        if checkpoint.copy_snapshot:
            self.copy_snapshots[table.relid] = CopySnapshot.parse(checkpoint.copy_snapshot)
        self.appliers[table.relid] = TableApplier(
            iceberg, primary_key(self.conn, table.relid), table.time_column)
        if table.state != "active":
            self.conn.execute("UPDATE fig.tiered_tables SET state = 'active' "
                              "WHERE table_oid = %s AND state = 'copying'", (table.relid,))
            self.tables[table.relid] = TieredTable(**{**table.__dict__, "state": "active"})
        # a boundary retention moved before late changes were tracked
        self.late.track(self.conn, table.relid, only_missing=True)
        self.status.table(table.relid, iceberg, checkpoint.lsn, last_error=None)
        log.info("streaming %s.%s from %s", table.schema, table.name, checkpoint.lsn)

    def _cold_only_below(self, table: TieredTable) -> dt.datetime | None:
        """The tier boundary when retention has left rows older than it only in cold."""
        row = self.conn.execute(
            "SELECT boundary FROM fig.tiered_tables WHERE table_oid = %s "
            "AND boundary > '-infinity'", (table.relid,)).fetchone()
        return None if row is None else row[0]

    def _pause_unloaded(self, table: TieredTable, error: str) -> None:
        """Pause a table that never started streaming: its cold rows stay as they are."""
        self.pause_loaded(TieredTable(**{**table.__dict__, "state": "paused"}))
        self._record_pause(table, error)

    def _record_pause(self, table: TieredTable, error: str) -> None:
        log.error("pausing CDC of %s.%s: %s", table.schema, table.name, error)
        metrics.CDC_ERRORS.inc()
        # the error first: fig.sync reports it as soon as it sees the state
        self.status.table(table.relid, None, last_error=error)
        self.status.error(f"{table.schema}.{table.name}: {error}")
        self.conn.execute("UPDATE fig.tiered_tables SET state = 'paused' WHERE table_oid = %s",
                          (table.relid,))

    def pause_loaded(self, table: TieredTable) -> None:
        self.tables[table.relid] = table
        self.appliers.pop(table.relid, None)
        try:
            lsn = read_checkpoint(self.catalog.load_table(table.identifier)).lsn
        except NoSuchTableError:
            lsn = self.applied_lsn
        self.holds[table.relid] = lsn

    def pause(self, relid: int, error: str) -> None:
        """Stop applying a table's changes; the slot keeps them until it is re-tiered."""
        self.flush()
        self._hold(relid, error)

    def _hold(self, relid: int, error: str) -> None:
        table = self.tables[relid]
        self.appliers.pop(relid, None)
        self.holds[relid] = self.checkpoints[relid].lsn
        self.tables[relid] = TieredTable(**{**table.__dict__, "state": "paused"})
        self._record_pause(table, error)

    def forget(self, relid: int, drop: bool) -> None:
        table = self.tables.pop(relid)
        self.appliers.pop(relid, None)
        self.holds.pop(relid, None)
        self.checkpoints.pop(relid, None)
        self.conn.execute("DELETE FROM fig.table_status WHERE table_oid = %s", (relid,))
        self.late.untrack(table.schema, table.name)
        if self._in_publication(relid):
            self.conn.execute(psycopg.sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                psycopg.sql.Identifier(self.publication),
                psycopg.sql.Identifier(table.schema, table.name)))
        if drop:
            self.maintenance.drop_table(table.identifier)

    # -- decoding ----------------------------------------------------------------------

    def skip(self, relid: int, txn: Txn) -> bool:
        """Whether Iceberg already holds this transaction's changes to the table."""
        cached = txn.skipped.get(relid)
        if cached is not None:
            return cached
        checkpoint = self.checkpoints[relid]
        snapshot = self.copy_snapshots.get(relid)
        result = txn.final_lsn < checkpoint.lsn or (
            snapshot is not None and txn.final_lsn < checkpoint.copy_lsn
            and snapshot.contains(txn.xid))
        txn.skipped[relid] = result
        return result

    def _wanted(self, relid: int) -> bool:
        return relid in self.appliers and self.txn is not None and not self.skip(relid, self.txn)

    def _row(self, relid: int, values: tuple[pgo.Value, ...]) -> dict[str, pgo.Value]:
        columns = self.relations[relid].columns
        assert self.txn is not None
        self.txn.bytes += sum(len(v) for v in values if isinstance(v, str)) + 16
        return {c.name: v for c, v in zip(columns, values, strict=True)}

    def handle(self, message: pgo.Message | None) -> None:
        if isinstance(message, pgo.Begin):
            self.txn = Txn(message.xid, message.final_lsn, message.commit_ts_us)
        elif isinstance(message, (pgo.Insert, pgo.Update, pgo.Delete, pgo.Truncate)) and \
                self.txn is not None and self.txn.origin == self.retention.origin:
            # Retention's deletes (millions of full old rows at a time) are never applied:
            # skip them as they arrive rather than buffer the whole transaction.
            return
        elif isinstance(message, pgo.Insert):
            if self._wanted(message.relid):
                self._add(message.relid, RowInsert(self._row(message.relid, message.new)))
        elif isinstance(message, pgo.Update):
            if self._wanted(message.relid):
                old = None if message.old is None else self._row(message.relid, message.old)
                self._add(message.relid, RowUpdate(old, self._row(message.relid, message.new)))
        elif isinstance(message, pgo.Delete):
            if self._wanted(message.relid):
                self._add(message.relid, RowDelete(self._row(message.relid, message.old)))
        elif isinstance(message, pgo.Commit):
            self.commit(message)
        elif isinstance(message, pgo.Relation):
            self.relations[message.relid] = message
            if self._wanted(message.relid):
                self.on_relation(message)
        elif isinstance(message, pgo.Truncate):
            for relid in message.relids:
                if self._wanted(relid):
                    self._add(relid, TableTruncate())
        elif isinstance(message, pgo.Origin) and self.txn is not None:
            self.txn.origin = message.name

    def _add(self, relid: int, change: Change) -> None:
        txn = self.txn
        assert txn is not None
        txn.changes[relid].append(change)
        if txn.bytes >= self.config.cdc.spill_bytes:
            if txn.spill is None:
                txn.spill = TxnSpill(self.config.data_dir / "cdc-spill")
                log.info("transaction %s is larger than spill_bytes: spilling", txn.xid)
            txn.spill.write(txn.changes)
            txn.changes, txn.bytes = defaultdict(list), 0

    def commit(self, message: pgo.Commit) -> None:
        txn, self.txn = self.txn, None
        metrics.CDC_TRANSACTIONS.inc()
        if txn is not None and txn.spill is not None:
            # before the batch may carry this end: its flush would confirm the transaction
            # to the slot before a chunk of it is in Iceberg
            self._apply_spilled(txn, message.end_lsn)
            return
        batch = self.batch
        batch.end_lsn = max(batch.end_lsn, message.end_lsn)
        if txn is None or txn.origin == self.retention.origin or not txn.changes:
            return
        batch.bytes += txn.bytes
        if not batch.changes:
            batch.first_at = time.monotonic()
        for relid, changes in txn.changes.items():
            batch.changes[relid].extend(changes)
            batch.rows += len(changes)
        batch.last_commit_ts_us = txn.commit_ts_us

    def _apply_spilled(self, txn: Txn, end_lsn: int) -> None:
        """Apply a spilled transaction group by group (spilled chunks read back as many at a
        time as flush_bytes holds), after every earlier one. Each group is an Iceberg commit
        that keeps the table's checkpoint (fig.lsn) where it was and marks itself
        (SPILL_MARK, in the same commit). After a crash the slot sends the whole transaction
        again: the groups a table marks as done are skipped. Should the groups differ from
        last time (spill_bytes or flush_bytes changed), each is applied replayably instead
        (written over, not duplicated). The checkpoint moves to the transaction's end only
        once every group is in."""
        assert txn.spill is not None
        self.flush()
        touched: set[int] = set()
        cdc = self.config.cdc
        per_group = max(1, cdc.flush_bytes // cdc.spill_bytes)
        mark = f"{lsn_to_str(end_lsn)}/{cdc.spill_bytes}x{per_group}"
        try:
            chunks = (*txn.spill.read(per_group), txn.changes)
            progress: dict[int, tuple[int, bool]] = {}
            for index, chunk in enumerate(chunks):
                for relid, changes in chunk.items():
                    applier = self.appliers.get(relid)
                    if applier is None or not changes:
                        continue
                    if relid not in progress:
                        progress[relid] = _spill_progress(applier.table.properties, mark)
                    done, replay = progress[relid]
                    if index <= done:
                        touched.add(relid)
                        continue  # committed before a crash
                    try:
                        applier.apply(changes, self.checkpoints[relid].lsn, replayable=replay,
                                      marks={SPILL_MARK: f"{mark}#{index}{'r' * replay}"})
                    except DataException as exc:
                        self._hold(relid, f"{exc.message} (a change in the transaction "
                                   f"ending at LSN {lsn_to_str(end_lsn)})")
                        touched.discard(relid)
                        continue
                    touched.add(relid)
                self.send_status()  # a long apply must not look like a dead client
            for relid in touched:
                applier = self.appliers[relid]
                applier.apply([], end_lsn)  # the checkpoint alone
                checkpoint = self.checkpoints[relid]
                self.checkpoints[relid] = Checkpoint(end_lsn, True, checkpoint.copy_snapshot,
                                                     checkpoint.copy_lsn)
                self.status.table(relid, applier.table, end_lsn, last_error=None)
        finally:
            txn.spill.close()
        rows = txn.spill.rows + sum(len(c) for c in txn.changes.values())
        log.info("applied spilled transaction %s: %d changes", txn.xid, rows)
        self._applied(rows)
        self.applied_lsn = max(self.applied_lsn, end_lsn)
        self.batch = Batch(end_lsn=max(self.batch.end_lsn, end_lsn),
                           last_commit_ts_us=txn.commit_ts_us)
        self.send_status()

    def _applied(self, rows: int) -> None:
        self.rows_total += rows
        self.rate.add(rows)
        metrics.CDC_ROWS.inc(rows)
        self.status.committed()

    # -- schema changes ----------------------------------------------------------------

    def _column_type(self, type_oid: int, typmod: int, name: str) -> PgColumn:
        key = (type_oid, typmod)
        if key not in self.type_cache:
            row = self.conn.execute(
                "SELECT t.typname, t.typtype, coalesce(e.typname, ''), coalesce(e.typtype, '') "
                "FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem "
                "AND t.typcategory = 'A' WHERE t.oid = %s", (type_oid,)).fetchone()
            assert row is not None
            self.type_cache[key] = PgColumn(0, "", row[0], row[1], typmod, row[2], row[3])
        base = self.type_cache[key]
        return PgColumn(0, name, base.type_name, base.typtype, typmod, base.elem_name,
                        base.elem_typtype)

    def on_relation(self, relation: pgo.Relation) -> None:
        applier = self.appliers[relation.relid]
        attnums: dict[str, int] = dict(self.conn.execute(
            "SELECT attname, attnum FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped", (relation.relid,)).fetchall())
        specs = [column_spec(column.name,
                             self._column_type(column.type_oid, column.typmod, column.name),
                             attnums.get(column.name, 0)) for column in relation.columns]
        try:
            steps = applier.plan_evolution(specs)
        except Unexpressible as exc:
            self.pause(relation.relid, exc.message)
            return
        if not steps:
            return
        self.flush()
        applier.evolve(steps)
        renames = {s.name: s.new_name for s in steps if s.kind == "rename"}
        if renames and self.txn is not None:
            self.txn.changes[relation.relid] = [
                _renamed(change, renames) for change in self.txn.changes[relation.relid]]

    # -- flushing ----------------------------------------------------------------------

    def flush_due(self, caught_up: bool = False) -> bool:
        """Flush by rows, bytes or age, and at once when the stream has nothing more: under
        light load that keeps lag to one commit; under heavy load batches grow by themselves
        while a commit runs."""
        batch, cdc = self.batch, self.config.cdc
        if not batch.changes:
            return batch.end_lsn > self.applied_lsn
        if time.monotonic() < self.retry_at:
            return False
        return (caught_up or batch.rows >= cdc.flush_rows or batch.bytes >= cdc.flush_bytes
                or time.monotonic() - batch.first_at >= cdc.flush_interval_ms / 1000)

    def flush(self) -> None:
        """Commit the batch to Iceberg, then let the slot release it."""
        batch = self.batch
        for relid in list(batch.changes):
            applier = self.appliers.get(relid)
            if applier is not None:
                try:
                    applier.apply(batch.changes[relid], batch.end_lsn)
                except DataException as exc:
                    # A value Iceberg cannot hold: this table waits (its changes stay in the
                    # slot) until it is fixed and re-tiered; the others go on.
                    self._hold(relid, f"{exc.message} (a change in the transaction ending at "
                               f"LSN {lsn_to_str(batch.end_lsn)}); fix the row in Postgres, "
                               "then call fig.tier_table again")
                    del batch.changes[relid]
                    continue
                self.checkpoints[relid] = Checkpoint(
                    batch.end_lsn, True, self.checkpoints[relid].copy_snapshot,
                    self.checkpoints[relid].copy_lsn)
                self.status.table(relid, applier.table, batch.end_lsn, last_error=None)
            del batch.changes[relid]
        if batch.rows:
            self._applied(batch.rows)
        self.applied_lsn = max(self.applied_lsn, batch.end_lsn)
        self.batch = Batch(end_lsn=batch.end_lsn, last_commit_ts_us=batch.last_commit_ts_us)
        self.send_status()

    def try_flush(self) -> None:
        try:
            self.flush()
        except (OSError, FigError, ValueError) as exc:
            # The warehouse may be unwritable for a while: keep the batch, retry later.
            log.exception("Iceberg commit failed; retrying")
            metrics.CDC_ERRORS.inc()
            self.status.error(f"Iceberg commit failed: {exc}")
            self.retry_at = time.monotonic() + 2.0

    # -- main loop ---------------------------------------------------------------------

    def backpressure(self) -> bool:
        cdc = self.config.cdc
        return self.batch.rows >= 4 * cdc.flush_rows or self.batch.bytes >= 2 * cdc.flush_bytes

    def pump(self, timeout: float) -> None:
        """Read and handle what the stream has, then flush if due."""
        assert self.stream is not None
        caught_up = False
        if not self.backpressure():
            messages = self.stream.read(timeout)
            caught_up = len(messages) < READ_LIMIT
            if not messages and self.txn is None and not self.batch.changes and \
                    time.monotonic() - self.last_probe > PROBE_S:
                # Idle: ask for the WAL end, so fig.sync and retention see WAL that carries
                # no change of ours (other databases, unpublished tables) within PROBE_S.
                self.last_probe = time.monotonic()
                self.send_status(reply=True)
            for message in messages:
                if isinstance(message, Keepalive):
                    if self.txn is None and not self.batch.changes:
                        self.batch.end_lsn = max(self.batch.end_lsn, message.wal_end)
                        if message.wal_end > self.applied_lsn or message.reply_requested:
                            self.applied_lsn = max(self.applied_lsn, message.wal_end)
                            self.send_status()
                    elif message.reply_requested:
                        self.send_status()
                    continue
                self.handle(pgo.decode(message.payload))
                if self.txn is None and self.flush_due():
                    self.try_flush()
        else:
            time.sleep(min(timeout, 0.1))
        if self.txn is None and self.flush_due(caught_up):
            self.try_flush()
        self._buffer_metrics()

    def _buffer_metrics(self) -> None:
        txn = self.txn
        open_rows = sum(len(c) for c in txn.changes.values()) if txn is not None else 0
        metrics.CDC_BUFFER_ROWS.set(self.batch.rows + open_rows)
        metrics.CDC_BUFFER_BYTES.set(self.batch.bytes + (txn.bytes if txn is not None else 0))
        spill = txn.spill if txn is not None else None
        metrics.CDC_SPILLED_BYTES.set(spill.file.tell() if spill is not None else 0)

    def periodic(self, stop_event: Any) -> None:
        now = time.monotonic()
        if self.in_periodic or self.txn is not None or now < self.next_periodic:
            return
        self.in_periodic = True
        try:
            self.next_periodic = now + PERIODIC_S
            self.refresh_tables()
            self.late.clear()
            locks = self.conn.execute(
                "SELECT l.classid::int, l.objid::bigint, a.query_start FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.classid IN (%s, %s, %s, %s, %s) AND l.granted",
                (RETENTION_LOCK, COMPACT_LOCK, COLD_WRITE_LOCK, ATTACH_LOCK, UNTIER_LOCK)
            ).fetchall()
            requests = [(c, k) for c, k, _ in locks]
            # A caller unlocks only once it sees the run it asked for: one that began before
            # the last run is still waiting for that run's stamp, not asking for another.
            retention_wanted = any(
                c == RETENTION_LOCK and (began is None or self.retention_began is None
                                         or began >= self.retention_began)
                for c, _, began in locks)
            # Cold writes first: a session waits for them with its hot statement uncommitted.
            for key in sorted({k for c, k in requests if c == COLD_WRITE_LOCK}):
                self.cold_writes.requested(key)
            self.cold_writes.pending()
            for key in sorted({k for c, k in requests if c == ATTACH_LOCK}):
                self.attacher.requested(key)
            for key in sorted({k for c, k in requests if c == UNTIER_LOCK}):
                self.restorer.requested(key)
            if retention_wanted or now >= self.next_retention:
                self.next_retention = now + self.config.tiering.retention_interval_s
                row = self.conn.execute("SELECT clock_timestamp()").fetchone()
                self.retention_began = row[0] if row else None
                self.retention.run_all()
                self.status.retention_ran()
            for key in sorted({k for c, k in requests if c == COMPACT_LOCK}):
                self.maintenance.compact_requested(key)
            self.maintenance.maybe_run()
            if now >= self.next_status:
                self.next_status = now + STATUS_S
                self.status.progress(self.applied_lsn, self.rows_total, self.rate.rate(),
                                     self.batch.last_commit_ts_us)
                self.send_status()
        finally:
            self.in_periodic = False

    def run(self, stop_event: Any) -> None:
        timeout = min(self.config.cdc.flush_interval_ms / 1000, PERIODIC_S) / 2
        while not stop_event.is_set():
            self.pump(timeout)
            self.periodic(stop_event)
        self.try_flush()

    def close(self) -> None:
        closers = [self.retention.close, self.conn.close]
        if self.stream is not None:
            closers.insert(0, self.stream.close)
        for closer in closers:
            try:
                closer()
            except Exception:  # best effort on the way out
                log.debug("close failed", exc_info=True)


def _renamed(change: Change, renames: dict[str, str]) -> Change:
    def rename(row: dict[str, pgo.Value] | None) -> dict[str, pgo.Value] | None:
        return None if row is None else {renames.get(k, k): v for k, v in row.items()}

    if isinstance(change, RowInsert):
        return RowInsert(rename(change.new) or {})
    if isinstance(change, RowUpdate):
        return RowUpdate(rename(change.old), rename(change.new) or {})
    if isinstance(change, RowDelete):
        return RowDelete(rename(change.old) or {})
    return change


def pgo_lsn(text: str) -> int:
    from fig_server.storage.tables import str_to_lsn
    return str_to_lsn(text)


def run(config: FigConfig, dsn: str, stop_event: Any) -> None:
    """The blocking CDC + retention + maintenance loop; restarts itself after errors."""
    backoff = 0.5
    while not stop_event.is_set():
        process = None
        try:
            process = CdcProcess(config, dsn)
            backoff = 0.5
            process.run(stop_event)
        except Exception as exc:  # the loop must outlive any failure
            log.exception("CDC process failed; restarting")
            _record_error(dsn, f"{type(exc).__name__}: {exc}")
            stop_event.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        finally:
            if process is not None:
                process.close()


def _record_error(dsn: str, message: str) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute("UPDATE fig.cdc_state SET last_error = %s, last_error_at = now()",
                         (message[:2000],))
    except psycopg.Error:
        log.warning("could not record CDC error: %s", message)
