"""Writes what the CDC process is doing into fig.cdc_state and fig.table_status."""

from __future__ import annotations

import collections
import os
import time

import psycopg
from pyiceberg.table import Table

from fig_server.storage.tables import lsn_to_str


class RateWindow:
    """Rows per second over the last minute."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.events: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, rows: int) -> None:
        self.events.append((time.monotonic(), rows))

    def rate(self) -> float:
        now = time.monotonic()
        while self.events and self.events[0][0] < now - self.seconds:
            self.events.popleft()
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1.0)
        return sum(rows for _, rows in self.events) / span


class StatusWriter:
    """All writes of the CDC process to the unlogged status tables of schema fig."""

    def __init__(self, conn: psycopg.Connection, slot: str) -> None:
        self.conn = conn
        conn.execute(
            "INSERT INTO fig.cdc_state (id, slot_name, pid, updated_at) VALUES (1, %s, %s, now()) "
            "ON CONFLICT (id) DO UPDATE SET slot_name = excluded.slot_name, pid = excluded.pid, "
            "updated_at = now()", (slot, os.getpid()))

    def progress(self, applied_lsn: int, rows_total: int, rows_per_s: float,
                 last_commit_ts_us: int | None) -> None:
        self.conn.execute(
            "UPDATE fig.cdc_state SET applied_lsn = %s::pg_lsn, rows_total = %s, "
            "rows_per_s = %s, updated_at = now(), last_commit_ts = coalesce("
            "timestamptz '2000-01-01 00:00:00+00' + %s * interval '1 microsecond', "
            "last_commit_ts)", (lsn_to_str(applied_lsn), rows_total, rows_per_s,
                                last_commit_ts_us))

    def applied(self, applied_lsn: int) -> None:
        self.conn.execute("UPDATE fig.cdc_state SET applied_lsn = %s::pg_lsn",
                          (lsn_to_str(applied_lsn),))

    def committed(self) -> None:
        self.conn.execute("UPDATE fig.cdc_state SET last_commit_at = now()")

    def error(self, message: str) -> None:
        self.conn.execute("UPDATE fig.cdc_state SET last_error = %s, last_error_at = now()",
                          (message[:2000],))

    def retention_ran(self) -> None:
        self.conn.execute("UPDATE fig.cdc_state SET retention_ran_at = clock_timestamp()")

    def table(self, relid: int, table: Table | None, lsn: int | None = None, **fields: object
              ) -> None:
        values: dict[str, object] = dict(fields)
        if lsn is not None:
            values["cold_lsn"] = lsn_to_str(lsn)
            values["last_commit_at"] = "now"
        if table is not None:
            snapshot = table.current_snapshot()
            summary = snapshot.summary if snapshot and snapshot.summary else {}
            values["cold_rows"] = int(summary.get("total-records", 0) or 0)
            values["cold_files"] = int(summary.get("total-data-files", 0) or 0)
            values["cold_bytes"] = int(summary.get("total-files-size", 0) or 0)
        names = sorted(values)
        columns = ", ".join(["table_oid", *names, "updated_at"])
        params = ", ".join(["%s"] * (len(names) + 1) + ["now()"])
        updates = ", ".join([f"{n} = excluded.{n}" for n in names] + ["updated_at = now()"])
        self.conn.execute(
            f"INSERT INTO fig.table_status ({columns}) VALUES ({params}) "
            f"ON CONFLICT (table_oid) DO UPDATE SET {updates}",
            [relid, *[values[n] for n in names]])
