"""Statement metrics: each finished request's route, time, rows, SQLSTATE and cold scans, counted
into fig_server.metrics by the audit writer's thread (off the event loop)."""

from __future__ import annotations

import threading

from fig_server import metrics
from fig_server.cold.units import ScanStats
from fig_server.session.audit import StatementRecord, command_rows

GB = 1_000_000_000
READS = {b"SELECT": "select", b"FETCH": "fetch", b"COPY": "copy"}
WRITES = {b"INSERT": "insert", b"UPDATE": "update", b"DELETE": "delete", b"MERGE": "merge"}
ROUTES = {"relay": "relay", "HOT": "hot", "COLD": "cold", "SPLIT": "split"}


class StatementMetrics:
    """Counts finished requests; knows the price of a cold byte for the cost counters."""

    def __init__(self, price_per_gb: float) -> None:
        self.price_per_gb = price_per_gb
        self._lock = threading.Lock()
        self._day = metrics.utc_day()
        self._cost_today = 0.0
        # label lookups taken once: this runs for every statement
        self._rows = {verb: metrics.ROWS.labels(label)
                      for verb, label in (READS | WRITES).items()}

    def observe(self, records: list[StatementRecord]) -> None:
        """Count a batch: durations by route and rows by verb summed first, then one update
        of each metric (the writer's thread runs this for every statement, under the GIL)."""
        seconds: dict[str, list[float]] = {}
        rows: dict[bytes, int] = {}
        tags: dict[bytes, tuple[bytes, int]] = {}  # most tags repeat: parse each once
        for record in records:
            route = ROUTES.get(record.route, "split")
            durations = seconds.get(route)
            if durations is None:
                durations = seconds[route] = []
            durations.append(max(record.ended - record.started, 0.0))
            if record.sqlstate:
                metrics.ERRORS.labels(metrics.sqlstate_class(record.sqlstate)).inc()
            tag = tags.get(record.command)
            if tag is None:
                tag = tags[record.command] = (record.command.split(b" ", 1)[0],
                                              command_rows(record.command))
            count = record.rows + tag[1]
            if count:
                rows[tag[0]] = rows.get(tag[0], 0) + count
            if record.prepared:
                stats = [s for p in record.prepared for s in p.stats]
                if stats:
                    self._observe_scans(stats)
        for route, durations in seconds.items():
            metrics.STATEMENT_SECONDS.observe_many(route, durations)
        for verb, count in rows.items():
            (self._rows.get(verb) or metrics.ROWS.labels("other")).inc(count)

    def _observe_scans(self, stats: list[ScanStats]) -> None:
        total = ScanStats()  # the statement's scans summed (ScanStats.add), as EXPLAIN does
        for scan in stats:
            total.add(scan)
        read = total.bytes_read
        for counter, kept, candidates in (
                (metrics.COLD_BYTES, read, total.bytes_total),
                (metrics.COLD_FILES, total.files_kept, total.files_total),
                (metrics.COLD_ROW_GROUPS, total.row_groups_kept, total.row_groups_total),
                (metrics.COLD_MANIFESTS, total.manifests_kept, total.manifests_total)):
            counter.labels("scanned").inc(kept)
            counter.labels("skipped").inc(max(candidates - kept, 0))
        metrics.COLD_FILES_PER_QUERY.observe(total.files_kept)
        metrics.COLD_ROW_GROUPS_PER_QUERY.observe(total.row_groups_kept)
        # add() leaves plan time alone (the engine sums it per part itself)
        metrics.COLD_METADATA_SECONDS.observe(sum(s.plan_ms for s in stats) / 1000)
        cost = read / GB * self.price_per_gb
        metrics.COLD_COST.inc(cost)
        self.add_cost_today(cost)

    def add_cost_today(self, cost_usd: float) -> float:
        """Add to today's cost (0 rolls it over at 00:00 UTC); today's cost so far."""
        with self._lock:
            day = metrics.utc_day()
            if day != self._day:
                self._day, self._cost_today = day, 0.0
            self._cost_today += cost_usd
            metrics.COLD_COST_TODAY.set(self._cost_today)
            return self._cost_today
