"""The cold tier on an S3 protocol endpoint (moto's server on loopback, behind a gate that can
make it unreachable): CDC, retention, cold and federated queries, an outage, DROP TABLE, and
the endpoint's secret key never shown."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from pyiceberg.exceptions import NoSuchTableError

from fig_server.storage.catalog import open_catalog
from tests import s3
from tests.conftest import FigProcess, free_port, make_config, make_data_dir, start_fig

# Both tables get the same rows: times count back from one instant, not each statement's now().
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ROWS_SQL = ("insert into {t} select g, timestamptz '" + NOW.isoformat() + "' - g * interval "
            "'1 {unit}', g % 7, round(g / 3.0, 2), 'n' || g from generate_series({a}, {b}) g")


@pytest.fixture(scope="module")
def gate() -> s3.Gate:
    return s3.Gate(s3.endpoint())


@pytest.fixture(scope="module")
def fig(gate: s3.Gate) -> Iterator[tuple[FigProcess, dict[str, str]]]:
    settings = s3.new_warehouse(gate.url)
    server = start_fig(env=s3.as_env(settings))
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for table in ("ev", "ev_plain"):
            conn.execute(f"create table {table} (id bigint primary key, ts timestamptz not null,"
                         " v int, amount numeric(10,2), note text)")
            conn.execute(ROWS_SQL.format(t=table, a=1, b=3000, unit='hour'))
        conn.execute("select fig.tier_table('ev', 'ts', interval '20 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
    yield server, settings
    server.stop()


def answers(conn: psycopg.Connection, sql: str) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(conn.execute(sql.format(t=t)).fetchall() for t in ("ev", "ev_plain"))


def iceberg_rows(fig: FigProcess, settings: dict[str, str]) -> list[tuple[object, ...]]:
    catalog = open_catalog(make_config(fig.data_dir, cold=settings))
    data = catalog.load_table(("public", "ev")).scan(selected_fields=("id", "v", "amount")
                                                     ).to_arrow()
    return sorted(zip(*(data.column(c).to_pylist() for c in ("id", "v", "amount")),
                      strict=True))


def test_queries_on_s3_answer_like_the_twin(fig: tuple[FigProcess, dict[str, str]]) -> None:
    server, _ = fig
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        hot = psycopg.connect(server.hot_dsn)
        assert hot.execute("select count(*) from ev").fetchone()[0] < 3000 / 2  # type: ignore[index]
        hot.close()
        for route in ("auto", "cold"):
            conn.execute(f"set fig.route = '{route}'")
            for sql in ("select count(*), sum(amount), min(note) from {t}",
                        "select v, count(*), avg(amount) from {t} group by 1 order by 1",
                        "select id, note from {t} where v = 3 order by ts desc limit 7",
                        "select * from {t} where ts < now() - interval '40 days' order by id"):
                tiered, plain = answers(conn, sql)
                assert tiered == plain, (route, sql)
        conn.execute("set fig.route = 'cold'")
        plan = "\n".join(r[0] for r in conn.execute(
            "explain analyze select count(*) from ev where v = 3").fetchall())
        assert "Storage reads:" in plan and " requests, " in plan, plan
        assert s3.SECRET_KEY not in plan


def test_outage_pauses_cdc_fails_cold_reads_clearly_and_loses_nothing(
        fig: tuple[FigProcess, dict[str, str]], gate: s3.Gate) -> None:
    server, settings = fig
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        gate.close()
        try:
            for table in ("ev", "ev_plain"):
                # recent rows only: a change below the boundary would wait for cold storage
                conn.execute(ROWS_SQL.format(t=table, a=5001, b=5400, unit='second'))
                conn.execute(f"update {table} set v = -v where id % 9 = 0 "
                             "and ts > now() - interval '3 days'")
                conn.execute(f"delete from {table} where id % 13 = 0 and id > 5000 "
                             "and ts > now() - interval '3 days'")
            with pytest.raises(psycopg.errors.QueryCanceled, match="did not finish"):
                conn.execute("select fig.sync(interval '4 seconds')")
            error = conn.execute("select last_error from fig.cdc_status").fetchone()
            assert error is not None and error[0], "CDC shows no error during the outage"
            conn.execute("set fig.route = 'cold'")
            with pytest.raises(psycopg.Error) as failure:
                conn.execute("select count(*) from ev where v = 2")
            assert failure.value.sqlstate == "58030", failure.value
            assert s3.SECRET_KEY not in str(failure.value)
            conn.execute("reset fig.route")
            # hot-only statements go on
            assert conn.execute("select count(*) from ev_plain").fetchone() == (3400 - 31,)
        finally:
            gate.open()
        deadline = time.monotonic() + 120
        while True:
            try:
                conn.execute("select fig.sync(interval '30 seconds')")
                break
            except psycopg.errors.QueryCanceled:
                if time.monotonic() > deadline:
                    raise
        tiered, plain = answers(conn, "select id, v, amount from {t} order by id")
        assert tiered == plain
    with psycopg.connect(server.hot_dsn) as direct:
        every = direct.execute("select id, v, amount from ev_plain order by id").fetchall()
    assert iceberg_rows(server, settings) == [tuple(r) for r in every]
    assert all(isinstance(r[2], Decimal) for r in every[:1])


def test_secret_key_is_never_shown(fig: tuple[FigProcess, dict[str, str]]) -> None:
    server, _ = fig
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        shown = [conn.execute(f"select * from {view}").fetchall()
                 for view in ("fig.tables", "fig.cdc_status", "fig.tiered_tables")]
        shown.append(conn.execute("select setting from pg_settings").fetchall())
    assert s3.SECRET_KEY not in repr(shown)
    assert s3.SECRET_KEY not in server.log()
    assert s3.SECRET_KEY not in (server.data_dir / "server.json").read_text()


def test_drop_table_removes_its_objects(fig: tuple[FigProcess, dict[str, str]]) -> None:
    server, settings = fig
    bucket = settings["warehouse"].split("/")[2]
    prefix = "warehouse/public/gone/"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table gone (id int primary key, ts timestamptz not null)")
        conn.execute("insert into gone select g, now() - g * interval '1 hour' "
                     "from generate_series(1, 50) g")
        conn.execute("select fig.tier_table('gone', 'ts', interval '1 day')")
        conn.execute("select fig.sync(interval '60 seconds')")
        assert any(k.endswith(".parquet") for k in s3.keys(bucket, prefix))
        conn.execute("drop table gone")
    catalog = open_catalog(make_config(server.data_dir, cold=settings))
    deadline = time.monotonic() + 30
    while s3.keys(bucket, prefix) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert s3.keys(bucket, prefix) == []
    with pytest.raises(NoSuchTableError):
        catalog.load_table(("public", "gone"))


def test_catalog_in_the_hot_postgres_keeps_no_local_iceberg_state() -> None:
    """An object-store warehouse and a `postgresql://` catalog URI: nothing Iceberg on disk."""
    data_dir = make_data_dir()
    hot_port = free_port()
    env = s3.as_env(s3.new_warehouse())
    env.update({"FIG__HOT__PORT": str(hot_port),
                "FIG__COLD__CATALOG_URI": "postgresql+psycopg://postgres@/postgres"
                                          f"?host={data_dir}/pg/run&port={hot_port}"})
    server = start_fig(data_dir, env=env)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("create table pc (id int primary key, ts timestamptz not null)")
            conn.execute("insert into pc select g, now() - g * interval '1 day' "
                         "from generate_series(1, 40) g")
            conn.execute("select fig.tier_table('pc', 'ts', interval '10 days')")
            conn.execute("select fig.sync(interval '60 seconds')")
            conn.execute("select fig.run_retention()")
            assert conn.execute("select count(*), sum(id) from pc").fetchone() == (40, 820)
            assert conn.execute("select table_namespace, table_name from iceberg_tables"
                                ).fetchall() == [("public", "pc")]
        assert not (data_dir / "iceberg").exists()
    finally:
        server.stop()
