"""Engine behaviour beyond the properties: workers in processes, early stop visible in stats and
EXPLAIN ANALYZE, time travel, general queries, errors and cancellation."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from fig_server.cold import ColdEngine, worker
from fig_server.cold import engine as engine_module
from fig_server.cold.engine import probe_of
from fig_server.cold.units import ColumnRead, UnitTask, WorkUnit
from fig_server.errors import (
    DivisionByZero,
    FeatureNotSupported,
    QueryCanceled,
    SqlSyntaxError,
    UndefinedColumn,
    UndefinedTable,
)
from fig_server.session.cold_rows import StreamClosed
from tests.cold.compare import rows, same_rows
from tests.cold.tables import build_events

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SCHEMA = pa.schema([("id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")),
                    ("status", pa.int32())])


@pytest.fixture(scope="module")
def sorted_events(module_catalog: SqlCatalog) -> Table:
    """60 daily files of time-ordered rows, 4 row groups each: what compaction produces."""
    table = module_catalog.create_table("public.sorted_events", schema=SCHEMA,
                                        properties={"write.parquet.row-group-limit": "250"})
    for day in range(60):
        ids = range(day * 1000, day * 1000 + 1000)
        table.append(pa.table({
            "id": list(ids),
            "ts": [BASE + dt.timedelta(days=day, seconds=i * 80) for i in range(1000)],
            "status": [500 if i % 97 == 0 else 200 for i in range(1000)]}, schema=SCHEMA))
    return table


@pytest.fixture(scope="module")
def processes() -> Iterator[ColdEngine]:
    with ColdEngine(workers=2) as cold:
        yield cold


def test_process_workers_agree_with_threads(processes: ColdEngine, engine: ColdEngine,
                                            sorted_events: Table) -> None:
    tables = {"public.sorted_events": sorted_events}
    for sql in ("SELECT status, count(*), avg(id) FROM sorted_events GROUP BY status",
                "SELECT id, ts FROM sorted_events WHERE status = 500 ORDER BY ts DESC LIMIT 5"):
        assert same_rows(processes.query(sql, tables).table, engine.query(sql, tables).table)


def test_top_n_stops_early_and_skips_bytes(engine: ColdEngine, sorted_events: Table) -> None:
    sql = ("SELECT id, ts FROM sorted_events WHERE ts::date >= '2024-01-10' AND status = 500 "
           "ORDER BY ts DESC LIMIT 5")
    result = engine.query(sql, {"sorted_events": sorted_events})
    assert [r["id"] for r in result.table.to_pylist()] == [59970, 59873, 59776, 59679, 59582]
    stats = result.stats
    assert stats.stopped_early
    assert stats.files_kept == 51 and stats.files_total == 60
    assert stats.bytes_read * 20 < stats.bytes_total
    lines = engine.explain(sql, {"sorted_events": sorted_events}, analyze=True)
    assert lines[0] == "Route: COLD"
    assert "  Files: 51 of 60 survived" in lines
    assert any(line.startswith("Stopped early: yes") for line in lines)


def test_late_materialization_reads_whole_only_row_groups_with_passing_rows(
        engine: ColdEngine, sorted_events: Table) -> None:
    """A needle no column bound prunes (`id % 7919 = 0`: 8 rows in 240 row groups): each
    row-group unit's filter column is read first, the rest only where a row passes; once the
    first units leave the top-n far from full, the rest of the table is read as whole files
    (DataFusion's own filter pushdown)."""
    tables = {"sorted_events": sorted_events}
    sql = ("SELECT id, ts, status FROM sorted_events WHERE id % 7919 = 0 "
           "ORDER BY ts LIMIT 20")
    result = engine.query(sql, tables)
    assert [r["id"] for r in result.table.to_pylist()] == list(range(0, 60000, 7919))
    stats = result.stats
    assert 0 < stats.units_skipped < stats.units_probed, stats
    assert stats.units_run < 240 - 60, stats  # whole files after the first row groups
    lines = engine.explain(sql, tables, analyze=True)
    assert any(line.startswith("Late materialization: ") for line in lines)
    # an aggregate over units none of whose rows pass still answers its one row
    path = next(iter(sorted_events.scan().plan_files())).file.file_path
    columns = tuple(ColumnRead(f.name, f.name, f.type) for f in SCHEMA)
    units = tuple(WorkUnit(path, (group,), columns, 250, 0) for group in (0, 2))
    sql = "SELECT count(*), max(status) FROM __unit WHERE id % 7919 = 7000"
    output = worker.run_task(UnitTask(units, sql, (), probe_of(sql)))
    assert rows(worker.from_ipc(output.ipc)) == [(0, None)]
    assert (output.probed, output.skipped) == (2, 2)


def test_late_materialization_stops_when_the_filter_keeps_most(
        engine: ColdEngine, sorted_events: Table) -> None:
    """Row-group units (here: a filter Iceberg's metrics cannot read, `id % 97`, so files are
    not handed to DataFusion's own filtering) stop reading the filter's columns first once
    most units turn out to hold passing rows."""
    tables = {"sorted_events": sorted_events}
    sql = "SELECT id, ts FROM sorted_events WHERE id % 97 <> 0 ORDER BY ts LIMIT 50000"
    result = engine.query(sql, tables)
    want = [r for r in range(60000) if r % 97 != 0][:50000]
    assert [r["id"] for r in result.table.to_pylist()] == want
    stats = result.stats
    assert stats.units_skipped == 0 and 0 < stats.units_probed < stats.units_run / 2, stats


def test_a_top_n_with_a_filter_some_rows_fail_reads_local_files_whole(
        engine: ColdEngine, sorted_events: Table) -> None:
    """`status = 500` may drop rows of every file (its metrics say so): each file is one unit
    DataFusion filters itself, reading the other columns only where a row passed; the top-n
    still stops early, and the answer is the same."""
    tables = {"sorted_events": sorted_events}
    sql = "SELECT id, ts FROM sorted_events WHERE status = 500 ORDER BY ts DESC LIMIT 5"
    result = engine.query(sql, tables)
    assert [r["id"] for r in result.table.to_pylist()] == [59970, 59873, 59776, 59679, 59582]
    stats = result.stats
    assert stats.units_probed == 0 and stats.stopped_early, stats  # row groups are probed


@pytest.mark.parametrize("offset", [0, 3])
def test_limit_without_order_stops_at_n_rows(engine: ColdEngine, sorted_events: Table,
                                             offset: int) -> None:
    """A table preview (LIMIT without ORDER BY) reads files until it has n matching rows."""
    sql = f"SELECT id, status FROM sorted_events WHERE status = 500 LIMIT 12 OFFSET {offset}"
    result = engine.query(sql, {"sorted_events": sorted_events})
    got = result.table.to_pylist()
    assert len(got) == 12 and all(r["status"] == 500 for r in got)
    assert len({r["id"] for r in got}) == 12
    stats = result.stats
    assert stats.stopped_early
    assert stats.units_run < stats.files_total // 2, stats


def test_pruning_by_day_reads_one_file(engine: ColdEngine, sorted_events: Table) -> None:
    sql = "SELECT count(*) FROM sorted_events WHERE date_trunc('day', ts) = $1"
    result = engine.query(sql, {"sorted_events": sorted_events},
                          params=[dt.datetime(2024, 1, 5)])
    assert result.table.column(0).to_pylist() == [1000]
    assert result.stats.files_kept == 1
    lines = engine.explain(sql, {"sorted_events": sorted_events},
                           params=[dt.datetime(2024, 1, 5)])
    assert "  Files: 1 of 60 survived" in lines


def test_cached_pruning_counts_and_finds_what_a_fresh_engine_does(catalog: SqlCatalog) -> None:
    """Pruning outcomes are cached by manifest or file and filter: a statement run again, and
    run after an append (a new snapshot listing the old manifests and a new one), keeps the
    same files, row groups and rows as an engine that never saw the table."""
    table = catalog.create_table("public.growing", schema=SCHEMA,
                                 properties={"write.parquet.row-group-limit": "100"})

    def append(day: int) -> None:
        table.append(pa.table({
            "id": list(range(day * 300, day * 300 + 300)),
            "ts": [BASE + dt.timedelta(days=day, seconds=i * 200) for i in range(300)],
            "status": [500 if i % 50 == 0 else 200 for i in range(300)]}, schema=SCHEMA))

    for day in range(4):
        append(day)
    sql = ("SELECT count(*), min(id) FROM growing WHERE ts >= $1 AND ts < $2 "
           "AND status = 500")
    params = [BASE + dt.timedelta(days=1, hours=5), BASE + dt.timedelta(days=6)]
    counted = ("manifests_kept", "manifests_total", "files_kept", "files_total",
               "row_groups_kept", "row_groups_total", "bytes_total")

    narrower = [BASE + dt.timedelta(days=2), BASE + dt.timedelta(days=2, hours=6)]

    def run(cold: ColdEngine, bounds: list[dt.datetime] = params
            ) -> tuple[list[object], tuple[int, ...]]:
        result = cold.query(sql, {"growing": table}, params=bounds)
        return rows(result.table), tuple(getattr(result.stats, name) for name in counted)

    with ColdEngine(workers=1, use_processes=False) as cached:
        first = run(cached)
        assert run(cached) == first
        for day in (4, 5):
            append(day)
            table = catalog.load_table("public.growing")
            again, other = run(cached), run(cached, narrower)
            with ColdEngine(workers=1, use_processes=False) as fresh:
                assert (again, other) == (run(fresh), run(fresh, narrower))
            assert again != first  # the new file's rows and counts are there
    assert again[1][counted.index("files_kept")] == 5, again
    assert other[1][counted.index("files_kept")] == 1, other


def test_top_n_with_a_date_cast_filter_over_an_evolved_layout(engine: ColdEngine,
                                                               catalog: SqlCatalog) -> None:
    """Found by test_random_layouts (seed 0): DataFusion dropped the unit's sort under a
    ts::date filter and returned a wrong third row (cold/datafusion_sql.py)."""
    layout = build_events(catalog, "evolved_top", seed=0, appends=6, max_rows=60)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("evolved_top", layout.table.scan().to_arrow())
    sql = "SELECT ts FROM evolved_top WHERE ts::date = '2024-01-02' ORDER BY ts DESC LIMIT 3"
    got = engine.query(sql, {"evolved_top": layout.table})
    assert rows(got.table) == rows(con.execute(sql).to_arrow_table())


def test_time_travel_reads_the_snapshot_current_then(engine: ColdEngine,
                                                     catalog: SqlCatalog) -> None:
    layout = build_events(catalog, "travel", seed=3, appends=8, max_rows=40)
    snapshot_id, ms = layout.snapshots[3]
    as_of = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    got = engine.query("SELECT id, ts FROM travel", {"travel": layout.table}, as_of=as_of)
    want = layout.table.scan(snapshot_id=snapshot_id, selected_fields=("id", "ts")).to_arrow()
    assert same_rows(got.table, want)
    before = engine.query("SELECT count(*) FROM travel", {"travel": layout.table},
                          as_of=dt.datetime(2000, 1, 1))
    assert before.table.column(0).to_pylist() == [0]


def test_general_queries_fall_back_correctly(engine: ColdEngine, sorted_events: Table,
                                             catalog: SqlCatalog) -> None:
    layout = build_events(catalog, "joined", seed=5, appends=5, max_rows=50)
    tables = {"sorted_events": sorted_events, "joined": layout.table}
    con = duckdb.connect()
    con.register("sorted_events", sorted_events.scan().to_arrow())
    con.register("joined", layout.table.scan().to_arrow())
    for sql in (
        "SELECT j.id, s.status FROM joined j JOIN sorted_events s ON s.id = j.id "
        "WHERE s.status = 200 AND j.i IS NOT NULL",
        "SELECT id, row_number() OVER (ORDER BY id DESC) AS rn FROM joined WHERE id < 20",
        "SELECT count(*) FROM sorted_events WHERE id IN (SELECT id FROM joined)",
        "SELECT status, string_agg(id::text, ',' ORDER BY id) FROM sorted_events "
        "WHERE id < 300 GROUP BY status",
    ):
        assert same_rows(engine.query(sql, tables).table, con.execute(sql).to_arrow_table()), sql


@pytest.mark.parametrize("sql", [
    "SELECT status, count(*) FILTER (WHERE id % 3 = 0) AS a, sum(id) FILTER (WHERE id > 30000) "
    "AS b, avg(id) FILTER (WHERE ts < TIMESTAMPTZ '2024-01-20 00:00:00+00') AS c, count(*) AS n "
    "FROM sorted_events GROUP BY status",
    "SELECT count(DISTINCT id % 50) FILTER (WHERE status = 500) AS a, "
    "bool_or(id > 59990) FILTER (WHERE status = 200) AS b, "
    "count(id) FILTER (WHERE NULLIF(status, 500) = 200) AS c FROM sorted_events",
    "SELECT id % 4 AS k, sum(status) FILTER (WHERE id % 7 = 1) AS a FROM sorted_events "
    "WHERE id < 20000 GROUP BY id % 4 HAVING count(*) FILTER (WHERE status = 500) > 40",
])
def test_filtered_aggregates_are_split_into_worker_partials(engine: ColdEngine,
                                                            sorted_events: Table,
                                                            sql: str) -> None:
    """`agg(x) FILTER (WHERE p)` is computed in the workers as `agg(CASE WHEN p THEN x END)`
    (only groups travel), answering as DuckDB does over the same rows; NULL conditions too."""
    tables = {"sorted_events": sorted_events}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("sorted_events", sorted_events.scan().to_arrow())
    assert same_rows(engine.query(sql, tables).table, con.execute(sql).to_arrow_table()), sql
    lines = engine.explain(sql, tables)
    assert any("plan aggregate)" in line for line in lines), lines


def test_integer_division_and_count_types(engine: ColdEngine, sorted_events: Table) -> None:
    result = engine.query("SELECT id / 7 AS q, count(*) AS n FROM sorted_events "
                          "WHERE id < 3 GROUP BY id / 7", {"sorted_events": sorted_events})
    assert rows(result.table) == [(0, 3)]
    assert result.table.schema.field("n").type == pa.int64()


def test_a_preview_keeps_rows_of_the_table_under_postgres_names(engine: ColdEngine,
                                                               sorted_events: Table) -> None:
    """LIMIT and OFFSET without ORDER BY over picked columns (done without DataFusion):
    that many rows, each a row of the table, named as Postgres names them."""
    every = set(rows(sorted_events.scan(selected_fields=("id", "status")).to_arrow()))
    for sql, count in (("SELECT ID AS Key, status AS \"Status\" FROM sorted_events "
                        "WHERE status = 200 LIMIT 7 OFFSET 3", 7),
                       ("SELECT sorted_events.id, status FROM sorted_events "
                        f"OFFSET {len(every) - 10}", 10),
                       ("SELECT id, status FROM sorted_events LIMIT 0", 0)):
        got = engine.query(sql, {"sorted_events": sorted_events}).table
        assert got.num_rows == count, sql
        assert set(rows(got)) <= every, sql
        assert got.column_names == (["key", "Status"] if "Key" in sql else ["id", "status"])


@pytest.mark.parametrize(("sql", "error"), [
    ("SELECT nope FROM sorted_events", UndefinedColumn),
    ("SELECT id, nope FROM sorted_events LIMIT 3", UndefinedColumn),
    ("SELECT * FROM missing_table", UndefinedTable),
    ("SELECT id / 0 FROM sorted_events WHERE id = 1", DivisionByZero),
    ("SELEC id FROM sorted_events", SqlSyntaxError),
    ("DELETE FROM sorted_events", FeatureNotSupported),
])
def test_errors_carry_sqlstates(engine: ColdEngine, sorted_events: Table, sql: str,
                                error: type[Exception]) -> None:
    with pytest.raises(error):
        engine.query(sql, {"sorted_events": sorted_events})


def test_cancel_and_timeout(engine: ColdEngine, sorted_events: Table) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(QueryCanceled):
        engine.query("SELECT * FROM sorted_events", {"sorted_events": sorted_events},
                     cancel=cancel)
    with pytest.raises(QueryCanceled) as caught:
        engine.query("SELECT * FROM sorted_events", {"sorted_events": sorted_events},
                     timeout_s=1e-6)
    assert caught.value.sqlstate == "57014"


@pytest.mark.parametrize("keys", [
    (("status", pa.array([500, 404], pa.int64())),),
    (("status", pa.array([500, 404], pa.int64())),
     ("id", pa.array(range(0, 5000, 3), pa.int64()))),  # both must hold
], ids=["one key set", "two key sets"])
@pytest.mark.parametrize("sql", [
    "SELECT status, count(*), sum(id) FROM sorted_events GROUP BY status",
    "SELECT id, status FROM sorted_events WHERE ts < TIMESTAMPTZ '2024-01-20 00:00:00+00'",
    "SELECT id, ts, status FROM sorted_events ORDER BY ts DESC LIMIT 7",
])
def test_key_sets_filter_rows_before_the_sql(processes: ColdEngine, engine: ColdEngine,
                                             sorted_events: Table, sql: str,
                                             keys: tuple[tuple[str, pa.Array], ...]) -> None:
    """Semi-join key sets (UnitTask.keys): the workers keep a row only when each key set's
    column (one the SQL reads) holds one of its keys, before the SQL runs, in processes and
    threads alike: the answer is the SQL's over exactly those rows (DuckDB's over the kept
    rows)."""
    tables = {"public.sorted_events": sorted_events}
    whole = sorted_events.scan().to_arrow()
    kept = whole
    for column, values in keys:
        kept = kept.filter(pa.compute.is_in(kept[column].cast(pa.int64()), value_set=values))
    assert 0 < kept.num_rows < whole.num_rows
    want = duckdb.sql(sql.replace("sorted_events", "kept")).to_arrow_table()
    for cold in (processes, engine):
        result = cold.query(sql, tables, keys=keys)
        assert same_rows(result.table, want), sql
        assert result.stats.rows_reduced > 0
        if "WHERE" not in sql and "LIMIT" not in sql:  # every row read, each kept or not
            assert result.stats.rows_reduced == whole.num_rows - kept.num_rows


@pytest.mark.parametrize("sql", [
    "SELECT id, status, id * 2 AS twice FROM sorted_events WHERE status = 500",
    "SELECT * FROM sorted_events WHERE id % 7 = 1",
    "SELECT status AS code, id, sorted_events.ts FROM sorted_events WHERE id % 3 = 0",
])
def test_plain_scans_stream_in_pieces(engine: ColdEngine, sorted_events: Table, sql: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain scan's result goes to the sink in pieces as units finish (the coordinator's
    SQL run over each piece), the pieces together are the whole answer, and the returned
    table holds none of them."""
    monkeypatch.setattr(engine_module, "STREAM_PIECE_BYTES", 1)  # a piece per unit output
    tables = {"sorted_events": sorted_events}
    whole = engine.query(sql, tables).table
    pieces: list[pa.Table] = []
    result = engine.query(sql, tables, sink=pieces.append)
    assert result.table.num_rows == 0 and len(pieces) > 1
    assert same_rows(pa.concat_tables(pieces), whole)
    assert pieces[0].column_names == whole.column_names


@pytest.mark.parametrize("sql", [
    "SELECT id FROM sorted_events WHERE status = 500 ORDER BY id",
    "SELECT DISTINCT status FROM sorted_events",
    "SELECT status FROM sorted_events GROUP BY status",
    "SELECT id FROM sorted_events LIMIT 5",
    "SELECT id FROM sorted_events ORDER BY ts DESC LIMIT 5",
    "SELECT status, count(*) FROM sorted_events GROUP BY status",
])
def test_scans_that_need_all_their_rows_do_not_stream(engine: ColdEngine,
                                                      sorted_events: Table, sql: str) -> None:
    pieces: list[pa.Table] = []
    result = engine.query(sql, {"sorted_events": sorted_events}, sink=pieces.append)
    assert not pieces and result.table.num_rows > 0


def test_a_failing_sink_stops_the_scan(engine: ColdEngine, sorted_events: Table,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "STREAM_PIECE_BYTES", 1)
    calls = 0

    def sink(piece: pa.Table) -> None:
        nonlocal calls
        calls += 1
        raise StreamClosed()

    with pytest.raises(StreamClosed):
        engine.query("SELECT id FROM sorted_events", {"sorted_events": sorted_events},
                     sink=sink)
    assert calls == 1
