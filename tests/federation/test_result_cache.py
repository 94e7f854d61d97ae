"""The cold result cache through Fig: a statement run again is answered from results kept by
the first run, and stays exactly the never-tiered twin's answer when cold rows are added,
updated or deleted in between; fig.result_cache = off runs every task."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

ROWS = 20_000
STATEMENTS = (
    "select status, count(*), sum(amount), min(ts) from {t} group by 1 order by 1",
    "select count(distinct user_id) from {t} where status <> 200",
    "select date_trunc('day', ts) as day, count(*) from {t} group by 1 order by 1",
    "select id, amount from {t} where user_id = 7 order by id",
)


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={"FIG__TIERING__RETENTION_INTERVAL_S": "3600"})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            for name in ("ev", "ev_twin"):
                conn.execute(f"create table {name} (id bigint primary key, ts timestamptz "
                             "not null, user_id int, status int, amount numeric(10,2))")
                conn.execute(f"insert into {name} select g, %s::timestamptz + g * interval "
                             "'1 minute', g %% 97, (array[200, 404, 500])[1 + g %% 3], "
                             "(g %% 1000) / 7.0 from generate_series(1, %s) g", (start, ROWS))
            conn.execute("select fig.tier_table('ev', 'ts', interval '1 day')")
            conn.execute("select fig.sync(interval '120 seconds')")
            conn.execute("select fig.run_retention()")
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def same_as_twin(conn: psycopg.Connection) -> None:
    for statement in STATEMENTS:
        got = conn.execute(statement.format(t="ev")).fetchall()
        assert got == conn.execute(statement.format(t="ev_twin")).fetchall(), statement


def explain(conn: psycopg.Connection, statement: str) -> str:
    rows = conn.execute("explain analyze " + statement.format(t="ev")).fetchall()
    return "\n".join(row[0] for row in rows)


def test_a_statement_run_again_reads_nothing_and_answers_the_same(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        same_as_twin(conn)
        before = fig.metric("fig_cold_units_cached_total")
        same_as_twin(conn)
        assert fig.metric("fig_cold_units_cached_total") > before
        plan = explain(conn, STATEMENTS[0])
        assert "Result cache: " in plan and "Bytes read: 0 of" in plan, plan


def test_cold_rows_changed_in_between_are_seen(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        same_as_twin(conn)  # results kept
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=15)
        for name in ("ev", "ev_twin"):
            conn.execute(f"insert into {name} values (%s, %s, 7, 500, 12.5)", (ROWS + 1, old))
            conn.execute(f"update {name} set amount = amount + 1000, status = 404 "
                         "where id in (10, 11, 5000)")
            conn.execute(f"delete from {name} where id between 100 and 140")
        conn.execute("select fig.sync(interval '120 seconds')")
        for route in ("cold", "auto"):
            conn.execute(f"set fig.route = '{route}'")
            same_as_twin(conn)


def test_off_runs_every_task(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        same_as_twin(conn)
        conn.execute("set fig.result_cache = off")
        plan = explain(conn, STATEMENTS[0])
        assert "Result cache" not in plan and "Bytes read: 0 of" not in plan, plan
        same_as_twin(conn)
        conn.execute("set fig.result_cache = 'maybe'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"fig\.result_cache"):
            conn.execute("select count(*) from ev")
