"""Fig's Prometheus metrics: every metric of every process, defined once.

Each process (fig serve, the CDC process) counts into its own in-memory registry; the CDC
process writes its exposition to a file every second (write_snapshot), and fig serve's
endpoint adds those samples to its own (merged_exposition): counters and histograms sum, and
each gauge is set by one process only, so the sum is its value. Cold workers count nothing
themselves: their work comes back with the unit results and is counted by fig serve.

Labels are fixed small sets (route, command, outcome, SQLSTATE class, Iceberg operation):
never statement text, table names or other values users choose.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# `_created` series would not sum across processes, and no Fig chart uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)
COUNT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000)

# -- fig serve: clients and statements --------------------------------------------------------

CONNECTIONS = Gauge("fig_connections_open", "Client connections open now", registry=REGISTRY)
CONNECTIONS_TOTAL = Counter("fig_connections_total", "Client connections accepted",
                            registry=REGISTRY)


class BatchHistogram(Collector):
    """A histogram with one label, observed a batch of values at a time.

    Written here because prometheus_client's Histogram.observe costs 0.7-2 us a call (a lock
    per bucket), and the audit writer observes every statement, relayed ones included: at
    15,000 statements a second that was the largest piece of its thread's time under the GIL
    (with the event loop waiting). One numpy searchsorted and bincount per batch does the
    same counting.
    """

    def __init__(self, name: str, documentation: str, label: str, label_values: tuple[str, ...],
                 buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self._bounds = np.array(buckets, dtype=np.float64)
        self._bucket_names = [floatToGoString(b) for b in buckets] + ["+Inf"]
        # every label value's series from the start, at zero (as Histogram.labels() makes them)
        self._counts = {value: np.zeros(len(buckets) + 1, dtype=np.int64)
                        for value in label_values}
        self._sums = dict.fromkeys(label_values, 0.0)
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, label_value: str, values: Sequence[float]) -> None:
        """Count each value in the first bucket whose bound is >= it (Prometheus's `le`)."""
        if not values:
            return
        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"),
                             minlength=len(self._bounds) + 1)
        total = float(array.sum())
        with self._lock:
            if label_value in self._counts:
                self._counts[label_value] += counts
                self._sums[label_value] += total
            else:
                self._counts[label_value] = counts
                self._sums[label_value] = total

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            series = [(value, np.cumsum(counts), self._sums[value])
                      for value, counts in self._counts.items()]
        for value, cumulative, total in series:
            family.add_metric([value], list(zip(self._bucket_names, cumulative.tolist(),
                                                strict=True)), total)
        yield family


STATEMENT_SECONDS = BatchHistogram(
    "fig_statement_duration_seconds",
    "Time from a request's first message to its ReadyForQuery, by route (relay: no tiered "
    "table; hot, cold, split: the planner's route over tiered tables)",
    "route", ("relay", "hot", "cold", "split"), LATENCY_BUCKETS, REGISTRY)
ROWS = Counter("fig_rows_total", "Rows returned (select, fetch, copy) or changed "
               "(insert, update, delete, merge), from the command tags",
               ["command"], registry=REGISTRY)
ERRORS = Counter("fig_errors_total", "Statements that ended in an error, by SQLSTATE class "
                 "(the first two characters)", ["sqlstate_class"], registry=REGISTRY)

# -- fig serve: the cold engine ---------------------------------------------------------------

COLD_BYTES = Counter("fig_cold_bytes_total", "Parquet bytes of the candidate data files: "
                     "scanned, or skipped by pruning", ["outcome"], registry=REGISTRY)
COLD_FILES = Counter("fig_cold_files_total", "Data files scanned or skipped by pruning",
                     ["outcome"], registry=REGISTRY)
COLD_ROW_GROUPS = Counter("fig_cold_row_groups_total",
                          "Parquet row groups scanned or skipped by pruning", ["outcome"],
                          registry=REGISTRY)
COLD_MANIFESTS = Counter("fig_cold_manifests_total", "Iceberg manifests read or skipped",
                         ["outcome"], registry=REGISTRY)
COLD_ROWS_REDUCED = Counter("fig_cold_rows_reduced_total",
                            "Cold rows a filtered dimension's join keys dropped before the copy "
                            "into the session (semi-join reducers)", registry=REGISTRY)
COLD_ROWS_STREAMED = Counter("fig_cold_rows_streamed_total",
                             "Cold rows copied into the session while their scan still ran "
                             "(plain scans, bounded by [cold] stream_buffer_mb)",
                             registry=REGISTRY)
COLD_FILES_PER_QUERY = Histogram("fig_cold_files_scanned", "Data files scanned per statement",
                                 buckets=COUNT_BUCKETS, registry=REGISTRY)
COLD_ROW_GROUPS_PER_QUERY = Histogram("fig_cold_row_groups_scanned",
                                      "Row groups scanned per statement",
                                      buckets=COUNT_BUCKETS, registry=REGISTRY)
COLD_METADATA_SECONDS = Histogram(
    "fig_cold_metadata_seconds", "Time reading Iceberg metadata and pruning, per statement",
    buckets=LATENCY_BUCKETS, registry=REGISTRY)
COLD_COST = Counter("fig_cold_cost_usd_total", "Price of the bytes scanned ([audit] "
                    "price_per_gb)", registry=REGISTRY)
COLD_COST_TODAY = Gauge("fig_cold_cost_today_usd", "Price of the bytes scanned since 00:00 UTC",
                        registry=REGISTRY)
WORKERS = Gauge("fig_cold_workers", "Cold worker slots", registry=REGISTRY)
WORKERS_BUSY = Gauge("fig_cold_workers_busy", "Cold worker slots running a work unit now",
                     registry=REGISTRY)
WORK_QUEUE = Gauge("fig_cold_queue_depth", "Work units waiting for a free worker",
                   registry=REGISTRY)
COLD_UNITS_CACHED = Counter("fig_cold_units_cached_total",
                            "Cold work units answered from the result cache ([cold] "
                            "result_cache_mb): results of the same SQL over the same files",
                            registry=REGISTRY)
RESULT_CACHE_BYTES = Gauge("fig_cold_result_cache_bytes",
                           "Bytes of task results the cold engine keeps", registry=REGISTRY)
METADATA_FOOTERS = Gauge("fig_cold_footers_cached",
                         "Parquet footers the cold engine holds (read ahead at start, then "
                         "by queries)", registry=REGISTRY)
WORKER_SECONDS = Counter("fig_cold_worker_busy_seconds_total",
                         "Time worker slots spent running work units (divide the rate by "
                         "fig_cold_workers for utilization)", registry=REGISTRY)

# -- fig serve: the hot Postgres and CDC as Postgres reports them (read at each scrape) --------

CDC_LAG_SECONDS = Gauge("fig_cdc_lag_seconds", "Seconds the newest change applied to Iceberg "
                        "is behind the WAL (0 when caught up; fig.cdc_status)",
                        registry=REGISTRY)
CDC_LAG_BYTES = Gauge("fig_cdc_lag_bytes", "WAL bytes not yet confirmed applied to Iceberg",
                      registry=REGISTRY)
REPLICATION_LAG = Gauge("fig_hot_replication_lag_seconds", "Largest replay lag of the hot "
                        "Postgres's physical standbys (0 without standbys)", registry=REGISTRY)
TIERED_TABLES = Gauge("fig_tiered_tables", "Tiered tables, by state", ["state"],
                      registry=REGISTRY)
COLD_STORED_ROWS = Gauge("fig_cold_stored_rows", "Rows in the Iceberg tables of tiered tables",
                         registry=REGISTRY)
COLD_STORED_FILES = Gauge("fig_cold_stored_files", "Data files of the Iceberg tables",
                          registry=REGISTRY)
COLD_STORED_BYTES = Gauge("fig_cold_stored_bytes", "Bytes of the Iceberg tables' data files",
                          registry=REGISTRY)

# -- the CDC process ----------------------------------------------------------------------------

CDC_ROWS = Counter("fig_cdc_rows_total", "Changed rows applied to Iceberg by CDC",
                   registry=REGISTRY)
CDC_TRANSACTIONS = Counter("fig_cdc_transactions_total", "Postgres transactions decoded by CDC",
                           registry=REGISTRY)
CDC_BUFFER_ROWS = Gauge("fig_cdc_buffer_rows", "Changes held in memory, not yet in Iceberg",
                        registry=REGISTRY)
CDC_BUFFER_BYTES = Gauge("fig_cdc_buffer_bytes", "Row text held in memory, not yet in Iceberg",
                         registry=REGISTRY)
CDC_SPILLED_BYTES = Gauge("fig_cdc_spilled_bytes", "Row text of open transactions spilled to "
                          "disk", registry=REGISTRY)
CDC_ERRORS = Counter("fig_cdc_errors_total", "Iceberg commits that failed and were retried, "
                     "and tables paused", registry=REGISTRY)
ICEBERG_COMMITS = Counter("fig_iceberg_commits_total", "Iceberg table commits, by the "
                          "operation of their last snapshot", ["operation"], registry=REGISTRY)
PARQUET_FILES = Counter("fig_parquet_files_written_total", "Parquet data files added by "
                        "Iceberg commits", registry=REGISTRY)
PARQUET_BYTES = Counter("fig_parquet_bytes_written_total", "Bytes of the Parquet data files "
                        "added", registry=REGISTRY)
ICEBERG_ROWS = Counter("fig_iceberg_rows_written_total", "Rows in the Parquet data files added",
                       registry=REGISTRY)
RETENTION_RUNS = Counter("fig_retention_runs_total", "Retention passes over a tiered table",
                         registry=REGISTRY)
RETENTION_ROWS = Counter("fig_retention_rows_total", "Rows moved out of hot by retention",
                         registry=REGISTRY)
COMPACTION_RUNS = Counter("fig_compaction_runs_total", "Compactions of a tiered table's files",
                          registry=REGISTRY)


def sqlstate_class(sqlstate: str) -> str:
    """The class of a SQLSTATE, or XX for anything malformed (labels stay a small set)."""
    head = sqlstate[:2]
    return head if re.fullmatch(r"[0-9A-Z]{2}", head) else "XX"


def write_snapshot(path: Path) -> None:
    """This process's samples, as exposition text, replaced atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(generate_latest(REGISTRY))
    os.replace(temporary, path)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _merge(snapshots: Iterable[Path]) -> tuple[dict[str, Metric], dict[str, Samples]]:
    """Families by name, and their samples summed over this process and the snapshots."""
    families: dict[str, Metric] = {}
    sums: dict[str, Samples] = {}
    sources: list[Iterable[Metric]] = [REGISTRY.collect()]
    for path in snapshots:
        try:
            sources.append(text_string_to_metric_families(path.read_text()))
        except FileNotFoundError:  # that process has not written one yet
            continue
    for source in sources:
        for family in source:
            families.setdefault(family.name, family)
            totals = sums.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                totals[key] = totals.get(key, 0.0) + sample.value
    return families, sums


class _Merged(Collector):
    def __init__(self, snapshots: Iterable[Path]) -> None:
        self.snapshots = list(snapshots)

    def collect(self) -> Iterable[Metric]:
        families, sums = _merge(self.snapshots)
        for name, first in families.items():
            merged = Metric(name, first.documentation, first.type)
            for (sample_name, labels), value in sums[name].items():
                merged.add_sample(sample_name, dict(labels), value)
            yield merged


def merged_exposition(snapshots: Iterable[Path]) -> bytes:
    """The exposition fig serve's endpoint answers: its samples summed with the snapshots'."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(snapshots))
    return generate_latest(registry)


def merged_samples(snapshots: Iterable[Path]) -> Samples:
    """Every sample of the merged exposition, by (sample name, sorted labels)."""
    return {key: value for samples in _merge(snapshots)[1].values()
            for key, value in samples.items()}


def utc_day() -> int:
    """Days since the epoch in UTC: the key of 'today' for the cost gauge."""
    return int(time.time() // 86400)
