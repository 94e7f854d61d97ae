"""Initial copy and streaming of inserts, updates, deletes, truncate and schema changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import psycopg
import pytest

from fig_server.cdc.control import install_control_schema
from fig_server.hot.embedded import EmbeddedPostgres
from fig_server.storage.tables import SPILL_MARK
from tests.cdc.conftest import CdcEnv, drop_env, make_env
from tests.cdc.helpers import (
    CdcRunner,
    catalog_of,
    cold_rows,
    hot_rows,
    sync,
    wait_active,
    wait_for,
)


@pytest.fixture(scope="module")
def env(hot_pg: EmbeddedPostgres) -> Iterator[tuple[CdcEnv, psycopg.Connection]]:
    env = make_env(hot_pg)
    install_control_schema(env.dsn)
    runner = CdcRunner(env.config, env.dsn).start()
    conn = env.connect()
    yield env, conn
    runner.stop()
    conn.close()
    drop_env(hot_pg, env)


def assert_equal(env: CdcEnv, conn: psycopg.Connection, table: str, key: str = "id") -> None:
    sync(conn)
    assert cold_rows(catalog_of(env.config), "public", table, key) == hot_rows(conn, table, key)


def test_copy_then_stream(env: tuple[CdcEnv, psycopg.Connection]) -> None:
    cdc, conn = env
    conn.execute("CREATE TABLE ev (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
                 "name text, amount numeric(12,2), tags text[], flag bool)")
    conn.execute("INSERT INTO ev SELECT g, timestamptz '2024-01-01' + g * interval '1 hour',"
                 " 'n' || g, g * 1.5, ARRAY['a', 'b,' || g], g % 2 = 0 "
                 "FROM generate_series(1, 500) g")
    conn.execute("SELECT fig.tier_table('ev', 'ts', interval '3650 days')")
    wait_active(conn, "ev")
    conn.execute("INSERT INTO ev VALUES (1001, '2024-03-01', 'x', 1, NULL, NULL)")
    conn.execute("UPDATE ev SET name = 'upd' WHERE id % 10 = 0")
    conn.execute("UPDATE ev SET id = id + 5000 WHERE id % 11 = 0")
    conn.execute("DELETE FROM ev WHERE id % 7 = 0")
    assert_equal(cdc, conn, "ev")
    row = conn.execute("SELECT cold_rows, state, copied_rows FROM fig.tables "
                       "WHERE table_name = 'public.ev'").fetchone()
    assert row == (conn.execute("SELECT count(*) FROM ev").fetchone()[0], "active", 500)


@pytest.mark.parametrize(("key", "values"), [
    ("k uuid PRIMARY KEY", "md5(g::text)::uuid"),
    ("k numeric(10,2) PRIMARY KEY", "g / 4.0"),
    ("k text PRIMARY KEY", "'t' || g"),
    ("k date, j text, PRIMARY KEY (k, j)", "date '2020-01-01' + g % 50, 'j' || g"),
    ("k timestamptz, j int, PRIMARY KEY (j, k)",
     "timestamptz '2020-01-01' + g % 50 * interval '1 hour', g % 9"),
])
def test_updates_and_deletes_reach_cold_for_each_kind_of_primary_key(
        env: tuple[CdcEnv, psycopg.Connection], key: str, values: str) -> None:
    """CDC deletes the old versions of rows by key (each key column's range finds the
    files, then the keys themselves): keys of other types than bigint, and composite ones."""
    cdc, conn = env
    conn.execute(f"CREATE TABLE keyed (v int, ts timestamptz NOT NULL, {key})")
    try:
        conn.execute(f"INSERT INTO keyed SELECT g, timestamptz '2024-01-01' + g * interval "
                     f"'1 hour', {values} FROM generate_series(1, 400) g")
        conn.execute("SELECT fig.tier_table('keyed', 'ts', interval '3650 days')")
        wait_active(conn, "keyed")
        conn.execute("UPDATE keyed SET v = -v WHERE v % 3 = 0")
        conn.execute("UPDATE keyed SET ts = ts + interval '1 day' WHERE v % 5 = 1")
        conn.execute("DELETE FROM keyed WHERE v % 7 = 0")
        assert_equal(cdc, conn, "keyed", "v")  # v: unique, and not changed but in sign
    finally:
        conn.execute("DROP TABLE keyed")  # untiers it


def test_copy_in_several_commits_reports_progress(hot_pg: EmbeddedPostgres) -> None:
    cdc = make_env(hot_pg, flush_rows=100)  # copy batches of 5 x 1000 rows
    install_control_schema(cdc.dsn)
    runner = CdcRunner(cdc.config, cdc.dsn).start()
    try:
        with cdc.connect() as conn:
            conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
            conn.execute("INSERT INTO big SELECT g, timestamptz '2024-01-01' + g * interval "
                         "'1 minute' FROM generate_series(1, 12000) g")
            conn.execute("SELECT fig.tier_table('big', 'ts', interval '3650 days')")
            wait_active(conn, "big")
            assert_equal(cdc, conn, "big")
            row = conn.execute("SELECT copied_rows, copy_total_rows FROM fig.tables "
                               "WHERE table_name = 'public.big'").fetchone()
            assert row == (12000, 12000)
    finally:
        runner.stop()
        drop_env(hot_pg, cdc)


def test_types_round_trip(env: tuple[CdcEnv, psycopg.Connection]) -> None:
    cdc, conn = env
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.execute(
        "CREATE TABLE typed (id int PRIMARY KEY, d date NOT NULL, i2 int2, i8 int8, f4 float4, "
        "f8 float8, n numeric(20,6), vc varchar(10), b bool, t time, ts timestamp, "
        "u uuid, by bytea, j json, jb jsonb, arr int[], m mood, big text)")
    conn.execute("SELECT fig.tier_table('typed', 'd', interval '1 year')")
    wait_active(conn, "typed")
    conn.execute(
        "INSERT INTO typed VALUES (1, '2024-02-29', -3, 9007199254740993, 1.5, 'NaN', "
        "-123456.000001, 'héllo', true, '23:59:59.999999', '2024-01-01 00:00:00.5', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{\"a\": [1, 2]}', '{\"b\": 1}', "
        "'{1,NULL,3}', 'happy', repeat('x', 100000)), (2, '1999-12-31', NULL, NULL, NULL, "
        "'-Infinity', NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', NULL, NULL)")
    # A TOASTed value unchanged by an update must not become NULL in cold.
    conn.execute("UPDATE typed SET i2 = 7 WHERE id = 1")
    sync(conn)
    cold = cold_rows(catalog_of(cdc.config), "public", "typed", "id")
    hot = conn.execute("SELECT id, d, i2, i8, f8::text, n, vc, t, ts, u, by, j::text, "
                       "jb::text, arr, m::text, length(big) FROM typed ORDER BY id").fetchall()
    for c, h in zip(cold, hot, strict=True):
        assert (c["id"], c["d"], c["i2"], c["i8"]) == h[:4]
        assert str(c["f8"]).lower().replace("inf", "infinity").replace("nan", "nan") in (
            h[4].lower(), "nan")
        assert (c["n"], c["vc"], c["t"], c["ts"], c["u"]) == h[5:10]
        assert (c["by"], c["j"], c["jb"], c["arr"], c["m"]) == (h[10], h[11], h[12], h[13],
                                                                 h[14])
        assert (len(c["big"]) if c["big"] is not None else None) == h[15]


def test_refuses_unmappable(env: tuple[CdcEnv, psycopg.Connection]) -> None:
    _, conn = env
    conn.execute("CREATE TABLE odd (id int PRIMARY KEY, ts timestamptz, span interval)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="span"):
        conn.execute("SELECT fig.tier_table('odd', 'ts', interval '1 day')")
    conn.execute("CREATE TABLE nopk (ts timestamptz)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="primary key"):
        conn.execute("SELECT fig.tier_table('nopk', 'ts', interval '1 day')")


def test_truncate_and_schema_changes(env: tuple[CdcEnv, psycopg.Connection]) -> None:
    cdc, conn = env
    for name in ("sa", "sb"):
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, ts timestamptz NOT NULL, "
                     "v int, w real)")
        conn.execute(f"INSERT INTO {name} SELECT g, now(), g, g FROM generate_series(1, 50) g")
        conn.execute(f"SELECT fig.tier_table('{name}', 'ts', interval '1 day')")
        wait_active(conn, name)
    conn.execute("TRUNCATE sa")
    conn.execute("INSERT INTO sa VALUES (1, now(), 1, 1)")
    conn.execute("ALTER TABLE sb ADD COLUMN extra text")
    conn.execute("UPDATE sb SET extra = 'e' || id WHERE id < 10")
    conn.execute("ALTER TABLE sb RENAME COLUMN v TO v2")
    conn.execute("ALTER TABLE sb ALTER COLUMN v2 TYPE bigint, ALTER COLUMN w TYPE float8")
    conn.execute("INSERT INTO sb VALUES (100, now(), 5000000000, 0.1, 'new')")
    conn.execute("ALTER TABLE sb DROP COLUMN extra")
    conn.execute("DELETE FROM sb WHERE id = 2")
    assert_equal(cdc, conn, "sa")
    assert_equal(cdc, conn, "sb")
    names = [f.name for f in catalog_of(cdc.config).load_table(("public", "sb")).schema().fields]
    assert names == ["id", "ts", "v2", "w"]


def test_unexpressible_change_pauses(env: tuple[CdcEnv, psycopg.Connection]) -> None:
    cdc, conn = env
    conn.execute("CREATE TABLE sp (id int PRIMARY KEY, ts timestamptz NOT NULL, v int)")
    conn.execute("SELECT fig.tier_table('sp', 'ts', interval '1 day')")
    wait_active(conn, "sp")
    conn.execute("INSERT INTO sp VALUES (1, now(), 1)")
    conn.execute("ALTER TABLE sp ALTER COLUMN v TYPE text")
    conn.execute("INSERT INTO sp VALUES (2, now(), 'two')")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="sp"):
        sync(conn)
    status = conn.execute("SELECT paused_tables, last_error FROM fig.cdc_status").fetchone()
    assert "public.sp" in status[0] and "Iceberg can only widen" in status[1]
    # Re-tiering copies the table again and releases the slot.
    conn.execute("SELECT fig.tier_table('sp', 'ts', interval '1 day')")
    wait_active(conn, "sp")
    assert_equal(cdc, conn, "sp")
    conn.execute("SELECT fig.untier_table('sp')")


POISON = [("ts2", "timestamptz", "'infinity'"), ("d", "date", "'0044-03-15 BC'"),
          ("t", "time", "'24:00:00'"), ("n", "numeric(10,2)", "'NaN'")]


@pytest.mark.parametrize(("column", "kind", "value"), POISON)
def test_a_value_iceberg_cannot_hold_pauses_only_its_table(
        env: tuple[CdcEnv, psycopg.Connection], column: str, kind: str, value: str) -> None:
    cdc, conn = env
    bad, good = f"poison_{column}", f"healthy_{column}"
    for name in (bad, good):
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, ts timestamptz NOT NULL, "
                     f"{column} {kind})")
        conn.execute(f"SELECT fig.tier_table('{name}', 'ts', interval '3650 days')")
        wait_active(conn, name)
    with conn.transaction():  # one transaction touching both tables
        conn.execute(f"INSERT INTO {bad} VALUES (1, now(), NULL), (2, now(), {value})")
        conn.execute(f"INSERT INTO {good} VALUES (1, now(), NULL)")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                       match=f"public.{bad}: .*column \"{column}\""):
        sync(conn)
    # the other table goes on
    conn.execute(f"INSERT INTO {good} VALUES (2, now(), NULL)")
    wait_for(lambda: len(cold_rows(catalog_of(cdc.config), "public", good, "id")) == 2)
    status = conn.execute("SELECT paused_tables, last_error FROM fig.cdc_status").fetchone()
    assert status is not None and f"public.{bad}" in status[0] and "LSN" in status[1]
    # fixed in Postgres and re-tiered, it streams again, exactly
    conn.execute(f"UPDATE {bad} SET {column} = NULL WHERE id = 2")
    conn.execute(f"SELECT fig.tier_table('{bad}', 'ts', interval '3650 days')")
    wait_active(conn, bad)
    assert_equal(cdc, conn, bad)
    assert_equal(cdc, conn, good)
    for name in (bad, good):
        conn.execute(f"SELECT fig.untier_table('{name}')")


def test_a_value_iceberg_cannot_hold_in_the_initial_copy_pauses_the_table(
        env: tuple[CdcEnv, psycopg.Connection]) -> None:
    cdc, conn = env
    conn.execute("CREATE TABLE poison_copy (id int PRIMARY KEY, ts timestamptz NOT NULL, "
                 "d date)")
    conn.execute("INSERT INTO poison_copy VALUES (1, now(), 'infinity'), (2, now(), NULL)")
    conn.execute("SELECT fig.tier_table('poison_copy', 'ts', interval '3650 days')")
    wait_for(lambda: conn.execute("SELECT state FROM fig.tiered_tables "
                                  "WHERE table_name = 'poison_copy'").fetchone() == ("paused",))
    error = conn.execute("SELECT last_error FROM fig.tables "
                         "WHERE table_name = 'public.poison_copy'").fetchone()
    assert error is not None and 'column "d"' in error[0] and "infinity" in error[0]
    conn.execute("UPDATE poison_copy SET d = NULL WHERE id = 1")
    conn.execute("SELECT fig.tier_table('poison_copy', 'ts', interval '3650 days')")
    wait_active(conn, "poison_copy")
    assert_equal(cdc, conn, "poison_copy")
    conn.execute("SELECT fig.untier_table('poison_copy')")


def test_a_transaction_larger_than_memory_spills_and_streams(hot_pg: EmbeddedPostgres) -> None:
    """More row text than [cdc] spill_bytes in one transaction (and than flush_bytes, which
    stopped reading for good before): it spills, then reaches cold exactly, two tables."""
    cdc = make_env(hot_pg, spill_bytes=300_000, flush_bytes=200_000)
    install_control_schema(cdc.dsn)
    runner = CdcRunner(cdc.config, cdc.dsn).start()
    try:
        with cdc.connect() as conn:
            for name in ("big_a", "big_b"):
                conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, "
                             "ts timestamptz NOT NULL, note text)")
                conn.execute(f"INSERT INTO {name} SELECT g, now(), 'before' "
                             "FROM generate_series(1, 100) g")
                conn.execute(f"SELECT fig.tier_table('{name}', 'ts', interval '3650 days')")
                wait_active(conn, name)
            with conn.transaction():
                for name in ("big_a", "big_b"):
                    conn.execute(f"INSERT INTO {name} SELECT g, now() - g * interval '1 minute',"
                                 " repeat('x', 100) || g FROM generate_series(101, 20000) g")
                conn.execute("UPDATE big_a SET note = 'changed' WHERE id % 3 = 0")
                conn.execute("DELETE FROM big_b WHERE id % 5 = 0")
                conn.execute("UPDATE big_b SET id = id + 100000 WHERE id % 7 = 0")
            spill_dir = cdc.config.data_dir / "cdc-spill"
            assert_equal(cdc, conn, "big_a")
            assert_equal(cdc, conn, "big_b")
            assert spill_dir.exists() and not list(spill_dir.iterdir())
            conn.execute("INSERT INTO big_a VALUES (0, now(), 'after')")
            assert_equal(cdc, conn, "big_a")
    finally:
        runner.stop()
        drop_env(hot_pg, cdc)


def test_a_spilled_transaction_killed_midway_then_cut_differently_is_applied_once(
        hot_pg: EmbeddedPostgres) -> None:
    """CDC killed after some groups of a spilled transaction are in Iceberg, restarted with
    other spill_bytes/flush_bytes (so the transaction is cut into other, smaller groups),
    killed again after a few of those, restarted: every group after a change of cut is
    written over, not added. Before, the check for "the same transaction, cut differently"
    never matched and the replay duplicated the rows already in; and a second crash must not
    forget that the first cut went further than the second has got."""
    cdc = make_env(hot_pg, spill_bytes=20_000, flush_bytes=100_000)
    install_control_schema(cdc.dsn)
    runner = CdcRunner(cdc.config, cdc.dsn).start()
    try:
        with cdc.connect() as conn:
            conn.execute("CREATE TABLE cut (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
                         "note text)")
            conn.execute("INSERT INTO cut SELECT g, now(), 'before' FROM generate_series(1, 50) g")
            conn.execute("SELECT fig.tier_table('cut', 'ts', interval '3650 days')")
            wait_active(conn, "cut")
            sync(conn)
            with conn.transaction():  # ~1.4 MB of row text: ~14 groups of 100 kB, ~47 of 30 kB
                conn.execute("INSERT INTO cut SELECT g, now(), repeat('x', 200) || g "
                             "FROM generate_series(51, 4000) g")
                conn.execute("UPDATE cut SET note = 'changed' WHERE id % 3 = 0")
            catalog = catalog_of(cdc.config)

            def mark_ends(*endings: str) -> bool:
                mark = catalog.load_table(("public", "cut")).properties.get(SPILL_MARK, "")
                return mark.endswith(endings)
            wait_for(lambda: mark_ends("#2", "#3", "#4"), timeout=120, interval=0.01)
            runner.kill()  # about 300 kB in
            smaller = dataclasses.replace(cdc.config, cdc=dataclasses.replace(
                cdc.config.cdc, spill_bytes=30_000, flush_bytes=30_000))
            runner = CdcRunner(smaller, cdc.dsn).start()
            wait_for(lambda: mark_ends("#1r", "#2r", "#3r"), timeout=120, interval=0.01)
            runner.kill()  # about 90 kB in, in the new cut
            partial = catalog.load_table(("public", "cut")).scan().to_arrow().num_rows
            assert 50 < partial < 4000, "the kills did not land inside the transaction"
            runner = CdcRunner(smaller, cdc.dsn).start()
            sync(conn, "300s")
            assert_equal(cdc, conn, "cut")
    finally:
        runner.stop()
        drop_env(hot_pg, cdc)
