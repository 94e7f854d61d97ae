"""psycopg 3 through Fig, each answer compared with the same statement on Postgres directly."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pytest
from psycopg import errors

from tests.conftest import FigProcess


def both(fig: FigProcess, sql: str, params: object = None) -> tuple[list, list]:
    """The rows of one statement through Fig and directly."""
    out = []
    for dsn in (fig.dsn, fig.hot_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            out.append((cur.fetchall(), [(c.name, c.type_code) for c in cur.description]))
    return out[0], out[1]


@pytest.mark.parametrize("binary", [False, True])
def test_params_of_common_types_round_trip(fig: FigProcess, binary: bool) -> None:
    values = [1, 2**40, 1.5, decimal.Decimal("12.345"), "text ü", b"\x00\xff", True, None,
              dt.date(2024, 2, 29), dt.datetime(2024, 1, 2, 3, 4, 5, 6),
              dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
              uuid.UUID(int=7), [1, 2, 3], {"a": [1, None]}]
    sql = "select " + ", ".join(["%s"] * len(values))
    via_fig, direct = [], []
    for dsn, out in ((fig.dsn, via_fig), (fig.hot_dsn, direct)):
        with psycopg.connect(dsn) as conn, conn.cursor(binary=binary) as cur:
            cur.execute(sql, [psycopg.types.json.Jsonb(v) if isinstance(v, dict) else v
                              for v in values])
            out.append(cur.fetchall())
    assert via_fig == direct
    assert via_fig[0][0][:4] == (1, 2**40, 1.5, decimal.Decimal("12.345"))


def test_catalog_and_results_match_direct(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table if not exists relay_t (id int primary key, name text, "
                     "at timestamptz default now())")
        conn.execute("insert into relay_t (id, name) select g, 'n' || g "
                     "from generate_series(1, 500) g on conflict do nothing")
    for sql in ("select id, name from relay_t order by id",
                "select relname, relkind from pg_class where relname like 'relay%' order by 1",
                "show server_version", "select current_user, current_database()"):
        assert both(fig, sql)[0] == both(fig, sql)[1]


def test_error_keeps_connection_usable(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as conn:
        with pytest.raises(errors.UndefinedTable) as info:
            conn.execute("select * from no_such_table")
        assert info.value.sqlstate == "42P01"
        assert info.value.diag.statement_position == "15"
        conn.rollback()
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.rollback()
        assert conn.execute("select 42").fetchone() == (42,)


def test_transactions_and_savepoints(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create temp table tx (v int)")
        with conn.transaction():
            conn.execute("insert into tx values (1)")
            with pytest.raises(errors.UniqueViolation), conn.transaction():
                conn.execute("create unique index on tx (v)")
                conn.execute("insert into tx values (1)")
        conn.execute("begin")
        conn.execute("insert into tx values (2)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("rollback")
        assert conn.execute("select array_agg(v) from tx").fetchone() == ([1],)


def test_pipeline_executemany_and_named_cursor(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as conn:
        conn.execute("create temp table pm (id int, v text)")
        with conn.cursor() as cur:
            cur.executemany("insert into pm values (%s, %s)", [(i, str(i)) for i in range(300)])
        with conn.pipeline():
            for i in range(300, 310):
                conn.execute("insert into pm values (%s, %s)", (i, str(i)))
        with conn.cursor("named") as cur:
            cur.itersize = 7
            cur.execute("select id from pm order by id")
            assert [r[0] for r in cur] == list(range(310))


def test_copy_both_ways(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as conn:
        conn.execute("create temp table cp (id int, v text)")
        with conn.cursor() as cur:
            with cur.copy("copy cp from stdin") as copy:
                for i in range(1000):
                    copy.write_row((i, f"row {i}"))
            with cur.copy("copy (select * from cp order by id) to stdout (format binary)") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
        assert rows[0] == (0, "row 0") and len(rows) == 1000


def test_cancel_interrupts_running_statement(fig: FigProcess) -> None:
    import threading

    with psycopg.connect(fig.dsn) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute("select pg_sleep(20)")
        assert info.value.sqlstate == "57014"
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_listen_notify(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as listener, \
            psycopg.connect(fig.dsn, autocommit=True) as sender:
        listener.execute("listen fig_channel")
        sender.execute("notify fig_channel, 'hello'")
        note = next(listener.notifies(timeout=5))
        assert (note.channel, note.payload) == ("fig_channel", "hello")


def test_parameter_status_is_the_backends(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn) as via, psycopg.connect(fig.hot_dsn) as direct:
        for name in ("server_version", "server_encoding", "TimeZone", "integer_datetimes"):
            assert via.info.parameter_status(name) == direct.info.parameter_status(name)
        assert via.info.backend_pid != direct.info.backend_pid
