"""Every statement kind that reads a tiered table reads all of its rows, or is refused (0A000).

Each case runs the same statement over the tiered `events` (after retention) and over the
never-tiered twin `events_plain`, through Fig, and compares what the client sees.
"""

from __future__ import annotations

import io
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


def both(conn: psycopg.Connection, template: str) -> tuple[list, list]:
    """Rows of the template's last statement run for each table ({t}: events or its twin)."""
    out = []
    for name in ("events", "events_plain"):
        cur = conn.execute(template.format(t=name, n=name.replace("events", "k")))
        out.append(cur.fetchall() if cur.description else [])
    return out[0], out[1]


def test_create_table_as_and_select_into(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("events", "events_plain"):
            conn.execute(f"create table ctas_{name} as select id, amount from {name} "
                         "where status = 500")
            conn.execute(f"select id, note into into_{name} from {name} where user_id = 3")
        got, want = both(conn, "select count(*), sum(amount), sum(id) from ctas_{t}")
        assert got == want and got[0][0] > 0
        got, want = both(conn, "select count(*), count(note), sum(id) from into_{t}")
        assert got == want and got[0][0] > 0


def test_insert_select_reads_every_tier(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("events", "events_plain"):
            conn.execute(f"create table sink_{name} (id bigint, ts timestamptz)")
            tag = conn.execute(f"insert into sink_{name} select id, ts from {name} "
                               "where status = 404").statusmessage
            assert tag.startswith("INSERT 0 ") and int(tag.split()[-1]) > 0
        got, want = both(conn, "select count(*), min(ts), max(ts) from sink_{t}")
        assert got == want


def test_copy_to_of_a_query_and_of_the_table(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        outputs = []
        for name in ("events", "events_plain"):
            for statement in (f"copy (select id, ts, amount from {name} where status = 500 "
                              "order by id) to stdout", f"copy {name} (id, note) to stdout"):
                buffer = io.BytesIO()
                with conn.cursor().copy(statement) as copy:
                    for chunk in copy:
                        buffer.write(chunk)
                outputs.append(sorted(buffer.getvalue().splitlines()))
        assert outputs[0] == outputs[2] and len(outputs[0]) > 2000
        assert outputs[1] == outputs[3] and len(outputs[1]) == 24000


def test_cursor_reads_every_tier(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as conn:
        rows = []
        for name in ("events", "events_plain"):
            conn.execute(f"declare c_{name} cursor for select id, ts from {name} "
                         "where status = 500 order by id")
            rows.append(conn.execute(f"fetch 5000 from c_{name}").fetchall())
        conn.rollback()
    assert rows[0] == rows[1] and len(rows[0]) == 2400


def test_views_and_views_over_views(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("events", "events_plain"):
            conn.execute(f"create view v1_{name} as select id, ts, status, amount as amt "
                         f"from {name} where status <> 200")
            conn.execute(f"create view v2_{name} as select * from v1_{name} where amt > 10")
        got, want = both(conn, "select status, count(*), sum(amt) from v2_{t} "
                               "group by status order by status")
        assert got == want and got
        got, want = both(conn, "select v.id, v.ts from v1_{t} v where v.status = 404 "
                               "order by v.ts desc, v.id limit 7")
        assert got == want and len(got) == 7


def test_names_fold_and_follow_search_path(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        got = conn.execute("SELECT COUNT(*), SUM(AMOUNT) FROM EVENTS WHERE STATUS = 500"
                           ).fetchall()
        want = conn.execute("select count(*), sum(amount) from events_plain "
                            "where status = 500").fetchall()
        assert got == want
        conn.execute("create schema shadow")
        conn.execute("create table shadow.events (id bigint)")
        conn.execute("insert into shadow.events values (1), (2)")
        conn.execute("set search_path = shadow, public")
        assert conn.execute("select count(*) from events").fetchall() == [(2,)]
        conn.execute("set search_path = public")
        assert conn.execute("select count(*) from events").fetchall() == [(24000,)]


def test_copy_from_stdin_into_a_tiered_table(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with conn.cursor().copy("copy events (id, ts, day, status) from stdin") as copy:
            copy.write_row((900001, "2026-01-01 00:00:00+00", "2026-01-01", 201))
            copy.write_row((900002, "2026-01-02 00:00:00+00", "2026-01-02", 201))
        conn.execute("select fig.sync()")  # rows below the boundary are read from cold
        assert conn.execute("select count(*) from events where status = 201"
                            ).fetchall() == [(2,)]
        conn.execute("delete from events where status = 201 and id > 900000")
        conn.execute("select fig.sync()")
        assert conn.execute("select count(*) from events where status = 201"
                            ).fetchall() == [(0,)]


@pytest.mark.parametrize("statement", [
    "prepare p1 as select * from events",
    "create materialized view mv_events as select status, count(*) from events group by 1",
    "insert into events (id, ts, day, status) values (1, now(), current_date, 1) "
    "on conflict do nothing",
    "alter table events add column flag int default 7",
    "alter table events alter column status type bigint using status * 2",
    "alter table events rename column note to memo",
    "alter table events drop column note",
    "truncate events",
])
def test_refused_kinds_name_the_construct(fig: FigProcess, statement: str) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(statement)
        got, want = both(conn, "select count(*), count(note), sum(status) from {t}")
        assert got == want  # both tiers left as they were


FUNCTIONS = [
    "create function fn_count() returns bigint language sql stable "
    "as 'select count(*) from events'",
    "create function fn_pl(s int) returns bigint language plpgsql stable as $$ "
    "begin return (select count(*) from public.EVENTS where status = s); end $$",
    "create function fn_atomic() returns bigint language sql stable "
    "begin atomic select count(*) from events where status = 500; end",
    "create function fn_outer() returns bigint language sql stable "
    "as 'select fn_count() + 1'",  # reads events through another function
    "create function fn_rows() returns setof events language sql stable "
    "as 'select * from events'",  # inlined by Postgres's planner: still hot rows only
    "create function fn_view() returns bigint language sql stable "
    "as 'select count(*) from v_over_events'",  # through a view
    "create procedure pr_copy() language sql as "
    "'insert into fn_sink select count(*) from events'",
    "create view v_calling as select fn_count() as n",  # a view calling one
    "create table trg_target (n bigint)",
    "create function fn_trg() returns trigger language plpgsql as $$ begin "
    "insert into fn_sink select count(*) from events; return new; end $$",
    "create trigger trg_count after insert on trg_target for each row execute function fn_trg()",
]


@pytest.mark.parametrize("call", [
    "select fn_count()", "select public.fn_pl(500)", "select fn_atomic()",
    "select fn_outer()", "select count(*) from fn_rows()",
    "select id from events_plain where id < fn_count() order by id limit 1",
    "select fn_view()", "call pr_copy()", "select * from v_calling",
    "create table fn_ctas as select fn_count()",
    "do $$ begin insert into fn_sink select count(*) from events; end $$",
    "insert into trg_target values (1)",
    "with w as (insert into trg_target values (2) returning n) select * from w",
])
def test_functions_reading_a_tiered_table_are_refused(fig: FigProcess, call: str) -> None:
    """A function's own statements run inside Postgres, over hot rows only: a statement that
    would run one is refused, naming it, instead of answering from hot rows alone."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_proc where proname = 'fn_count'").fetchall():
            conn.execute("create view v_over_events as select * from events")
            conn.execute("create table fn_sink (n bigint)")
            for statement in FUNCTIONS:
                conn.execute(statement)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute(call)
        assert any(named in str(refused.value) for named in (
            "reads events", "reads v_over_events", "naming events", "which reads events")
        ), refused.value
        assert not conn.execute("select * from fn_sink").fetchall()
        with pytest.raises(psycopg.errors.FeatureNotSupported):  # the extended protocol
            conn.execute("select fn_count() + %s", (1,), prepare=call.endswith("()"))
        # Functions over never-tiered tables run; fig.route = 'hot' asks for hot rows only.
        conn.execute("create or replace function fn_plain() returns bigint language sql "
                     "stable as 'select count(*) from events_plain'")
        assert conn.execute("select fn_plain()").fetchall() == [(24000,)]
        conn.execute("do $$ begin perform count(*) from events_plain; end $$")
        conn.execute("delete from trg_target")  # the trigger fires on INSERT only
        with pytest.raises(psycopg.errors.FeatureNotSupported), \
                conn.cursor().copy("copy trg_target from stdin") as copy:
            copy.write_row((3,))
        conn.execute("set fig.route = 'hot'")
        hot = conn.execute("select count(*) from events").fetchall()
        assert conn.execute("select fn_count()").fetchall() == hot


def test_pipelined_unnamed_statements_keep_their_own_cold_rows(fig: FigProcess) -> None:
    """psycopg's pipeline mode: several Parse/Bind/Execute before one Sync."""
    answers = {}
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("events", "events_plain"):
            with conn.pipeline():
                cursors = [conn.execute(f"select id, ts from {name} where status = {status} "
                                        "and user_id >= %s order by ts, id limit 5", (0,))
                           for status in (500, 404, 200)]
                cursors.append(conn.execute(f"select count(*) from {name} where note like %s",
                                            ("n1%",)))
            answers[name] = [c.fetchall() for c in cursors]
    assert answers["events"] == answers["events_plain"]


def test_cold_rows_of_one_statement_never_reach_the_next(fig: FigProcess) -> None:
    """A session's temp table for a shape's cold rows is emptied before each statement: by
    DELETE while few rows went through it, by TRUNCATE after more than
    federation.TRUNCATE_AFTER_ROWS (10,000): large and small reads alternate across both."""
    large = "select id, amount from {t} where user_id >= %s order by id"
    small = "select id, amount from {t} where user_id >= %s and status = 500 order by id"
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        sizes = []
        for sql in (small, large, small, large, large, small):
            got, want = (conn.execute(sql.format(t=name), (0,)).fetchall()
                         for name in ("events", "events_plain"))
            assert got == want
            sizes.append(len(got))
    assert sizes[1] > 10_000 > sizes[0] > 0, sizes


QUERY = ("select status, count(*), sum(amount) from {t} where note like 'n1%' "
         "group by status order by status")


@pytest.mark.parametrize("setup", [
    "set default_transaction_read_only = on",
    "set session characteristics as transaction read only",
])
def test_read_only_sessions(fig: FigProcess, setup: str) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute(setup)
        got, want = both(conn, QUERY)
        assert got == want and got
        for begin in ("begin read only", "begin isolation level serializable read only",
                      "begin isolation level repeatable read"):
            conn.execute(begin)
            got, want = both(conn, QUERY)
            conn.execute("commit")
            assert got == want, begin


def test_first_read_inside_a_read_only_block_is_refused_clearly(fig: FigProcess) -> None:
    query = "select count(*) from {t} where country = 'BR' and user_id = 3"
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        want = conn.execute(query.format(t="events_plain")).fetchall()
        conn.execute("begin read only")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="read-only"):
            conn.execute(query.format(t="events"))
        conn.execute("rollback")
        assert conn.execute(query.format(t="events")).fetchall() == want
        conn.execute("begin read only")
        assert conn.execute(query.format(t="events")).fetchall() == want
        conn.execute("commit")


def test_uuid_and_other_types_read_from_cold(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("typed", "typed_plain"):
            conn.execute(f"""create table {name} (id int primary key, ts timestamptz not null,
                u uuid, j jsonb, b bytea, a text[], c char(3), n numeric(10,4))""")
            conn.execute(f"""insert into {name} select g,
                date_trunc('day', now()) - g * interval '1 day',
                md5(g::text)::uuid, jsonb_build_object('k', g), decode(md5(g::text), 'hex'),
                array['x' || g, null], 'ab', g / 7.0
                from generate_series(1, 40) g""")
        conn.execute("select fig.tier_table('typed', 'ts', interval '10 days')")
        conn.execute("select fig.sync(interval '60 seconds')")
        conn.execute("select fig.run_retention()")
        for query in ("select * from {t} order by id",
                      "select u, count(*) from {t} group by u order by u",
                      "select id from {t} where u = md5('7')::uuid"):
            got = conn.execute(query.format(t="typed")).fetchall()
            want = conn.execute(query.format(t="typed_plain")).fetchall()
            assert got == want, query


def test_asyncpg_prepares_with_flush(fig: FigProcess) -> None:
    """asyncpg sends Parse, Describe, Flush and waits for the answers before any Sync."""
    import asyncio

    import asyncpg

    async def run() -> tuple[list, list]:
        conn = await asyncpg.connect(host=fig.host, port=fig.port, user="postgres",
                                     database="postgres")
        try:
            got = await asyncio.wait_for(conn.fetch(
                "select status, count(*) from events where user_id = $1 group by 1 "
                "order by 1", 7), 30)
            want = await conn.fetch("select status, count(*) from events_plain "
                                    "where user_id = $1 group by 1 order by 1", 7)
            return [tuple(r) for r in got], [tuple(r) for r in want]
        finally:
            await conn.close()

    got, want = asyncio.run(run())
    assert got == want and got


def test_an_error_of_figs_in_a_flush_batch_keeps_the_asyncpg_session(fig: FigProcess) -> None:
    """Fig refusing a statement asyncpg prepares (Parse, Describe, Flush) answers the error
    alone; asyncpg's Sync then gets the one ReadyForQuery. A second ReadyForQuery broke the
    connection (the generated oracle found it). In a block, the block is failed, as on
    Postgres."""
    import asyncio

    import asyncpg

    async def run() -> list[object]:
        conn = await asyncpg.connect(host=fig.host, port=fig.port, user="postgres",
                                     database="postgres")
        seen: list[object] = []
        try:
            for _ in range(2):
                with pytest.raises(asyncpg.FeatureNotSupportedError):
                    await conn.fetch("select * from events for update")
                seen.append(await conn.fetchval("select count(*) from events_plain"))
            transaction = conn.transaction()
            await transaction.start()
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                await conn.fetch("select * from events for update")
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.fetchval("select 1")
            await transaction.rollback()
            seen.append(await conn.fetchval("select count(*) from events where user_id = $1",
                                            7))
            seen.append(await conn.fetchval("select count(*) from events_plain "
                                            "where user_id = $1", 7))
        finally:
            await conn.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(run(), 60))
    assert seen[0] == seen[1] and seen[2] == seen[3] and seen[2]


def boundary_locks(fig: FigProcess) -> int:
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        row = direct.execute("select count(*) from pg_locks where locktype = 'advisory' "
                             "and objid = 7203 and granted").fetchone()
    assert row is not None
    return int(row[0])


def test_a_failed_block_does_not_keep_the_boundary_lock(fig: FigProcess) -> None:
    """A multi-statement query that opens a block and fails in it left Fig's boundary lock
    held (nothing can run in a failed block), which stops retention: it is released as soon
    as the client's ROLLBACK ends the block."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("begin; select count(*) from events; select 1/0; commit")
        conn.execute("rollback")
        assert boundary_locks(fig) == 0
        assert conn.execute("select count(*) > 0 from events").fetchone() == (True,)
        assert boundary_locks(fig) == 0
