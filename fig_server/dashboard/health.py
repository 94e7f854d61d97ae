"""The platform's health: what the hot Postgres reports (CDC lag, tiered tables, standbys, the
slowest recent statements) and what the metrics counted, sampled into an hour of history.

One HealthMonitor per fig serve. Its queries run on its own connection to the hot Postgres,
in the HTTP server's threads and in its sampling thread, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from fig_server import metrics

log = logging.getLogger(__name__)

SAMPLE_S = 5.0
HISTORY_S = 3600.0
HOT_CACHE_S = 1.0
FAST_S = 0.05  # "data in < 50 ms", the architecture document's hot-tier figure
HOT_ROUTES = ("relay", "hot")
TABLE_STATES = ("copying", "active", "paused", "attached")
COLD_ROUTES = ("cold", "split")

CDC_SQL = """
SELECT slot_active, lag_bytes::bigint AS lag_bytes, lag_seconds::float8 AS lag_seconds,
       rows_per_s, rows_total, last_commit_at, last_error, last_error_at, paused_tables
FROM fig.cdc_status
"""
TABLES_SQL = """
SELECT t.table_name, t.state, t.time_column, t.hot_retention::text AS hot_retention,
       t.tier_boundary, s.n_live_tup AS hot_rows, t.cold_rows, t.cold_files, t.cold_bytes,
       t.last_commit_at, t.last_error
FROM fig.tables t LEFT JOIN pg_stat_user_tables s ON s.relid = to_regclass(t.table_name)
ORDER BY t.table_name
"""
STANDBYS_SQL = """
SELECT coalesce(max(extract(epoch FROM r.replay_lag)), 0)::float8
FROM pg_stat_replication r
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                  WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
"""
# The newest entries only (ids are increasing): the log may hold many thousands.
SLOWEST_SQL = """
SELECT ts, user_name, route, statement, duration_ms, rows, bytes_scanned, bytes_total,
       files_kept, files_total, row_groups_kept, row_groups_total, outcome, sqlstate, cost_usd
FROM fig.query_log
WHERE id > (SELECT coalesce(max(id), 0) - 20000 FROM fig.query_log_docs)
  AND ts > now() - interval '1 hour'
ORDER BY duration_ms DESC LIMIT 8
"""
COST_TODAY_SQL = """
SELECT coalesce(sum(cost_usd), 0)::float8 FROM fig.query_log
WHERE ts >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class HealthMonitor:
    """Reads the hot Postgres on demand (cached for a second) and samples the metrics every
    SAMPLE_S into HISTORY_S of points for the dashboard's charts."""

    def __init__(self, hot_dsn: str, snapshots: list[Path], audit: bool,
                 cost_today: Callable[[float], float]) -> None:
        self.hot_dsn = hot_dsn
        self.snapshots = snapshots
        self.audit = audit
        self.cost_today = cost_today  # adds to today's cost; returns it
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._hot: dict[str, Any] = {}
        self._hot_at = 0.0
        self._samples: deque[tuple[float, Samples]] = deque()
        self._points: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fig-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self) -> None:
        if self.audit:
            try:  # today's cost spent before this server started
                rows = self._query(COST_TODAY_SQL)
                self.cost_today(float(rows[0][0]))
            except psycopg.Error as exc:
                log.warning("health: could not read today's cost from fig.query_log: %s", exc)
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # the monitor never takes the server down
                log.exception("health sampling failed")
            self._stop.wait(SAMPLE_S)

    # -- the hot Postgres --------------------------------------------------------------

    def _query(self, text: str, rows_as_dicts: bool = False) -> list[Any]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(
                            self.hot_dsn, autocommit=True, connect_timeout=5,
                            application_name="fig_health")
                        self._conn.execute("SET statement_timeout = '5s'")
                    cursor = self._conn.cursor(row_factory=dict_row) if rows_as_dicts \
                        else self._conn.cursor()
                    return cursor.execute(text).fetchall()
                except psycopg.OperationalError:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        return []

    def hot(self) -> dict[str, Any]:
        """What Postgres reports now (at most HOT_CACHE_S old); sets the gauges read from it."""
        if time.monotonic() - self._hot_at < HOT_CACHE_S and self._hot:
            return self._hot
        state: dict[str, Any] = {"error": None}
        try:
            cdc = self._query(CDC_SQL, rows_as_dicts=True)
            state["cdc"] = cdc[0] if cdc else None
            state["tables"] = self._query(TABLES_SQL, rows_as_dicts=True)
            state["standby_lag_s"] = self._query(STANDBYS_SQL)[0][0]
            state["slowest"] = self._query(SLOWEST_SQL, rows_as_dicts=True) \
                if self.audit else []
        except psycopg.Error as exc:
            state.update(cdc=None, tables=[], standby_lag_s=0.0, slowest=[],
                         error=f"hot Postgres: {exc}".strip())
        cdc_row = state["cdc"] or {}
        metrics.CDC_LAG_SECONDS.set(float(cdc_row.get("lag_seconds") or 0.0))
        metrics.CDC_LAG_BYTES.set(max(int(cdc_row.get("lag_bytes") or 0), 0))
        metrics.REPLICATION_LAG.set(float(state["standby_lag_s"] or 0.0))
        tables = state["tables"]
        counts = dict.fromkeys(TABLE_STATES, 0)
        for row in tables:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        for name, count in counts.items():  # set, never cleared: a scrape sees all or none
            metrics.TIERED_TABLES.labels(name).set(count)
        for gauge, key in ((metrics.COLD_STORED_ROWS, "cold_rows"),
                           (metrics.COLD_STORED_FILES, "cold_files"),
                           (metrics.COLD_STORED_BYTES, "cold_bytes")):
            gauge.set(sum(int(row[key] or 0) for row in tables))
        metrics.COLD_COST_TODAY.set(self.cost_today(0.0))
        self._hot, self._hot_at = state, time.monotonic()
        return state

    # -- metrics and history -----------------------------------------------------------

    def exposition(self) -> bytes:
        self.hot()
        return metrics.merged_exposition(self.snapshots)

    def sample(self) -> None:
        self.hot()
        now = time.time()
        samples = metrics.merged_samples(self.snapshots)
        with self._lock:
            if self._samples:
                before, previous = self._samples[-1]
                self._points.append(_point(now, now - before, samples, previous))
            self._samples.append((now, samples))
            while self._samples and self._samples[0][0] < now - HISTORY_S:
                self._samples.popleft()
            while self._points and self._points[0]["t"] < now - HISTORY_S:
                self._points.popleft()

    def health(self) -> dict[str, Any]:
        """The dashboard's and `fig status`'s document."""
        hot = self.hot()
        now = time.time()
        samples = metrics.merged_samples(self.snapshots)
        with self._lock:
            since, oldest = self._samples[0] if self._samples else (now, {})
            points = list(self._points)
        window = _window(samples, oldest)
        cdc = hot.get("cdc") or {}
        busy, slots = samples.get(("fig_cold_workers_busy", ()), 0.0), \
            samples.get(("fig_cold_workers", ()), 0.0)
        summary = {
            "window_s": round(now - since, 1),
            "hot_statements": window["hot_count"],
            "hot_fast_pct": _percent(window["hot_fast"], window["hot_count"]),
            "hot_p50_ms": _ms(window["hot_p50"]), "hot_p95_ms": _ms(window["hot_p95"]),
            "hot_p99_ms": _ms(window["hot_p99"]),
            "cdc_lag_s": cdc.get("lag_seconds"), "cdc_lag_bytes": cdc.get("lag_bytes"),
            "cdc_rows_per_s": cdc.get("rows_per_s"), "cdc_slot_active": cdc.get("slot_active"),
            "cdc_error": cdc.get("last_error"), "paused_tables": cdc.get("paused_tables"),
            "cold_statements": window["cold_count"],
            "cold_avg_s": window["cold_avg"],
            "pruned_pct": _percent(window["bytes_skipped"],
                                   window["bytes_skipped"] + window["bytes_scanned"]),
            "workers_busy": int(busy), "workers": int(slots),
            "cost_today_usd": round(self.cost_today(0.0), 9),
            "connections": int(samples.get(("fig_connections_open", ()), 0.0)),
            "standby_lag_s": hot.get("standby_lag_s"),
        }
        return {"generated_at": now, "summary": summary, "tables": hot.get("tables", []),
                "slowest": hot.get("slowest", []), "history": points,
                "error": hot.get("error")}


def _delta(now: Samples, before: Samples, name: str,
           keep: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
    total = 0.0
    for (sample, labels), value in now.items():
        if sample == name and keep(dict(labels)):
            total += value - before.get((sample, labels), 0.0)
    return total


def _buckets(now: Samples, before: Samples, routes: tuple[str, ...]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the statement-time histogram over the routes."""
    bounds: dict[float, float] = {}
    for (sample, labels), value in now.items():
        label = dict(labels)
        if sample == "fig_statement_duration_seconds_bucket" and label.get("route") in routes:
            bound = float(label["le"])
            bounds[bound] = bounds.get(bound, 0.0) + value - before.get((sample, labels), 0.0)
    return sorted(bounds.items())


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket holding the q-th value."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _window(now: Samples, before: Samples) -> dict[str, Any]:
    def hot(labels: dict[str, str]) -> bool:
        return labels.get("route") in HOT_ROUTES

    def cold(labels: dict[str, str]) -> bool:
        return labels.get("route") in COLD_ROUTES

    buckets = _buckets(now, before, HOT_ROUTES)
    fast = next((count for bound, count in buckets if bound >= FAST_S), 0.0)
    cold_count = _delta(now, before, "fig_statement_duration_seconds_count", cold)
    cold_sum = _delta(now, before, "fig_statement_duration_seconds_sum", cold)
    return {
        "hot_count": int(_delta(now, before, "fig_statement_duration_seconds_count", hot)),
        "hot_fast": fast,
        "hot_p50": _quantile(0.5, buckets), "hot_p95": _quantile(0.95, buckets),
        "hot_p99": _quantile(0.99, buckets),
        "cold_count": int(cold_count),
        "cold_avg": round(cold_sum / cold_count, 4) if cold_count else None,
        "bytes_scanned": _delta(now, before, "fig_cold_bytes_total",
                                lambda labels: labels.get("outcome") == "scanned"),
        "bytes_skipped": _delta(now, before, "fig_cold_bytes_total",
                                lambda labels: labels.get("outcome") == "skipped"),
    }


def _point(now: float, span: float, samples: Samples, previous: Samples) -> dict[str, Any]:
    """One chart point: what happened between two samples, and the gauges now."""
    window = _window(samples, previous)
    span = max(span, 1e-6)
    return {
        "t": round(now, 3),
        "hot_qps": round(window["hot_count"] / span, 3),
        "hot_p50_ms": _ms(window["hot_p50"]), "hot_p95_ms": _ms(window["hot_p95"]),
        "hot_p99_ms": _ms(window["hot_p99"]),
        "cold_qps": round(window["cold_count"] / span, 3),
        "cold_avg_s": window["cold_avg"],
        "pruned_pct": _percent(window["bytes_skipped"],
                               window["bytes_skipped"] + window["bytes_scanned"]),
        "cdc_lag_s": samples.get(("fig_cdc_lag_seconds", ()), 0.0),
        "cdc_rows_per_s": round(_delta(samples, previous, "fig_cdc_rows_total") / span, 3),
        "workers_busy": samples.get(("fig_cold_workers_busy", ()), 0.0),
        "cost_today_usd": samples.get(("fig_cold_cost_today_usd", ()), 0.0),
    }


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
