"""The audit writer: records queued by the sessions become JSON lines, appended to a rotated
file under <data_dir>/audit and inserted in batches into fig.query_log, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fig_server.config import AuditConfig
from fig_server.hot.query_log import QueryLogSink
from fig_server.session.audit import StatementRecord, command_rows
from fig_server.session.statement_metrics import StatementMetrics

log = logging.getLogger(__name__)

MAX_QUEUED = 100_000
MAX_BATCH = 5_000
# How often the writer takes the queued records: fig.query_log, the file and the statement
# metrics are at most this late. Every wake-up of the writer's thread takes the GIL from the
# relay; measured with pgbench -S -M extended at 16 clients, 4 rounds each (/proc CPU of the
# fig process per transaction): every 0.1 s, 34-38 us and 76-88% of a bare relay's tps;
# every 0.5 s, 34-35 us and 88-92%.
FLUSH_INTERVAL_S = 0.5
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

    def write(self, lines: list[str]) -> None:
        """Append the lines, rotating between two lines wherever the file would pass its size
        (a file holds at least one line, so a single longer line makes a bigger file)."""
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            data = line.encode() + b"\n"
            if self.max_bytes > 0 and self._size + chunk_size > 0 and \
                    self._size + chunk_size + len(data) > self.max_bytes:
                self._append(chunk)
                chunk, chunk_size = [], 0
                if self._size > 0:
                    self._rotate()
            chunk.append(data)
            chunk_size += len(data)
        self._append(chunk)

    def _append(self, chunk: list[bytes]) -> None:
        if chunk:
            data = b"".join(chunk)
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


LINE = ('{"ts":"%s",%s,"statement":%s,"route":"%s","tables":%s,"command":%s,"rows":%d,'
        '"bytes_scanned":%d,"bytes_total":%d,"manifests_kept":%d,"manifests_total":%d,'
        '"files_kept":%d,"files_total":%d,"row_groups_kept":%d,"row_groups_total":%d,'
        '"duration_ms":%.3f,"outcome":"%s","sqlstate":%s,"cost_usd":%s,"calls":%d%s}')
# The phases of a statement over tiered tables (fig.query_log's *_ms columns; NULL elsewhere).
PHASES = (',"prelude_ms":%.3f,"plan_ms":%.3f,"cold_ms":%.3f,"copy_ms":%.3f,"final_ms":%.3f'
          ',"keys_ms":%.3f')
NO_SCAN = (0,) * 8


class LineFormatter:
    """Audit records as JSON lines whose keys are fig.query_log's columns. Built by hand from
    a template: the writer formats every statement, so this is its hot loop."""

    def __init__(self, max_chars: int, price_per_gb: float) -> None:
        self.max_chars = max_chars
        self.price_per_gb = price_per_gb
        self._second = -1
        self._second_text = ""

    def lines(self, records: list[StatementRecord]) -> list[str]:
        # perf_counter times to wall-clock time, as of now (records are fractions of a
        # second old when written).
        offset = time.time() - time.perf_counter()
        return [self.line(record, offset) for record in records]

    def line(self, record: StatementRecord, offset: float) -> str:
        origin = record.origin
        if origin.prefix_of != origin.application:
            origin.prefix = json.dumps({
                "user_name": origin.user, "client_addr": origin.client,
                "application_name": origin.application, "database": origin.database},
                separators=(",", ":"))[1:-1]
            origin.prefix_of = origin.application
        text = record.text.split(b"\0", 1)[0].decode(errors="replace")[:self.max_chars]
        tables = "[]"
        scan = NO_SCAN
        cost = "0"
        phases = ""
        if record.prepared:
            stats = [s for p in record.prepared for s in p.stats]
            scan = tuple(sum(getattr(s, name) for s in stats) for name in SCAN_FIELDS)
            cost = repr(round(scan[0] / GB * self.price_per_gb, 9))
            phases = PHASES % (
                record.prelude_ms, *(sum(getattr(p, name) for p in record.prepared)
                                     for name in ("plan_ms", "cold_ms", "copy_ms")),
                (record.ended - record.forwarded) * 1000 if record.forwarded else 0.0,
                sum(p.keys_ms for p in record.prepared))
        if record.matcher is not None:
            tables = json.dumps(sorted({n.lower() for n in record.matcher.findall(text)}))
        return LINE % (
            self._timestamp(offset + record.started), origin.prefix, json.dumps(text),
            record.route, tables, json.dumps(record.command.split(b" ", 1)[0].decode(
                errors="replace")), record.total_rows(), *scan,
            (record.busy if record.calls > 1 else record.ended - record.started) * 1000,
            "error" if record.sqlstate else "ok",
            json.dumps(record.sqlstate) if record.sqlstate else "null", cost, record.calls,
            phases)

    def _timestamp(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((wall - second) * 1e6):06d}+00:00"


def group_relayed(batch: list[StatementRecord]) -> list[StatementRecord]:
    """Successful relayed requests of one session with the same text, within one flush, as
    one record: the first, with calls, rows and time summed (a busy server's audit costs a
    line per distinct statement and session every FLUSH_INTERVAL_S, not a line per call)."""
    out: list[StatementRecord] = []
    groups: dict[tuple[Any, bytes], StatementRecord] = {}
    tag_rows: dict[bytes, int] = {}  # most tags repeat: parse each once
    for record in batch:
        if record.route != "relay" or record.sqlstate:
            out.append(record)
            continue
        key = (record.origin, record.text)
        first = groups.get(key)
        if first is None:
            groups[key] = record
            out.append(record)
            continue
        if first.calls == 1:
            first.busy = first.ended - first.started
        first.calls += 1
        rows = tag_rows.get(record.command)
        if rows is None:
            rows = tag_rows[record.command] = command_rows(record.command)
        first.rows += record.rows + rows
        first.busy += record.ended - record.started
    return out


SCAN_FIELDS = ("bytes_read", "bytes_total", "manifests_kept", "manifests_total", "files_kept",
               "files_total", "row_groups_kept", "row_groups_total")


class AuditLog:
    """The server-wide audit. Sessions append records to a list (the cheapest thing the event
    loop can do per statement); a writer task takes the list every FLUSH_INTERVAL_S and hands
    it to a thread that writes the file and fig.query_log."""

    def __init__(self, config: AuditConfig, data_dir: Path, hot_dsn: str,
                 counted: StatementMetrics | None = None) -> None:
        self.config = config
        # UTF-8 needs at most 4 bytes a character: enough raw bytes for the kept characters.
        self.statement_max_bytes = max(config.statement_max_chars, 1) * 4
        # With [audit] enabled = false the records only feed the metrics.
        self.file = AuditFile(data_dir / "audit" / "audit.jsonl", config.file_max_bytes,
                              config.file_keep) if config.enabled else None
        self.sink = QueryLogSink(hot_dsn, config.query_log_max_rows) if config.enabled else None
        self.counted = counted
        self.formatter = LineFormatter(config.statement_max_chars, config.price_per_gb)
        self.records: list[StatementRecord] = []
        self.dropped = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, record: StatementRecord) -> None:
        if len(self.records) < MAX_QUEUED:
            self.records.append(record)
            return
        self.dropped += 1
        if self.dropped % 10_000 == 1:
            log.warning("audit writer behind: %d records dropped", self.dropped)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is waiting, then stop."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self._close)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_INTERVAL_S)
            batch, self.records = self.records, []
            if batch:
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception:  # the audit never takes the server down
                    log.exception("audit writer failed on %d records", len(batch))
            if self._stopping.is_set() and not self.records:
                return

    def _write(self, batch: list[StatementRecord]) -> None:
        """In a worker thread: the metrics count each record, then one JSON line per record
        (or group of relayed records) to the file, the batch to the table."""
        if self.counted is not None:
            self.counted.observe(batch)
        if self.file is None or self.sink is None:
            return
        if self.config.group_relayed:
            batch = group_relayed(batch)
        for index in range(0, len(batch), MAX_BATCH):
            lines = self.formatter.lines(batch[index:index + MAX_BATCH])
            self.file.write(lines)
            self.sink.insert(lines)

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.sink is not None:
            self.sink.close()
