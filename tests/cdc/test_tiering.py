"""fig.sync semantics, hot retention and compaction, through the SQL control surface."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from fig_server.cdc.control import install_control_schema
from fig_server.hot.embedded import EmbeddedPostgres
from tests.cdc.conftest import CdcEnv, drop_env, make_env
from tests.cdc.helpers import CdcRunner, catalog_of, cold_rows, hot_rows, sync, wait_active


@pytest.fixture(scope="module")
def env(hot_pg: EmbeddedPostgres) -> Iterator[tuple[CdcEnv, psycopg.Connection, CdcRunner]]:
    env = make_env(hot_pg)
    install_control_schema(env.dsn)
    runner = CdcRunner(env.config, env.dsn).start()
    conn = env.connect()
    yield env, conn, runner
    runner.stop()
    conn.close()
    drop_env(hot_pg, env)


def make_table(conn: psycopg.Connection, name: str, retention: str = "10 years") -> None:
    conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v int)")
    conn.execute(f"SELECT fig.tier_table('{name}', 'ts', interval '{retention}')")
    wait_active(conn, name)


def test_sync_is_read_your_writes(env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    cdc, conn, _ = env
    make_table(conn, "rw")
    catalog = catalog_of(cdc.config)
    for i in range(15):
        conn.execute("INSERT INTO rw VALUES (%s, now(), %s)", (i, i))
        sync(conn)
        assert len(catalog.load_table(("public", "rw")).scan().to_arrow()) == i + 1
    status = conn.execute("SELECT slot_active, lag_bytes >= 0, rows_total IS NOT NULL "
                          "FROM fig.cdc_status").fetchone()
    assert status == (True, True, True)


def test_retention_keeps_every_row_in_a_tier(
        env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    cdc, conn, _ = env
    make_table(conn, "ret", retention="1 day")
    conn.execute("INSERT INTO ret SELECT g, now() - g * interval '1 hour', g "
                 "FROM generate_series(1, 120) g")
    stop = threading.Event()

    def write_old_rows() -> None:
        with psycopg.connect(cdc.dsn, autocommit=True) as writer:
            i = 1000
            while not stop.is_set():
                writer.execute("INSERT INTO ret VALUES (%s, now() - interval '3 days', 0)",
                               (i,))
                i += 1

    thread = threading.Thread(target=write_old_rows)
    thread.start()
    try:
        conn.execute("SELECT fig.run_retention()")
    finally:
        stop.set()
        thread.join()
    boundary = conn.execute("SELECT tier_boundary > now() - interval '1 day 1 minute' "
                            "FROM fig.tables WHERE table_name = 'public.ret'").fetchone()[0]
    assert boundary
    hot_ids = {r["id"] for r in hot_rows(conn, "ret", "id")}
    assert all(i <= 24 or i >= 1000 for i in hot_ids)
    sync(conn)
    cold_ids = {r["id"] for r in cold_rows(catalog_of(cdc.config), "public", "ret", "id")}
    # Retention deletes are not replicated: cold still has every row ever inserted.
    inserted = set(range(1, 121)) | {i for i in hot_ids if i >= 1000}
    assert inserted <= cold_ids
    # A user delete below the boundary does reach cold.
    conn.execute("DELETE FROM ret WHERE id = 20")
    sync(conn)
    cold_ids = {r["id"] for r in cold_rows(catalog_of(cdc.config), "public", "ret", "id")}
    assert 20 not in cold_ids and 100 in cold_ids


def test_vacuum_full_and_cluster_give_back_the_heap_retention_emptied_and_cdc_goes_on(
        env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    """Retention empties the front of a heap that VACUUM cannot give back; VACUUM FULL and
    CLUSTER rewrite the table into a new file (an exclusive lock while they run). Neither is a
    change CDC sees: changes before, between and after them reach Iceberg exactly once, as a
    never-tiered twin that went through the same statements shows."""
    cdc, conn, _ = env
    start = conn.execute("SELECT now()").fetchone()
    for name in ("vf", "vf_twin"):
        conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
                     "v int, s text)")
        conn.execute(f"INSERT INTO {name} SELECT g, %s - (2000 - g) * interval '1 hour', g, "
                     "repeat('x', 200) FROM generate_series(1, 2000) g", start)
    conn.execute("SELECT fig.tier_table('vf', 'ts', interval '10 days')")
    wait_active(conn, "vf")

    def both(statement: str, params: tuple[object, ...] = ()) -> None:
        for name in ("vf", "vf_twin"):
            conn.execute(statement.format(t=name), params)

    conn.execute("SELECT fig.run_retention()")
    row = conn.execute("SELECT count(*), pg_relation_size('vf') FROM vf").fetchone()
    assert row is not None and row[0] < 300  # the last 10 days of 2000 hours
    emptied = row[1]
    both("UPDATE {t} SET v = -v WHERE id %% 5 = 0 AND id > 1800")
    conn.execute("VACUUM FULL vf")
    row = conn.execute("SELECT pg_relation_size('vf') FROM vf LIMIT 1").fetchone()
    assert row is not None and row[0] * 4 < emptied
    both("INSERT INTO {t} SELECT g, %s, g, 'new' FROM generate_series(3001, 3100) g", start)
    both("DELETE FROM {t} WHERE id %% 7 = 0 AND id > 1800")
    conn.execute("CLUSTER vf USING vf_pkey")
    both("UPDATE {t} SET s = 'after' WHERE id %% 3 = 0 AND id > 1800")
    sync(conn)
    assert cold_rows(catalog_of(cdc.config), "public", "vf", "id") == \
        hot_rows(conn, "vf_twin", "id")


def test_compact_rewrites_small_files(
        env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    cdc, conn, _ = env
    make_table(conn, "cmp")
    for i in range(6):
        conn.execute("INSERT INTO cmp SELECT g, timestamptz '2024-05-01' + (g %% 2) * "
                     "interval '1 day' + g * interval '1 second', g "
                     "FROM generate_series(%s::int, %s::int) g", (i * 100, i * 100 + 99))
        sync(conn)
    table = catalog_of(cdc.config).load_table(("public", "cmp"))
    assert len(list(table.scan().plan_files())) >= 6
    conn.execute("SELECT fig.compact('cmp')")
    table = catalog_of(cdc.config).load_table(("public", "cmp"))
    tasks = list(table.scan().plan_files())
    assert len(tasks) == 2
    assert cold_rows(catalog_of(cdc.config), "public", "cmp", "id") == hot_rows(conn, "cmp", "id")
    conn.execute("UPDATE cmp SET v = -1 WHERE id = 5")
    sync(conn)
    assert cold_rows(catalog_of(cdc.config), "public", "cmp", "id") == hot_rows(conn, "cmp", "id")


def test_sync_times_out_clearly_without_cdc(
        env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    cdc, conn, runner = env
    runner.stop()
    conn.execute("INSERT INTO rw VALUES (999, now(), 0)")
    with pytest.raises(psycopg.errors.QueryCanceled, match="did not finish"):
        sync(conn, "1s")
    restarted = CdcRunner(cdc.config, cdc.dsn).start()
    runner.process = restarted.process
    runner.stop_event = restarted.stop_event
    sync(conn)
    assert cold_rows(catalog_of(cdc.config), "public", "rw", "id") == hot_rows(conn, "rw", "id")
    conn.execute("SELECT fig.untier_table('cmp')")


def test_retention_in_batches_empties_a_large_backlog(hot_pg: EmbeddedPostgres) -> None:
    cdc = make_env(hot_pg)
    config = cdc.config.replace("tiering", retention_batch_rows=100)
    install_control_schema(cdc.dsn)
    runner = CdcRunner(config, cdc.dsn).start()
    try:
        with cdc.connect() as conn:
            make_table(conn, "backlog", retention="1 day")
            conn.execute("INSERT INTO backlog SELECT g, now() - interval '10 days' "
                         "+ g * interval '1 minute', g FROM generate_series(1, 1050) g")
            conn.execute("INSERT INTO backlog SELECT g, now(), g "
                         "FROM generate_series(2000, 2009) g")
            sync(conn)
            conn.execute("SELECT fig.run_retention()")
            left = conn.execute("SELECT count(*), min(id) FROM backlog").fetchone()
            assert left == (10, 2000)
            boundary = conn.execute("SELECT tier_boundary > now() - interval '1 day 1 minute' "
                                    "FROM fig.tables WHERE table_name = 'public.backlog'"
                                    ).fetchone()
            assert boundary == (True,)
            cold = {r["id"] for r in cold_rows(catalog_of(config), "public", "backlog", "id")}
            assert set(range(1, 1051)) <= cold
    finally:
        runner.stop()
        drop_env(hot_pg, cdc)


def test_one_retention_run_empties_a_backlog_of_a_date_column(hot_pg: EmbeddedPostgres) -> None:
    """Many rows per day: each batch ends between two days, with fewer than batch_rows rows;
    one fig.run_retention() still moves every old row (before: one batch per call)."""
    cdc = make_env(hot_pg)
    config = cdc.config.replace("tiering", retention_batch_rows=100)
    install_control_schema(cdc.dsn)
    runner = CdcRunner(config, cdc.dsn).start()
    try:
        with cdc.connect() as conn:
            conn.execute("CREATE TABLE daily (id bigint PRIMARY KEY, day date NOT NULL)")
            conn.execute("INSERT INTO daily SELECT g, current_date - 30 + g / 60 "
                         "FROM generate_series(0, 1799) g")
            conn.execute("SELECT fig.tier_table('daily', 'day', interval '5 days')")
            wait_active(conn, "daily")
            sync(conn)
            conn.execute("SELECT fig.run_retention()")
            left = conn.execute("SELECT count(*) FILTER (WHERE day < current_date - 6), "
                                "count(*) FROM daily").fetchone()
            assert left is not None and left[0] == 0 and left[1] < 1800
            cold = {r["id"] for r in cold_rows(catalog_of(config), "public", "daily", "id")}
            assert cold == set(range(1800))
            # the late-change triggers compare with the first day retention keeps (as the
            # planner does, planner/bounds.py boundary_value): the day before it is late
            row = conn.execute(
                "SELECT (b AT TIME ZONE 'UTC')::date + CASE WHEN (b AT TIME ZONE 'UTC')::time "
                "= '00:00' THEN 0 ELSE 1 END FROM (SELECT boundary AS b FROM "
                "fig.tiered_tables WHERE table_name = 'daily') t").fetchone()
            assert row is not None
            with conn.transaction(force_rollback=True):
                conn.execute("INSERT INTO daily VALUES (5000, %s)", (row[0],))
                assert conn.execute("SELECT count(*) FROM fig.late_changes").fetchone() == (0,)
                conn.execute("INSERT INTO daily VALUES (5001, %s::date - 1)", (row[0],))
                assert conn.execute("SELECT count(*) FROM fig.late_changes").fetchone() == (1,)
    finally:
        runner.stop()
        drop_env(hot_pg, cdc)


REFUSED_DDL = [
    "ALTER TABLE {t} ADD COLUMN d int DEFAULT 5",
    "ALTER TABLE {t} ADD COLUMN n int NOT NULL DEFAULT 0",
    "ALTER TABLE {t} ADD COLUMN s serial",
    "ALTER TABLE {t} ADD COLUMN g int GENERATED ALWAYS AS (v * 2) STORED",
    "ALTER TABLE {t} ALTER COLUMN v TYPE bigint USING v * 10",
    "ALTER TABLE {t} RENAME TO {t}_renamed",
    "ALTER TABLE {t} DROP COLUMN v, ADD COLUMN v int",
    "DO $$ BEGIN EXECUTE 'ALTER TABLE {t} ADD COLUMN d2 int DEFAULT 7'; END $$",
]


def test_schema_changes_old_cold_rows_would_not_follow_are_refused_directly_on_hot(
        env: tuple[CdcEnv, psycopg.Connection, CdcRunner]) -> None:
    """Sent to the hot Postgres itself (not through Fig's planner), or from a DO block: the
    event trigger refuses them with 0A000 and the table is as it was. Changes CDC follows in
    Iceberg go through: a column without a default (then its default), RENAME COLUMN,
    DROP COLUMN, widening; a later column may not take an earlier column's name."""
    cdc, conn, _ = env
    make_table(conn, "ddl")
    conn.execute("INSERT INTO ddl SELECT g, now(), g FROM generate_series(1, 10) g")
    before = conn.execute("SELECT fig._columns_of('ddl'::regclass)").fetchone()
    for statement in REFUSED_DDL:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute(statement.format(t="ddl"))
        assert "its rows in cold" in str(refused.value), statement
        assert conn.execute("SELECT fig._columns_of('ddl'::regclass)").fetchone() == before
    conn.execute("ALTER TABLE ddl ADD COLUMN note text")
    conn.execute("ALTER TABLE ddl ALTER COLUMN note SET DEFAULT 'n'")
    conn.execute("ALTER TABLE ddl ADD CONSTRAINT v_positive CHECK (v > 0)")
    conn.execute("ALTER TABLE ddl ALTER COLUMN v TYPE bigint")
    conn.execute("ALTER TABLE ddl RENAME COLUMN v TO v2")
    conn.execute("INSERT INTO ddl VALUES (11, now(), 11)")
    conn.execute("ALTER TABLE ddl DROP COLUMN note")
    for statement in ("ALTER TABLE ddl ADD COLUMN v int", "ALTER TABLE ddl ADD COLUMN note int"):
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="name of an earlier"):
            conn.execute(statement)
    conn.execute("SET fig.unsafe_schema_change = on")  # a repair, at the caller's risk
    conn.execute("ALTER TABLE ddl ALTER COLUMN v2 TYPE int USING v2::int")
    conn.execute("RESET fig.unsafe_schema_change")
    assert conn.execute("SELECT count(*), sum(v2) FROM ddl").fetchone() == (11, 66)
    sync(conn)
    assert len(catalog_of(cdc.config).load_table(("public", "ddl")).scan().to_arrow()) == 11
