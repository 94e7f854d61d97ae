"""The audit writer: records queued by the sessions become JSON lines, appended to a rotated
file under <data_dir>/audit and inserted in batches into fig.query_log, off the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from fig_server.config import AuditConfig
from fig_server.hot.query_log import QueryLogSink
from fig_server.session.audit import StatementRecord

log = logging.getLogger(__name__)

MAX_QUEUED = 100_000
MAX_BATCH = 5_000
GB = 1_000_000_000


class AuditFile:
    """An append-only JSON-lines file, rotated to .1 ... .<keep> when it passes max_bytes."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(keep, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self.max_bytes > 0 and self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if index == self.keep:
                older.unlink(missing_ok=True)
            else:
                newer = self.path.with_name(f"{self.path.name}.{index + 1}")
                if older.exists():
                    os.replace(older, newer)
        if self.keep:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


def document(record: StatementRecord, max_chars: int, price_per_gb: float) -> dict[str, Any]:
    """The audit document of one record; its keys are fig.query_log's columns."""
    origin = record.origin
    text = record.text.split(b"\0", 1)[0].decode(errors="replace")[:max_chars]
    stats = [s for p in record.prepared for s in p.stats]
    scanned = sum(s.bytes_read for s in stats)
    tables: list[str] = []
    if record.matcher is not None:
        tables = sorted({name.lower() for name in record.matcher.findall(text)})
    return {
        "ts": dt.datetime.fromtimestamp(record.started, dt.UTC).isoformat(),
        "user_name": origin.user,
        "client_addr": origin.client,
        "application_name": origin.application,
        "database": origin.database,
        "statement": text,
        "route": record.route,
        "tables": tables,
        "command": record.command.decode(errors="replace").split(" ", 1)[0],
        "rows": record.rows,
        "bytes_scanned": scanned,
        "bytes_total": sum(s.bytes_total for s in stats),
        "manifests_kept": sum(s.manifests_kept for s in stats),
        "manifests_total": sum(s.manifests_total for s in stats),
        "files_kept": sum(s.files_kept for s in stats),
        "files_total": sum(s.files_total for s in stats),
        "row_groups_kept": sum(s.row_groups_kept for s in stats),
        "row_groups_total": sum(s.row_groups_total for s in stats),
        "duration_ms": round(record.duration_s * 1000, 3),
        "outcome": "error" if record.sqlstate else "ok",
        "sqlstate": record.sqlstate or None,
        "cost_usd": round(scanned / GB * price_per_gb, 9),
    }


class AuditLog:
    """The server-wide audit: a bounded queue the event loop only appends to, one writer."""

    def __init__(self, config: AuditConfig, data_dir: Path, hot_dsn: str) -> None:
        self.config = config
        # UTF-8 needs at most 4 bytes a character: enough raw bytes for the kept characters.
        self.statement_max_bytes = max(config.statement_max_chars, 1) * 4
        self.file = AuditFile(data_dir / "audit" / "audit.jsonl", config.file_max_bytes,
                              config.file_keep)
        self.sink = QueryLogSink(hot_dsn, config.query_log_max_rows)
        self.queue: asyncio.Queue[StatementRecord | None] = asyncio.Queue(MAX_QUEUED)
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def submit(self, record: StatementRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("audit writer behind: %d records dropped", self.dropped)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            await self.queue.put(None)
            await self._task
        await asyncio.to_thread(self._close)

    async def _run(self) -> None:
        done = False
        while not done:
            batch: list[StatementRecord] = []
            done = self._take(batch, await self.queue.get())
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:  # the audit never takes the server down
                log.exception("audit writer failed on %d records", len(batch))

    def _take(self, batch: list[StatementRecord], first: StatementRecord | None) -> bool:
        """Fill the batch from the queue; True once the end marker (None) was taken."""
        item = first
        while True:
            if item is None:
                return True
            batch.append(item)
            if len(batch) >= MAX_BATCH or self.queue.empty():
                return False
            item = self.queue.get_nowait()

    def _write(self, batch: list[StatementRecord]) -> None:
        """In a worker thread: one JSON line per record to the file, the batch to the table."""
        lines = [json.dumps(document(record, self.config.statement_max_chars,
                                     self.config.price_per_gb), separators=(",", ":"))
                 for record in batch]
        self.file.write(("\n".join(lines) + "\n").encode())
        self.sink.insert(lines)

    def _close(self) -> None:
        self.file.close()
        self.sink.close()
