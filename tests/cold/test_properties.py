"""Property tests: pruned scans, aggregates and early-stopping top-n equal an unpruned oracle
(DuckDB over pyiceberg's own full read of the same files)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.catalog.sql import SqlCatalog

from fig_server.cold import ColdEngine
from tests.cold.compare import close_rows, rows, same_rows
from tests.cold.tables import PREFIX, Layout, build_events, duckdb_holding

_LAYOUTS = itertools.count()
EXAMPLES = 200 if os.environ.get("FIG_LONG") == "1" else 25
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def events(module_catalog: SqlCatalog) -> Layout:
    return build_events(module_catalog, "events", seed=7)


@pytest.fixture(scope="module")
def full(events: Layout) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb_holding(events) as con:
        yield con


def oracle(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.execute(sql).to_arrow_table()


_CMP = st.sampled_from(["=", "<>", "<", "<=", ">", ">="])
_DAY = st.integers(0, 24).map(lambda d: f"2024-01-{1 + d % 31:02d}")


def _atoms() -> st.SearchStrategy[str]:
    ints = st.integers(-10, 2600)
    return st.one_of(
        st.builds(lambda o, v: f"id {o} {v}", _CMP, ints),
        st.builds(lambda a, b: f"id BETWEEN {a} AND {b}", ints, ints),
        st.builds(lambda vs: f"id IN ({', '.join(map(str, vs))})",
                  st.lists(ints, min_size=1, max_size=4)),
        st.builds(lambda o, d, h: f"ts {o} '{d} {h:02d}:30'", _CMP, _DAY,
                  st.integers(0, 23)),
        st.builds(lambda o, d: f"date_trunc('day', ts) {o} '{d}'", _CMP, _DAY),
        st.builds(lambda o, d: f"ts::date {o} '{d}'", _CMP, _DAY),
        st.builds(lambda o, d: f"ts {o} timestamptz '{d} 10:00+02'", _CMP, _DAY),
        st.builds(lambda o, d: f"d {o} date '{d}'", _CMP, _DAY),
        st.sampled_from(["i IS NULL", "i IS NOT NULL", "extra IS NULL", "extra IS NOT NULL",
                         "b", "NOT b", "b IS NULL", "f = 'NaN'::float8", "f IS NULL"]),
        st.builds(lambda o, v: f"i {o} {v}", _CMP, st.integers(-60, 60)),
        st.builds(lambda o, v: f"f {o} {v}", _CMP, st.floats(-120, 120).map(lambda x: round(x, 2))),
        st.builds(lambda o, v: f"dec {o} {v}", _CMP, st.decimals(-1100, 1100, places=3)),
        st.builds(lambda o, v: f"extra {o} {v}", _CMP, st.integers(-5, 1005)),
        st.builds(lambda o, v: f"label {o} '{PREFIX}{v:06d}'", _CMP, st.integers(0, 2600)),
        st.builds(lambda o, v: f"label {o} '{v}'", _CMP, st.sampled_from(["a", "a-long", "b"])),
    )


def _predicates() -> st.SearchStrategy[str]:
    return st.recursive(_atoms(), lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a} AND {b})", inner, inner),
        st.builds(lambda a, b: f"({a} OR {b})", inner, inner),
        st.builds(lambda a: f"NOT ({a})", inner)), max_leaves=4)


@PROPERTY
@given(predicate=_predicates())
def test_pruned_scan_equals_full_scan(engine: ColdEngine, events: Layout,
                                      full: duckdb.DuckDBPyConnection, predicate: str) -> None:
    sql = f"SELECT id, label, f, extra FROM events WHERE {predicate}"
    got = engine.query(sql, {"public.events": events.table})
    assert same_rows(got.table, oracle(full, sql)), sql
    stats = got.stats
    assert stats.files_kept <= stats.files_total
    assert stats.bytes_read <= stats.bytes_total


@PROPERTY
@given(predicate=_predicates(), group=st.sampled_from(["", "i", "b", "date_trunc('day', ts)"]))
def test_aggregates_equal_oracle(engine: ColdEngine, events: Layout,
                                 full: duckdb.DuckDBPyConnection, predicate: str,
                                 group: str) -> None:
    keys = f"{group} AS g, " if group else ""
    tail = f" GROUP BY {group}" if group else ""
    sql = (f"SELECT {keys}count(*) AS n, count(i) AS ni, sum(id) AS s, min(label) AS lo, "
           f"max(f) AS hi, avg(dec) AS a, count(DISTINCT d) AS dd, bool_or(b) AS bo, "
           f"bool_and(b) AS ba, min(ts) AS first FROM events WHERE {predicate}{tail}")
    got = engine.query(sql, {"events": events.table})
    assert close_rows(got.table, oracle(full, sql)), sql


@PROPERTY
@given(predicate=st.one_of(st.just("TRUE"), _predicates()),
       column=st.sampled_from(["id", "ts", "label", "f", "i", "extra", "dec", "d"]),
       desc=st.booleans(), limit=st.integers(1, 40))
def test_top_n_equals_full_sort(engine: ColdEngine, events: Layout,
                                full: duckdb.DuckDBPyConnection, predicate: str, column: str,
                                desc: bool, limit: int) -> None:
    direction = "DESC NULLS FIRST" if desc else "ASC NULLS LAST"
    sql = f"SELECT {column} FROM events WHERE {predicate} ORDER BY {column} " \
          f"{'DESC' if desc else 'ASC'} LIMIT {limit}"
    want = oracle(full, f"SELECT {column} FROM events WHERE {predicate} "
                        f"ORDER BY {column} {direction} LIMIT {limit}")
    got = engine.query(sql, {"events": events.table})
    assert rows(got.table) == rows(want), sql


@settings(max_examples=max(5, EXAMPLES // 5), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), predicate=_predicates())
def test_random_layouts(engine: ColdEngine, catalog: SqlCatalog, seed: int,
                        predicate: str) -> None:
    name = f"ev{seed}_{next(_LAYOUTS)}"  # hypothesis may replay a seed: names stay unique
    layout = build_events(catalog, name, seed=seed, appends=6, max_rows=60)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", layout.table.scan().to_arrow())
    sql = f"SELECT id, ts, label FROM events WHERE {predicate}"
    got = engine.query(sql, {"events": layout.table})
    assert same_rows(got.table, oracle(con, sql)), sql
    top = f"SELECT ts FROM events WHERE {predicate} ORDER BY ts DESC LIMIT 3"
    assert rows(engine.query(top, {"events": layout.table}).table) == rows(oracle(con, top))
