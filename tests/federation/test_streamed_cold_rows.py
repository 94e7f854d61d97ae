"""A cold part that is a plain scan is copied into Postgres while the cold engine still scans
([cold] stream_buffer_mb bounds what waits in the server): with a budget smaller than the
result, the answer is still exactly the never-tiered twin's, and a session goes on after one
of its streamed statements fails."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

ROWS = 150_000  # about 13 MB of cold rows: several pieces of the engine's 4 MB


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={"FIG__COLD__STREAM_BUFFER_MB": "1",
                            "FIG__TIERING__RETENTION_INTERVAL_S": "3600"})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            for name in ("wide", "wide_twin"):
                conn.execute(f"create table {name} (id bigint primary key, ts timestamptz "
                             "not null, note text)")
                conn.execute(f"insert into {name} select g, %s::timestamptz + g * interval "
                             "'10 seconds', repeat(md5(g::text), 2) "
                             "from generate_series(1, %s) g", (start, ROWS))
            conn.execute("select fig.tier_table('wide', 'ts', interval '1 day')")
            conn.execute("select fig.sync(interval '120 seconds')")
            conn.execute("select fig.run_retention()")
        with psycopg.connect(server.hot_dsn) as direct:
            row = direct.execute("select count(*) from wide").fetchone()
            assert row is not None and row[0] < ROWS // 10, "retention moved few rows"
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.mark.parametrize("where", ["true", "id % 3 = 1", "note like 'a%'"])
def test_streamed_rows_equal_the_twins(fig: FigProcess, where: str) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        before = fig.metric("fig_cold_rows_streamed_total")
        got = conn.execute(f"select id, note, ts from wide where {where}").fetchall()
        assert fig.metric("fig_cold_rows_streamed_total") > before, "the cold part was not streamed"
        want = conn.execute(f"select id, note, ts from wide_twin where {where}").fetchall()
        assert sorted(got) == sorted(want) and len(got) > 0
        row = conn.execute(f"select count(*), sum(length(note)) from (select note from wide "
                           f"where {where} offset 0) s").fetchone()
        assert row == conn.execute(f"select count(*), sum(length(note)) from (select note "
                                   f"from wide_twin where {where} offset 0) s").fetchone()


def test_a_failed_stream_leaves_the_session_usable(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select id, 1 / (id - 140000) from wide").fetchall()
        assert conn.execute("select count(*) from wide where id <= 1000").fetchone() == (1000,)
        conn.execute("begin")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select id, 1 / (id - 140000) from wide").fetchall()
        conn.execute("rollback")
        got = conn.execute("select id from wide where id % 1000 = 0").fetchall()
        assert sorted(got) == [(n,) for n in range(1000, ROWS + 1, 1000)]


def test_many_sessions_stream_at_once(fig: FigProcess) -> None:
    """More streamed statements at once than asyncio's default executor has threads (their
    scans wait for room while the COPYs encode): every one finishes with the twin's rows."""
    sql = "select id, note from {} where id % 5 = 2"
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        want = sorted(conn.execute(sql.format("wide_twin")).fetchall())

    def run() -> list[tuple[int, str]]:
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            return sorted(conn.execute(sql.format("wide")).fetchall())

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        futures = [pool.submit(run) for _ in range(10)]
        for future in futures:
            assert future.result(timeout=300) == want
