"""The result cache (cold/result_cache.py): answers from it equal an oracle's over generated
statements, as files are added and the schema changes; what must not be kept is not."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import LongType

from fig_server.cold import ColdEngine
from fig_server.cold.result_cache import ResultCache, deterministic, task_key
from fig_server.cold.units import ColumnRead, TaskOutput, UnitTask, WorkUnit
from tests.cold.compare import close_rows, rows, same_rows
from tests.cold.tables import Layout, build_events, duckdb_holding
from tests.cold.test_properties import PROPERTY, _predicates


@pytest.fixture(scope="module")
def events(module_catalog: SqlCatalog) -> Layout:
    return build_events(module_catalog, "cached_events", seed=11)


@pytest.fixture(scope="module")
def full(events: Layout) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb_holding(events) as con:
        yield con


@pytest.fixture(scope="module")
def cached() -> Iterator[ColdEngine]:
    with ColdEngine(workers=2, use_processes=False, result_cache_bytes=64 << 20) as cold:
        yield cold


def twice(engine: ColdEngine, sql: str, tables: dict[str, object]) -> tuple[pa.Table, pa.Table]:
    """The statement run twice: the second run's tasks come from the cache where their
    results were kept (result_cache.KEPT_SHARE)."""
    first = engine.query(sql, tables)  # type: ignore[arg-type]
    return first.table, engine.query(sql, tables).table  # type: ignore[arg-type]


def test_an_aggregate_run_again_reads_nothing(cached: ColdEngine, events: Layout) -> None:
    sql = "SELECT count(*) AS n, sum(i) AS s, max(label) AS m FROM events WHERE id % 5 = 1"
    first = cached.query(sql, {"events": events.table}, cached=False)
    second = cached.query(sql, {"events": events.table})
    third = cached.query(sql, {"events": events.table})
    assert second.stats.units_cached == 0 and second.stats.bytes_read > 0
    assert third.stats.units_cached == third.stats.units_run > 0
    assert third.stats.bytes_read == 0
    assert rows(first.table) == rows(second.table) == rows(third.table)


@PROPERTY
@given(predicate=_predicates(), group=st.sampled_from(["", "i", "b", "date_trunc('day', ts)"]))
def test_cached_aggregates_equal_the_oracle(cached: ColdEngine, events: Layout,
                                            full: duckdb.DuckDBPyConnection, predicate: str,
                                            group: str) -> None:
    keys = f"{group} AS g, " if group else ""
    tail = f" GROUP BY {group}" if group else ""
    sql = (f"SELECT {keys}count(*) AS n, sum(id) AS s, min(label) AS lo, max(f) AS hi, "
           f"avg(dec) AS a, count(DISTINCT d) AS dd FROM events WHERE {predicate}{tail}")
    want = full.sql(sql).to_arrow_table()
    for got in twice(cached, sql, {"events": events.table}):
        assert close_rows(got, want), sql


@PROPERTY
@given(predicate=_predicates(), desc=st.booleans(), limit=st.integers(1, 30))
def test_cached_scans_and_top_n_equal_the_oracle(cached: ColdEngine, events: Layout,
                                                 full: duckdb.DuckDBPyConnection,
                                                 predicate: str, desc: bool,
                                                 limit: int) -> None:
    scan = f"SELECT id, label, f FROM events WHERE {predicate}"
    want = full.sql(scan).to_arrow_table()
    for got in twice(cached, scan, {"events": events.table}):
        assert same_rows(got, want), scan
    direction = "DESC" if desc else "ASC"
    top = f"SELECT id FROM events WHERE {predicate} ORDER BY id {direction} LIMIT {limit}"
    want = full.sql(top).to_arrow_table()
    assert rows(cached.query(top, {"events": events.table}).table) == rows(want), top
    assert rows(cached.query(top, {"events": events.table}).table) == rows(want), top


SHAPES = (
    "SELECT count(*) AS n, sum(id) AS s, max(label) AS m FROM events",
    "SELECT i, count(*) AS n, min(ts) AS first FROM events GROUP BY i",
    "SELECT id, label FROM events WHERE id % 7 = 3",
    "SELECT id, f FROM events ORDER BY id DESC LIMIT 4",
)


def test_a_growing_and_evolving_table_is_answered_from_what_it_holds_now(
        catalog: SqlCatalog) -> None:
    layout = build_events(catalog, "growing", seed=5, appends=6, max_rows=40)
    table = layout.table
    with ColdEngine(workers=2, use_processes=False, result_cache_bytes=64 << 20) as cold, \
            ColdEngine(workers=2, use_processes=False) as plain:
        for sql in SHAPES:
            cold.query(sql, {"events": table})
        before = len(table.scan().plan_files())
        # a new file, then a column renamed and a column added (new field ids)
        extra = table.scan().to_arrow().slice(0, 7)
        table.append(extra)
        with table.update_schema() as update:
            update.rename_column("id", "ident")
            update.add_column("late", LongType())
        table = catalog.load_table("public.growing")
        oracle = duckdb.connect()
        oracle.execute("SET TimeZone = 'UTC'")
        oracle.register("events", table.scan().to_arrow())
        for sql in [s.replace("id", "ident") for s in SHAPES] + [
                "SELECT count(*) AS n, count(late) AS l, sum(i) AS s FROM events"]:
            got = cold.query(sql, {"events": table})
            assert close_rows(got.table, plain.query(sql, {"events": table}).table), sql
            assert close_rows(got.table, oracle.sql(sql).to_arrow_table()), sql
            if sql == SHAPES[1]:  # reads no renamed column: only the new file's task ran
                assert got.stats.units_cached == before, got.stats
                assert got.stats.units_run == before + 1, got.stats


def test_off_for_a_statement_runs_every_task(cached: ColdEngine, events: Layout) -> None:
    sql = "SELECT b, count(*) AS n FROM events GROUP BY b"
    cached.query(sql, {"events": events.table})
    fresh = cached.query(sql, {"events": events.table}, cached=False)
    assert fresh.stats.units_cached == 0 and fresh.stats.bytes_read > 0
    assert cached.query(sql, {"events": events.table}).stats.units_cached > 0


def test_what_may_differ_between_runs_is_not_kept() -> None:
    assert deterministic("SELECT count(*) FROM __unit WHERE ts < '2024-01-01'")
    for sql in ("SELECT random() AS r FROM __unit", "SELECT now() AS t FROM __unit",
                "SELECT count(*) FROM __unit WHERE ts < current_timestamp",
                "SELECT gen_random_uuid() FROM __unit", "SELECT ("):
        assert not deterministic(sql), sql
    unit = WorkUnit("file:///x.parquet", (0,), (ColumnRead("id", "id", pa.int64()),), 1, 1)
    assert task_key(UnitTask((unit,), "SELECT id FROM __unit", ())) is not None
    plain = task_key(UnitTask((unit,), "SELECT id FROM __unit", ()))
    keyed = [task_key(UnitTask((unit,), "SELECT id FROM __unit", (), keys=keys)) for keys in (
        (("id", pa.array([1, 2])),), (("id", pa.array([1, 2])),), (("id", pa.array([1, 3])),),
        (("id", pa.array([1, 2], pa.int32())),), (("other", pa.array([1, 2])),),
        (("id", pa.array([1, None])),), (("id", pa.array([0, 1, 2]).slice(1)),))]
    assert keyed[0] == keyed[1] != plain
    assert len({plain, *keyed[1:]}) == len(keyed)  # any other keys: another entry


def test_the_cache_stays_within_its_bytes() -> None:
    cache = ResultCache(8000)
    for index in range(50):
        cache.put(("sql", index), TaskOutput(b"x" * 900), rows=1, rows_read=1000)
        assert cache.bytes <= 8000
    cache.put(("sql", "big"), TaskOutput(b"x" * 1001), 1, 1000)  # over an eighth: not kept
    cache.put(("sql", "scan"), TaskOutput(b"x" * 500), 300, 1000)  # most of what it read
    assert cache.get(("sql", "big")) is None and cache.get(("sql", "scan")) is None
    assert cache.get(("sql", 49)) is not None and cache.get(("sql", 0)) is None
    assert ResultCache(0).get(("sql", 49)) is None


@PROPERTY
@given(first=st.lists(st.integers(-50, 50), min_size=1, max_size=6),
       second=st.lists(st.integers(-50, 50), min_size=1, max_size=6))
def test_results_under_key_sets_are_kept_per_key_set(cached: ColdEngine, events: Layout,
                                                     first: list[int],
                                                     second: list[int]) -> None:
    """Semi-join keys come from hot rows that change between statements: a result kept under
    one key set never answers another."""
    sql = "SELECT i, count(*) AS n, sum(id) AS s FROM events GROUP BY i"
    whole = events.table.scan().to_arrow()
    for values in (first, second, first):
        keys = (("i", pa.array(values, pa.int64())),)
        con = duckdb.connect()
        con.register("kept", whole.filter(pa.compute.is_in(whole["i"].cast(pa.int64()),
                                                           value_set=keys[0][1])))
        want = con.sql(sql.replace("events", "kept")).to_arrow_table()
        for _ in range(2):
            got = cached.query(sql, {"events": events.table}, keys=keys)
            assert same_rows(got.table, want), (values, sql)
