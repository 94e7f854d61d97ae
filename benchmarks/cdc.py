"""CDC: sustained ingest through fig.tier_table + fig.sync, and replication lag at a fixed rate."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import psycopg
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog

from benchmarks.datagen import LAST_DAY, Scale, events_for_day, local_path
from benchmarks.fig_process import FigProcess
from benchmarks.report import RunReport


def probe_cdc(fig: FigProcess) -> str | None:
    """None when Fig's SQL control surface for CDC exists, else why CDC cannot be measured."""
    try:
        with psycopg.connect(fig.dsn(), autocommit=True) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'fig' AND p.proname IN ('tier_table', 'sync')").fetchone()
    except psycopg.Error as error:
        return f"probe failed: {error}"
    if not found or found[0] < 2:
        return "fig.tier_table / fig.sync are not installed by fig serve yet (fig_server.cdc)"
    return None


def run_cdc(fig: FigProcess, scale: Scale, report: RunReport) -> None:
    small = scale.name.startswith("tiny")
    total = 200_000 if small else 1_000_000
    report.cdc["ceiling"] = pgoutput_ceiling(fig, total)
    reason = probe_cdc(fig)
    if reason is not None:
        report.skipped.append(("CDC ingest and lag through Fig", reason))
        return
    _drop_leftovers(fig)
    try:
        report.cdc["ingest"] = sustained_ingest(fig, total)
        report.cdc["retention"] = retention_throughput(fig, total)
        report.cdc["lag"] = lag_at_rate(fig, rate=5_000, seconds=5 if small else 15)
    except (psycopg.Error, RuntimeError) as error:
        lines = str(error).strip().splitlines()
        report.skipped.append(("CDC ingest and lag", "failed: " + " / ".join(lines[:2])[:300]))


CDC_DDL = """
CREATE TABLE {name} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts timestamptz NOT NULL DEFAULT clock_timestamp(),
    day date NOT NULL,
    status integer NOT NULL,
    user_id bigint NOT NULL,
    country text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    payload text NOT NULL
)"""
COLUMNS = "day, status, user_id, country, amount, payload"
BATCH = 10_000


def _csv_batches(total: int) -> list[bytes]:
    """10k-row batches of events as CSV (ts is left to the server's clock_timestamp())."""
    rows = events_for_day(7, LAST_DAY, total).drop_columns(["id", "ts"])
    batches = []
    options = pacsv.WriteOptions(include_header=False)
    for start in range(0, total, BATCH):
        buffer = io.BytesIO()
        pacsv.write_csv(rows.slice(start, BATCH), buffer, options)
        batches.append(buffer.getvalue())
    return batches


def _copy_batches(conn: psycopg.Connection, table: str, batches: list[bytes]) -> None:
    """One transaction per 10k-row batch."""
    for batch in batches:
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                f"COPY {table} ({COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(batch)


def pgoutput_ceiling(fig: FigProcess, total: int) -> dict[str, Any]:
    """Postgres's own pgoutput decoding of the same WAL, read in SQL: the rate CDC cannot beat."""
    batches = _csv_batches(total)
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_ceiling")
        conn.execute(CDC_DDL.format(name="bench_ceiling"))
        conn.execute("DROP PUBLICATION IF EXISTS bench_ceiling_pub")
        conn.execute("CREATE PUBLICATION bench_ceiling_pub FOR TABLE bench_ceiling")
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bench_ceiling'"
                        ).fetchone():
            conn.execute("SELECT pg_drop_replication_slot('bench_ceiling')")
        conn.execute("SELECT pg_create_logical_replication_slot('bench_ceiling', 'pgoutput')")
        try:
            started = time.perf_counter()
            _copy_batches(conn, "bench_ceiling", batches)
            insert_s = time.perf_counter() - started
            # Decoding stops at the flushed WAL: one synchronous commit flushes everything before.
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_logical_emit_message(true, 'fig-bench', 'flush')")
            started = time.perf_counter()
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE get_byte(data, 0) = 73), sum(octet_length(data)) "
                "FROM pg_logical_slot_get_binary_changes("
                "'bench_ceiling', NULL, NULL, 'proto_version', '1', 'publication_names', "
                "'bench_ceiling_pub')").fetchone()
            decode_s = time.perf_counter() - started
        finally:
            conn.execute("SELECT pg_drop_replication_slot('bench_ceiling')")
            conn.execute("DROP PUBLICATION bench_ceiling_pub")
            conn.execute("DROP TABLE bench_ceiling")
    decoded, size = (row or (0, 0))
    return {"rows": total, "insert_rows_per_s": round(total / insert_s),
            "rows_decoded": decoded, "pgoutput_bytes": size,
            "decode_rows_per_s": round(total / decode_s),
            "note": "pg_logical_slot_get_binary_changes, server-side decode only"}


def _drop_leftovers(fig: FigProcess) -> None:
    """Untier and drop the tables an interrupted earlier run left behind."""
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM fig.tiered_tables WHERE schema_name = 'public' "
            "AND table_name ~ '^bench_(cdc|lag|ret)(_[0-9]+)?$'").fetchall()
        for (name,) in rows:
            _untier(conn, name)


def _tier(conn: psycopg.Connection, prefix: str) -> str:
    """A fresh tiered table, named per run so no earlier run's cold copy can interfere."""
    name = f"{prefix}_{int(time.time())}"
    conn.execute(CDC_DDL.format(name=name))
    # Users tier tables that already hold rows; one seed row also keeps the initial copy
    # non-empty (an empty initial copy failed in fig_server.cdc when this was written).
    conn.execute(f"INSERT INTO {name} ({COLUMNS}) VALUES (%s, 200, 0, 'US', 0, 'seed')",
                 (LAST_DAY,))
    conn.execute("SELECT fig.tier_table(%s, 'ts', interval '3650 days')", (f"public.{name}",))
    try:
        conn.execute("SELECT fig.sync(interval '60s')")
    except psycopg.Error:
        _untier(conn, name)
        raise
    return name


def _untier(conn: psycopg.Connection, name: str) -> None:
    """Stop CDC for the table and drop it, cold-only rows too (Fig drops its cold copy)."""
    conn.execute("SELECT fig.untier_table(%s, cold_rows => 'discard')", (f"public.{name}",))
    conn.execute(f"DROP TABLE IF EXISTS {name}")


def sustained_ingest(fig: FigProcess, total: int) -> dict[str, Any]:
    """Insert `total` rows in 10k-row transactions as fast as Postgres takes them; the rate is
    rows / (time until fig.sync() returns, i.e. until cold has committed all of them)."""
    batches = _csv_batches(total)
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        name = _tier(conn, "bench_cdc")
        try:
            with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
                started = time.perf_counter()
                _copy_batches(hot, name, batches)
                inserted_s = time.perf_counter() - started
            conn.execute("SELECT fig.sync(interval '600s')")
            synced_s = time.perf_counter() - started
            cold_rows = _cold_row_count(fig, name)
            mutations = _mutation_costs(conn, fig, name)
        finally:
            _untier(conn, name)
    if cold_rows != total + 1:
        raise RuntimeError(f"after fig.sync() cold holds {cold_rows} of {total + 1} rows")
    return {"rows": total, "transactions": len(batches),
            "insert_rows_per_s": round(total / inserted_s),
            "cdc_rows_per_s": round(total / synced_s), "seconds_to_sync": round(synced_s, 2),
            **mutations}


def retention_throughput(fig: FigProcess, total: int) -> dict[str, Any]:
    """Rows per second that retention moves out of hot: `total` rows spread over 60 days, in
    Iceberg already (CDC caught up), then the hot retention lowered from 10 years to 30 days
    and fig.run_retention() called until hot holds no row older than the boundary. The
    answer through Fig is checked to still count every row."""
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        name = _tier(conn, "bench_ret")
        try:
            with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
                for start in range(0, total, BATCH):
                    hot.execute(
                        f"INSERT INTO {name} (ts, {COLUMNS}) SELECT now() - (g % 60) * "
                        "interval '1 day' - (g % 86400) * interval '1 second', "
                        "current_date - (g % 60)::int, 200 + g % 5, g % 100000, 'US', "
                        "(g % 10000) / 100.0, 'retention probe' "
                        f"FROM generate_series({start + 1}, {start + BATCH}) g")
                conn.execute("SELECT fig.sync(interval '600s')")
                old = f"SELECT count(*) FROM ONLY {name} WHERE ts < now() - interval '30 days'"
                moved = int(hot.execute(old).fetchone()[0])  # type: ignore[index]
                conn.execute("SELECT fig.tier_table(%s, 'ts', interval '30 days')",
                             (f"public.{name}",))
                started, passes = time.perf_counter(), 0
                while True:
                    conn.execute("SELECT fig.run_retention()")
                    passes += 1
                    if int(hot.execute(old).fetchone()[0]) == 0:  # type: ignore[index]
                        break
                    if passes >= 1000:
                        raise RuntimeError("retention left old rows in hot after 1000 calls")
                seconds = time.perf_counter() - started
            counted = int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # type: ignore[index]
        finally:
            _untier(conn, name)
    if counted != total + 1:
        raise RuntimeError(f"after retention Fig counts {counted} of {total + 1} rows")
    return {"rows_moved": moved, "seconds": round(seconds, 2), "calls": passes,
            "rows_per_s": round(moved / seconds)}


def _mutation_costs(conn: psycopg.Connection, fig: FigProcess, name: str) -> dict[str, Any]:
    """Seconds from an UPDATE or DELETE of 1k rows (one transaction) until fig.sync() returns;
    the cold copy is checked to reflect each."""
    costs: dict[str, Any] = {}
    rows = "id BETWEEN 2 AND 1001"  # 1000 rows, not the seed row
    for label, statement in (
            ("update_1k_rows_s", f"UPDATE {name} SET amount = amount + 1 WHERE {rows}"),
            ("delete_1k_rows_s", f"DELETE FROM {name} WHERE {rows}")):
        started = time.perf_counter()
        with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
            hot.execute(statement)
        conn.execute("SELECT fig.sync(interval '120s')")
        costs[label] = round(time.perf_counter() - started, 3)
    remaining = _cold_row_count(fig, name)
    costs["rows_in_cold_after_delete"] = remaining
    return costs


def lag_at_rate(fig: FigProcess, rate: int, seconds: int) -> dict[str, Any]:
    """One-row transactions at a fixed rate; each row's lag is the commit time of the Iceberg
    snapshot that added it minus its ts (clock_timestamp() at insert, same machine)."""
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        name = _tier(conn, "bench_lag")
        try:
            achieved = _insert_at_rate(fig, name, rate, seconds)
            conn.execute("SELECT fig.sync(interval '120s')")
            lags = sorted(_lags_ms(fig, name))
        finally:
            _untier(conn, name)
    if not lags:
        raise RuntimeError("no appended rows found in cold for the lag table")
    return {"target_rows_per_s": rate, "achieved_rows_per_s": round(achieved),
            "rows_sent": rate * seconds, "rows_attributed_to_a_snapshot": len(lags),
            "lag_p50_ms": round(lags[len(lags) // 2], 1),
            "lag_p99_ms": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1),
            "lag_max_ms": round(lags[-1], 1)}


def _insert_at_rate(fig: FigProcess, name: str, rate: int, seconds: int) -> float:
    """Paced one-row autocommit INSERTs straight to hot; returns the rate achieved."""
    statement = f"INSERT INTO {name} ({COLUMNS}) VALUES (%s, 200, %s, 'US', 1.00, 'lag probe')"
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        cur = hot.cursor()
        started = time.perf_counter()
        sent = 0
        while sent < rate * seconds:
            delay = started + sent / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            cur.execute(statement, (LAST_DAY, sent))
            sent += 1
        return sent / (time.perf_counter() - started)


def _catalog(fig: FigProcess) -> SqlCatalog:
    iceberg = fig.data_dir / "iceberg"
    return SqlCatalog("fig", uri=f"sqlite:///{iceberg / 'catalog.db'}",
                      warehouse=f"file://{iceberg / 'warehouse'}")


def _cold_row_count(fig: FigProcess, name: str) -> int:
    table = _catalog(fig).load_table(("public", name))
    return int(table.scan(selected_fields=("id",)).to_arrow().num_rows)


def _lags_ms(fig: FigProcess, name: str) -> list[float]:
    table = _catalog(fig).load_table(("public", name))
    lags: list[float] = []
    for snapshot in table.snapshots():
        committed = dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, dt.UTC)
        for manifest in snapshot.manifests(table.io):
            if manifest.added_snapshot_id != snapshot.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.snapshot_id != snapshot.snapshot_id:
                    continue
                rows = pq.read_table(local_path(entry.data_file.file_path),
                                     columns=["ts", "payload"]).to_pylist()
                lags.extend((committed - row["ts"]).total_seconds() * 1000 for row in rows
                            if row["payload"] != "seed")
    return lags
