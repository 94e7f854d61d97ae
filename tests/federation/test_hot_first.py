"""Hot first (planner/preview.py): LIMIT without ORDER BY over rows computed one by one from a
tiered table is answered by hot alone when hot holds the LIMIT's rows, and reads cold when it
does not; either way the answer is that many rows of the statement over every row (those of
the never-tiered twin without the LIMIT). The generated oracle's `preview` shape checks the
same over random statements."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess
from tests.federation.test_oracle import build_oracle


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server, _ = build_oracle()
    yield server
    server.stop()


def hot_rows(fig: FigProcess, where: str = "") -> int:
    with psycopg.connect(fig.hot_dsn) as direct:
        row = direct.execute(f"select count(*) from events {where}").fetchone()
    assert row is not None
    return int(row[0])


def sample_of(conn: psycopg.Connection, statement: str, count: int, offset: int = 0,
              prepare: bool = False) -> list[tuple]:
    """The tiered answer, checked: min(count, rows - offset) rows of the twin's answer
    without the LIMIT, none more often than there."""
    limit = f" limit {count}" + (f" offset {offset}" if offset else "")
    got = conn.execute(statement.format(t="events") + limit, prepare=prepare).fetchall()
    every = Counter(conn.execute(statement.format(t="events_plain")).fetchall())
    assert len(got) == min(count, max(0, sum(every.values()) - offset)), statement
    assert not Counter(got) - every, statement
    return got


def explained(conn: psycopg.Connection, statement: str) -> str:
    rows = conn.execute("explain analyze " + statement).fetchall()
    return "\n".join(row[0] for row in rows)


HOT_FIRST = "Hot alone holds"


def files_read(conn: psycopg.Connection, marker: str) -> list[int | None]:
    """files_total of fig.query_log's rows for statements holding the marker (the log is
    written up to half a second late)."""
    deadline = time.monotonic() + 10
    while True:
        rows = conn.execute("select files_total from fig.query_log where statement like %s "
                            "and statement not like '%%query_log%%' order by id",
                            (f"%{marker}%",)).fetchall()
        if rows or time.monotonic() > deadline:
            return [row[0] for row in rows]
        time.sleep(0.2)


def test_hot_answers_a_preview_it_holds_the_rows_of(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for statement in ("select id, status, note from {t}",
                          "select * from (with source as (select * from {t}) select id, "
                          "amount from source where status = 404) as model_limit_subq"):
            sample_of(conn, statement, 10)
            sample_of(conn, statement, 10, prepare=True)  # extended protocol
            assert HOT_FIRST in explained(conn, statement.format(t="events") + " limit 10")
        conn.execute("select id /* hot-first-marker */ from events limit 3 -- to the end"
                     ).fetchall()
        conn.execute("select id /* both-tiers-marker */ from events limit 3 offset "
                     f"{hot_rows(fig)}").fetchall()
        assert files_read(conn, "hot-first-marker") in ([None], [0])  # cold never planned
        assert files_read(conn, "both-tiers-marker")[0]


def test_a_preview_hot_cannot_fill_reads_cold(fig: FigProcess) -> None:
    hot = hot_rows(fig)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        statement = "select id, ts from {t}"
        got = sample_of(conn, statement, hot + 25)
        assert len({row[0] for row in got}) == hot + 25
        assert HOT_FIRST not in explained(conn, f"select id, ts from events limit {hot + 25}")
        sample_of(conn, statement, 3, offset=hot - 1)  # the offset reaches past hot's rows
        # a filter only cold rows pass
        sample_of(conn, "select id from {t} where ts < now() - interval '60 days'", 5)


def test_in_a_block_and_on_error_the_statement_reads_both_tiers(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as conn:  # a transaction block: no probe
        sample_of(conn, "select id, country from {t} where status = 500", 7)
        conn.rollback()
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for table in ("events", "events_plain"):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(f"select id / (status - status) from {table} limit 5")


def test_a_probe_out_of_time_turns_hot_first_off_for_the_table_a_while() -> None:
    """[cold] hot_first_ms 1: a probe that scans hot's rows runs out of time; the statement
    still answers right, and the table's next preview reads both tiers (no probe)."""
    server, _ = build_oracle(env={"FIG__COLD__HOT_FIRST_MS": "1"})
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            slow = "select id from {t} where md5(note || md5(note || md5(note))) = 'x'"
            sample_of(conn, slow, 5)
            conn.execute("select id /* after-timeout */ from events limit 3").fetchall()
            assert files_read(conn, "after-timeout")[0]
    finally:
        server.stop()
