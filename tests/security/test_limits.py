"""Limits: max connections, per-user concurrent cold statements and statement rate, and
statement_timeout honoured by cold work; none of them affects other users."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

MAX_CONNECTIONS = 6
BURST = 20


@pytest.fixture(scope="module")
def limited() -> Iterator[FigProcess]:
    fig = start_fig(env={"FIG__SERVER__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                         "FIG__LIMITS__COLD_QUERIES_PER_USER": "1",
                         "FIG__LIMITS__QUERIES_PER_SECOND_PER_USER": "5",
                         "FIG__LIMITS__QUERY_BURST_PER_USER": str(BURST)})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table lim_events (id bigint primary key, ts timestamptz not null, "
                     "k int, v text)")
        conn.execute("insert into lim_events select g, %s::timestamptz + g * interval '1 minute',"
                     " g %% 1000, md5(g::text) from generate_series(1, 200000) g", (start,))
        conn.execute("select fig.tier_table('lim_events', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
        conn.execute("drop role if exists ratey")
        conn.execute("create role ratey login")
        conn.execute("drop role if exists sleepy")
        conn.execute("create role sleepy login")
        conn.execute("grant select on lim_events to sleepy")
    yield fig
    fig.stop()


def dsn_as(fig: FigProcess, user: str) -> str:
    return fig.dsn.replace("user=postgres", f"user={user}")


def test_max_connections_53300(limited: FigProcess) -> None:
    time.sleep(0.5)  # sessions of the fixture's setup have closed
    conns = [psycopg.connect(limited.dsn) for _ in range(MAX_CONNECTIONS)]
    try:
        async def one_more() -> None:
            await asyncpg.connect(host=limited.host, port=limited.port, user="postgres",
                                  database="postgres", ssl=False)
        with pytest.raises(asyncpg.TooManyConnectionsError) as info:
            asyncio.run(one_more())
        assert info.value.sqlstate == "53300"
        assert str(info.value) == "sorry, too many clients already"
        conns.pop().close()
        time.sleep(0.2)
        with psycopg.connect(limited.dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def test_rate_limit_per_user(limited: FigProcess) -> None:
    refused = 0
    with psycopg.connect(dsn_as(limited, "ratey"), autocommit=True) as conn:
        for i in range(BURST + 15):
            try:
                # alternate simple and extended protocol
                conn.execute("select %s::int", (i,), prepare=False) if i % 2 else \
                    conn.execute("select 1")
            except psycopg.errors.ConfigurationLimitExceeded as exc:
                assert 'rate limit exceeded for user "ratey"' in str(exc)
                refused += 1
        assert refused >= 10
        # other users are not limited by ratey's rate
        with psycopg.connect(limited.dsn) as other:
            assert other.execute("select 2").fetchone() == (2,)
        # the refused session stays usable, and a refusal inside a transaction fails it
        time.sleep(1.0)
        assert conn.execute("select 3").fetchone() == (3,)
        conn.execute("begin")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            for _ in range(BURST + 5):
                conn.execute("select 5")
        time.sleep(1.0)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 6")
        conn.execute("rollback")
        assert conn.execute("select 6").fetchone() == (6,)


COLD_SLOW = "select pg_sleep(2), count(*) from lim_events"


def test_cold_statements_per_user(limited: FigProcess) -> None:
    started = threading.Event()
    outcome: list[object] = []

    def slow() -> None:
        with psycopg.connect(dsn_as(limited, "sleepy"), autocommit=True) as conn:
            conn.execute("set fig.route = 'cold'")
            started.set()
            outcome.append(conn.execute(COLD_SLOW).fetchone())

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        started.wait(10)
        time.sleep(0.7)
        with psycopg.connect(dsn_as(limited, "sleepy"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded,
                               match="too many concurrent statements"):
                conn.execute("select count(*) from lim_events")
            # another user has its own slots
            with psycopg.connect(limited.dsn) as other:
                row = other.execute("select count(*) from lim_events").fetchone()
                assert row == (200000,)
            thread.join(30)
            assert outcome and outcome[0] == ("", 200000)
            assert conn.execute("select count(*) from lim_events").fetchone() == (200000,)
    finally:
        thread.join(30)


def test_statement_timeout_stops_cold_work(limited: FigProcess) -> None:
    with psycopg.connect(limited.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        sql = "select k, count(distinct v), max(v) from lim_events group by k order by 2 desc"
        started = time.monotonic()
        conn.execute(sql).fetchall()
        full = time.monotonic() - started
        conn.execute("set statement_timeout = '5ms'")
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(sql)
        conn.execute("set statement_timeout = 0")
        assert conn.execute("select count(*) from lim_events").fetchone() == (200000,)
        assert full > 0.005, "the cold statement is too quick to show the timeout"
