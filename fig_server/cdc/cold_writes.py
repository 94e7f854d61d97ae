"""Applies UPDATE/DELETE requests for rows that exist only in cold, inside the CDC process.

Two phases. The server stages the rows (fig.request_cold_write, committed on its own), runs
the statement on hot and confirms the request in that same transaction
(fig.confirm_cold_write); only confirmed requests are applied, so a hot transaction that
fails leaves cold as it was. After COMMIT the server waits (fig.wait_cold_write, which
signals with an advisory lock); a confirmed request nobody waits for (the server died after
COMMIT) is found by `pending` and applied all the same. A failed attempt is recorded and
tried again: the hot side is committed, so the cold side must follow.

Applying here, between CDC batches and after flushing every change streamed so far, keeps
Iceberg commits in one sequence: each request is one Iceberg commit that carries the table's
current fig.lsn unchanged, so the exactly-once checkpoint never moves for it. Requests hold
final values (old rows to delete, new rows to write), and an UPDATE deletes its key at the
old and at the new time, so applying one twice after a crash gives the same table.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg

from fig_server.cdc.changes import Change, RowDelete, RowInsert
from fig_server.cdc.control import KEY_MODULUS
from fig_server.errors import FigError
from fig_server.storage.tables import read_checkpoint

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess

log = logging.getLogger(__name__)
RETRY_S = 5.0


class ColdWriteHandler:
    """Finds the requests a waiting session signalled and commits them to Iceberg."""

    def __init__(self, process: CdcProcess) -> None:
        self.process = process
        self.retry_at = 0.0  # after a failed attempt, pending() waits a little


    def pending(self) -> None:
        """Apply every confirmed request not yet applied, waited for or not; forget requests
        whose hot transaction never committed."""
        if time.monotonic() < self.retry_at:
            return
        conn = self.process.conn
        conn.execute("DELETE FROM fig.cold_write_requests WHERE NOT confirmed "
                     "AND requested_at < now() - interval '1 day'")
        keys = conn.execute(
            "SELECT DISTINCT id %% %s FROM fig.cold_write_requests "
            "WHERE done_at IS NULL AND confirmed", (KEY_MODULUS,)).fetchall()
        for (key,) in keys:
            self.requested(int(key))

    def requested(self, key: int) -> None:
        rows = self.process.conn.execute(
            "SELECT id, table_oid::bigint, kind, columns FROM fig.cold_write_requests "
            "WHERE done_at IS NULL AND confirmed AND id %% %s = %s ORDER BY id",
            (KEY_MODULUS, key)).fetchall()
        for request_id, relid, kind, columns in rows:
            try:
                applied = self.apply(relid, request_id, kind, list(columns))
            except (FigError, OSError, ValueError, psycopg.Error) as exc:
                log.exception("cold write request %s failed; it is tried again", request_id)
                self.retry_at = time.monotonic() + RETRY_S
                self.process.conn.execute(
                    "UPDATE fig.cold_write_requests SET error = %s WHERE id = %s",
                    (f"{type(exc).__name__}: {exc}", request_id))
                return  # later requests of the table wait: they are applied in order
            self.process.conn.execute(
                "UPDATE fig.cold_write_requests SET done_at = clock_timestamp(), "
                "applied_rows = %s, error = NULL WHERE id = %s", (applied, request_id))
            self.process.conn.execute(
                "DELETE FROM fig.cold_write_rows WHERE request_id = %s", (request_id,))

    def apply(self, relid: int, request_id: int, kind: str, columns: list[str]) -> int:
        process = self.process
        process.flush()  # every change streamed before this request is in Iceberg first
        applier = process.appliers.get(relid)
        if applier is None:
            raise ObjectNotStreaming(f"table {relid} is not streaming to cold (paused, "
                                     "copying or untiered)")
        known = {f.name for f in applier.fields()}
        rows = process.conn.execute(
            "SELECT old_time, row_values FROM fig.cold_write_rows WHERE request_id = %s",
            (request_id,)).fetchall()
        missing = [i for i, name in enumerate(columns) if name not in known]
        if kind == "UPDATE" and any(values[i] is not None for _, values in rows
                                    for i in missing):
            # A column added in Postgres reaches Iceberg with the table's next streamed
            # change; writing its values before that would lose them.
            raise ObjectNotStreaming("the cold table does not have every column yet: retry "
                                     "once a change to the table has streamed (fig.sync)")
        changes: list[Change] = []
        for old_time, values in rows:
            row = {name: value for name, value in zip(columns, values, strict=True)
                   if name in known}
            if kind == "DELETE":
                changes.append(RowDelete(row))
            else:
                key = {k: row[k] for k in applier.primary_key}
                # the key at its old time and at its new one: a replay after a crash finds
                # the row where the first application moved it
                changes.append(RowDelete({**key, applier.time_column: old_time}))
                changes.append(RowDelete({**key, applier.time_column:
                                          row.get(applier.time_column)}))
                changes.append(RowInsert(row))
        lsn = read_checkpoint(applier.table).lsn
        applier.apply(changes, lsn)
        process.status.table(relid, applier.table, lsn, last_error=None)
        log.info("cold write request %s: %s of %d rows", request_id, kind, len(changes))
        return len(changes)


class ObjectNotStreaming(FigError):
    sqlstate = "55000"
