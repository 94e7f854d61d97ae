"""Prometheus metrics of a real Fig: after a scripted workload (hot statements, an error, CDC
inserts, a cold statement, a retention run) the endpoint's counters and histograms moved by the
expected amounts, read with prometheus_client's own parser."""

from __future__ import annotations

import datetime as dt
import re
import time
import urllib.request
from collections.abc import Callable, Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FigProcess, start_fig

PRICE_PER_GB = 1000.0
WORKERS = 2
OLD = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={"FIG__AUDIT__PRICE_PER_GB": str(PRICE_PER_GB),
                            "FIG__COLD__WORKERS": str(WORKERS)})
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("create table ev (id bigint primary key, ts timestamptz not null, "
                         "v int)")
            # old rows: copied to Iceberg when tiered, moved out of hot by the test's retention
            conn.execute("insert into ev select g, %s::timestamptz + g * interval '1 minute', g "
                         "from generate_series(1, 120) g", (OLD,))
            conn.execute("select fig.tier_table('ev', 'ts', interval '10 days')")
            conn.execute("select fig.sync()")
        # the CDC process's counters reach the endpoint within a second: the copy's first
        wait_for(server, lambda s: value(s, "fig_iceberg_rows_written_total") >= 120)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def scrape(fig: FigProcess) -> Samples:
    assert fig.metrics_url is not None
    with urllib.request.urlopen(fig.metrics_url + "metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(fig: FigProcess, ready: Callable[[Samples], bool], timeout: float = 20.0
             ) -> Samples:
    """Scrape until `ready` holds: statement metrics are counted every 0.5 s, the CDC
    process's reach the endpoint every second."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(fig)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_workload_moves_each_metric_by_what_it_did(fig: FigProcess) -> None:
    before = scrape(fig)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for _ in range(7):
            assert conn.execute("select 1").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        conn.execute("insert into ev select g, now(), g from generate_series(1001, 1050) g")
        conn.execute("select fig.sync()")
        conn.execute("select fig.run_retention()")
        bound = (OLD + dt.timedelta(days=1)).isoformat()
        cold = conn.execute(f"select count(*), sum(v) from ev where ts < '{bound}'").fetchall()
        assert cold == [(120, sum(range(1, 121)))]
        during = scrape(fig)
        assert value(during, "fig_connections_open") >= 1

    def done(s: Samples) -> bool:
        return value(s, "fig_statement_duration_seconds_count", route="cold") > \
            value(before, "fig_statement_duration_seconds_count", route="cold") and \
            value(s, "fig_cdc_rows_total") - value(before, "fig_cdc_rows_total") >= 50

    after = wait_for(fig, done)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # statements: the route histogram, rows from the command tags, errors by SQLSTATE class
    assert delta("fig_statement_duration_seconds_count", route="relay") >= 8
    assert delta("fig_statement_duration_seconds_count", route="cold") == 1
    assert delta("fig_statement_duration_seconds_bucket", route="relay", le="+Inf") == \
        delta("fig_statement_duration_seconds_count", route="relay")
    assert delta("fig_errors_total", sqlstate_class="42") == 1
    assert delta("fig_rows_total", command="insert") == 50
    assert delta("fig_rows_total", command="select") >= 8
    assert delta("fig_connections_total") >= 1

    # the cold statement: the same pruning counts and cost as its fig.query_log record
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        row = direct.execute(
            "select files_kept, files_total, row_groups_kept, row_groups_total, "
            "bytes_scanned, bytes_total, cost_usd from fig.query_log "
            "where statement like 'select count(*), sum(v) from ev%' "
            "order by id desc limit 1").fetchone()
    assert row is not None
    files_kept, files_total, groups_kept, groups_total, scanned, total, cost = row
    assert files_kept >= 1 and scanned > 0
    assert delta("fig_cold_files_total", outcome="scanned") == files_kept
    assert delta("fig_cold_files_total", outcome="skipped") == files_total - files_kept
    assert delta("fig_cold_row_groups_total", outcome="scanned") == groups_kept
    assert delta("fig_cold_row_groups_total", outcome="skipped") == groups_total - groups_kept
    assert delta("fig_cold_bytes_total", outcome="scanned") == scanned
    assert delta("fig_cold_bytes_total", outcome="skipped") == total - scanned
    assert delta("fig_cold_files_scanned_count") == 1
    assert delta("fig_cold_files_scanned_sum") == files_kept
    assert delta("fig_cold_metadata_seconds_count") == 1
    assert delta("fig_cold_cost_usd_total") == pytest.approx(scanned / 1e9 * PRICE_PER_GB)
    assert float(cost) == pytest.approx(scanned / 1e9 * PRICE_PER_GB, rel=1e-6)
    assert value(after, "fig_cold_cost_today_usd") >= delta("fig_cold_cost_usd_total")
    assert delta("fig_cold_worker_busy_seconds_total") > 0
    assert value(after, "fig_cold_workers") == WORKERS
    assert value(after, "fig_cold_workers_busy") == 0

    # CDC (counted in the CDC process): the 50 inserted rows, their commit and files
    assert delta("fig_cdc_rows_total") == 50
    assert delta("fig_iceberg_rows_written_total") == 50
    assert delta("fig_iceberg_commits_total", operation="append") >= 1
    assert delta("fig_parquet_files_written_total") >= 1
    assert delta("fig_parquet_bytes_written_total") > 0
    assert delta("fig_cdc_transactions_total") >= 1
    assert value(after, "fig_cdc_buffer_rows") == 0
    # retention moved exactly those rows out of hot
    assert delta("fig_retention_rows_total") == 120
    assert delta("fig_retention_runs_total") >= 1
    # what Postgres reports, read at the scrape
    assert value(after, "fig_tiered_tables", state="active") == 1
    assert value(after, "fig_cold_stored_rows") == 170
    assert value(after, "fig_cdc_lag_seconds") >= 0
    assert value(after, "fig_hot_replication_lag_seconds") == 0


LABELS = {
    "route": {"relay", "hot", "cold", "split"},
    "command": {"select", "fetch", "copy", "insert", "update", "delete", "merge", "other"},
    "outcome": {"scanned", "skipped"},
    "state": {"copying", "active", "paused", "attached"},
}


def test_labels_are_small_fixed_sets(fig: FigProcess) -> None:
    """No statement text or user-chosen value ever becomes a label."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("select 'a label must never hold this' as x").fetchall()
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 1")
    samples = wait_for(fig, lambda s: value(s, "fig_errors_total", sqlstate_class="42") >= 2)
    for name, labels in samples:
        for label, text in labels:
            if label == "le":
                float(text)
            elif label == "sqlstate_class":
                assert re.fullmatch(r"[0-9A-Z]{2}", text), (name, text)
            elif label == "operation":
                assert text in {"append", "overwrite", "delete", "replace", "metadata"}
            else:
                assert text in LABELS[label], (name, label, text)


def test_a_restart_reads_the_cold_metadata_ahead(fig: FigProcess) -> None:
    """After a restart the Parquet footers of the tiered tables are read before any query
    (the first query would otherwise read them on the clock). Runs last: it stops the
    module's Fig."""
    fig.stop()
    again = start_fig(data_dir=fig.data_dir, env={"FIG__AUDIT__PRICE_PER_GB": str(PRICE_PER_GB),
                                                  "FIG__COLD__WORKERS": str(WORKERS)})
    try:
        samples = wait_for(again, lambda s: value(s, "fig_cold_footers_cached") >= 1, 60)
        assert value(samples, "fig_cold_footers_cached") >= 1, again.log()[-2000:]
        assert value(samples, "fig_statement_duration_seconds_count", route="cold") == 0
    finally:
        again.stop()
