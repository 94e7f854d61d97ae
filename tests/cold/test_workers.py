"""Worker lanes and metadata-only answers: a running unit is stopped by cancel and timeout (its
process killed and replaced, none leaked), count(*) comes from manifests when the partition
values imply the filter, time travel reads with the snapshot's schema."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    DecimalType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from fig_server.cold import ColdEngine, ProcessExecutor, ScanStats
from fig_server.cold.pruner import Pruner
from fig_server.errors import QueryCanceled, UndefinedColumn
from tests.cold.compare import rows, same_rows
from tests.cold.tables import build_events

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# Per row a hash of ~18 kB: one unit of the big table runs for several seconds.
SLOW = "SELECT count(*) FROM big WHERE sha256(repeat(CAST(id AS TEXT), 3000)) <> ''"


@pytest.fixture(scope="module")
def processes() -> Iterator[ColdEngine]:
    with ColdEngine(workers=2, eager=True) as cold:
        yield cold


@pytest.fixture(scope="module")
def big(module_catalog: SqlCatalog) -> Table:
    table = module_catalog.create_table("public.big", schema=pa.schema([("id", pa.int64())]))
    table.append(pa.table({"id": pa.array(range(600_000), pa.int64())}))
    return table


@pytest.fixture(scope="module")
def daily(module_catalog: SqlCatalog) -> Table:
    """Ten days partitioned by day(ts), two appends a day: 20 files."""
    schema = Schema(NestedField(1, "id", LongType()), NestedField(2, "ts", TimestamptzType()),
                    NestedField(3, "kind", StringType()))
    table = module_catalog.create_table(
        "public.daily", schema=schema,
        partition_spec=PartitionSpec(PartitionField(2, 1000, DayTransform(), "ts_day")))
    arrow = pa.schema([pa.field("id", pa.int64(), nullable=False),
                       pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
                       pa.field("kind", pa.string(), nullable=False)])
    for day in range(10):
        for half in range(2):
            start = (day * 2 + half) * 100
            table.append(pa.table({
                "id": list(range(start, start + 100)),
                "ts": [BASE + dt.timedelta(days=day, hours=half * 12, minutes=i)
                       for i in range(100)],
                "kind": ["a" if i % 3 else "b" for i in range(100)]}, schema=arrow))
    return table


def _run_in_thread(engine: ColdEngine, big: Table, **kwargs: object) -> tuple[
        threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = engine.query(SLOW, {"big": big}, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc
        outcome["done"] = time.monotonic()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _wait_busy(executor: ProcessExecutor) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        busy = executor.busy_pids()
        if busy:
            return busy
        time.sleep(0.01)
    raise AssertionError("no work unit started")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_workers(executor: ProcessExecutor, count: int,
                  gone: list[int] | None = None) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = executor.worker_pids()
        if len(pids) == count and all(_gone(pid) for pid in gone or []):
            return pids
        time.sleep(0.01)
    raise AssertionError(f"expected {count} workers, have {executor.worker_pids()}")


def test_cancel_kills_the_running_unit(processes: ColdEngine, big: Table) -> None:
    executor = processes.executor
    assert isinstance(executor, ProcessExecutor)
    cancel = threading.Event()
    thread, outcome = _run_in_thread(processes, big, cancel=cancel)
    busy = _wait_busy(executor)
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(timeout=30)
    assert isinstance(outcome.get("error"), QueryCanceled)
    # Far sooner than the unit itself (seconds): its process was killed, not waited for.
    assert float(outcome["done"]) - cancelled_at < 1.5  # type: ignore[arg-type]
    pids = _wait_workers(executor, 2, gone=busy)
    assert not set(busy) & set(pids)
    # The replacement workers answer.
    result = processes.query("SELECT count(*) FROM big WHERE id < 10", {"big": big})
    assert rows(result.table) == [(10,)]


def test_timeout_kills_the_running_unit(processes: ColdEngine, big: Table) -> None:
    executor = processes.executor
    assert isinstance(executor, ProcessExecutor)
    _wait_workers(executor, 2)
    thread, outcome = _run_in_thread(processes, big, timeout_s=1.0)
    busy = _wait_busy(executor)
    thread.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, QueryCanceled) and "statement timeout" in str(error)
    pids = _wait_workers(executor, 2, gone=busy)
    assert not set(busy) & set(pids)


def test_close_leaves_no_worker(big: Table) -> None:
    engine = ColdEngine(workers=2)
    engine.warm()
    executor = engine.executor
    assert isinstance(executor, ProcessExecutor)
    pids = _wait_workers(executor, 2)
    cancel = threading.Event()
    thread, _ = _run_in_thread(engine, big, cancel=cancel)
    _wait_busy(executor)
    engine.close()
    cancel.set()
    thread.join(timeout=30)
    assert all(_gone(pid) for pid in pids)
    assert not os.path.exists(executor.scratch)


def _oracle(table: Table) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("daily", table.scan().to_arrow())
    return con


@pytest.mark.parametrize(("where", "metadata_only"), [
    ("", True),
    ("WHERE ts >= '2024-01-03' AND ts < '2024-01-06'", True),
    ("WHERE ts BETWEEN '2024-01-03' AND '2024-01-05 23:59:59.999999'", True),
    ("WHERE ts >= timestamptz '2024-01-04 00:00:00+00'", True),
    ("WHERE ts >= '2024-01-03 12:00'", False),
    ("WHERE ts < '2024-01-03 06:00' AND ts > '2024-01-02'", False),
    ("WHERE kind = 'b'", False),
    ("WHERE ts >= '2024-01-08' AND kind = 'a'", False),
    ("WHERE NOT (ts < '2024-01-03')", False),
])
def test_count_star_from_manifests(processes: ColdEngine, daily: Table, where: str,
                                   metadata_only: bool) -> None:
    sql = f"SELECT count(*) AS n, count(*) + 1 AS m FROM daily {where}"
    got = processes.query(sql, {"daily": daily})
    assert same_rows(got.table, _oracle(daily).execute(sql).to_arrow_table()), sql
    assert got.table.schema.field("n").type == pa.int64()
    if metadata_only:
        assert got.stats.units_run == 0
        assert got.stats.files_from_metadata == got.stats.files_kept > 0
        lines = processes.explain(sql, {"daily": daily}, analyze=True)
        assert f"  Counted from manifests (not read): {got.stats.files_kept} files" in lines
    else:
        assert got.stats.units_run > 0


def test_count_star_from_manifests_with_group_by_reads_files(processes: ColdEngine,
                                                             daily: Table) -> None:
    sql = "SELECT kind, count(*) FROM daily GROUP BY kind"
    got = processes.query(sql, {"daily": daily})
    assert same_rows(got.table, _oracle(daily).execute(sql).to_arrow_table())
    assert got.stats.units_run > 0


def test_time_travel_uses_the_snapshot_schema(processes: ColdEngine,
                                              catalog: SqlCatalog) -> None:
    layout = build_events(catalog, "renamed", seed=11, appends=8, max_rows=30)
    snapshot_id, ms = layout.snapshots[3]  # before the rename of s to label (step 5)
    as_of = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    got = processes.query("SELECT id, s FROM renamed", {"renamed": layout.table}, as_of=as_of)
    want = layout.table.scan(snapshot_id=snapshot_id, selected_fields=("id", "s")).to_arrow()
    assert same_rows(got.table, want)
    with pytest.raises(UndefinedColumn):
        processes.query("SELECT extra FROM renamed", {"renamed": layout.table}, as_of=as_of)


def test_promoted_types_are_read_natively_and_right(processes: ColdEngine,
                                                    catalog: SqlCatalog) -> None:
    schema = Schema(NestedField(1, "n", IntegerType()), NestedField(2, "s", StringType()),
                    NestedField(3, "d", DecimalType(9, 2)))
    table = catalog.create_table("public.promoted", schema=schema)
    table.append(pa.table({"n": pa.array([1, 2, 3, None], pa.int32()),
                           "s": pa.array(["x", "y", "x", None], pa.large_string()),
                           "d": pa.array([Decimal("1.25"), None, Decimal("-3.50"),
                                          Decimal("9.99")], pa.decimal128(9, 2))}))
    with table.update_schema() as update:
        update.update_column("n", LongType())
        update.update_column("d", DecimalType(12, 2))
    table.append(pa.table({"n": pa.array([2**40, 5], pa.int64()),
                           "s": pa.array(["y", "z"], pa.string()),
                           "d": pa.array([Decimal("1234567.89"), Decimal("0.01")],
                                         pa.decimal128(12, 2))}))
    tables = {"promoted": table}
    con = duckdb.connect()
    con.register("promoted", table.scan().to_arrow())
    for sql in ("SELECT s, sum(n) AS t, min(d) AS lo, max(d) AS hi, count(*) AS c "
                "FROM promoted WHERE n > 1 OR n IS NULL GROUP BY s",
                "SELECT n, s, d FROM promoted WHERE s <> 'x'"):
        assert same_rows(processes.query(sql, tables).table,
                         con.execute(sql).to_arrow_table()), sql
    prepared = processes._prepare("SELECT n, s, d FROM promoted", tables, None, None)
    units = [u for batch in Pruner(prepared.scans[0], processes.cache, ScanStats()).batches(2)
             for u in batch]
    assert len(units) == 2 and all(u.native for u in units)
