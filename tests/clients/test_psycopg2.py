"""psycopg2 (the driver dbt uses) through Fig, compared with psycopg2 against Postgres directly."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import uuid

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from tests.conftest import FigProcess


def connect(fig: FigProcess, direct: bool = False):  # type: ignore[no-untyped-def]
    conn = psycopg2.connect(fig.hot_tcp_dsn if direct else fig.dsn)
    conn.cursor().execute("set timezone = 'UTC'")
    conn.commit()
    return conn


def test_params_of_common_types(fig: FigProcess) -> None:
    values = (1, 2**40, 1.5, decimal.Decimal("12.345"), "text ü 'q'", b"\x00\xff", True, None,
              dt.date(2024, 2, 29), dt.datetime(2024, 1, 2, 3, 4, 5, 6),
              dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), [1, 2, 3],
              psycopg2.extras.Json({"a": [1, None]}), str(uuid.UUID(int=7)),
              dt.timedelta(days=1, seconds=5))
    sql = "select " + ", ".join(["%s"] * len(values))
    out = []
    for direct in (False, True):
        with connect(fig, direct) as conn, conn.cursor() as cur:
            cur.execute(sql, values)
            out.append((cur.fetchall(), [(c.name, c.type_code) for c in cur.description]))
            cur.execute("select %(a)s || %(b)s, %(a)s", {"a": "x", "b": "y"})
            out.append(cur.fetchall())
        conn.close()
    assert out[:2] == out[2:]
    assert out[0][0][0][:4] == (1, 2**40, 1.5, decimal.Decimal("12.345"))


def test_transactions_commit_and_rollback(fig: FigProcess) -> None:
    conn = connect(fig)
    try:
        cur = conn.cursor()
        cur.execute("drop table if exists cl_pg2_tx")
        cur.execute("create table cl_pg2_tx (v int)")
        conn.commit()
        cur.execute("insert into cl_pg2_tx values (1)")
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        conn.rollback()
        cur.execute("insert into cl_pg2_tx values (2)")
        conn.commit()
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        conn.close()
    direct = connect(fig, direct=True)
    with direct.cursor() as cur:
        cur.execute("select array_agg(v) from cl_pg2_tx")
        assert cur.fetchone() == ([2],)
    direct.close()


@pytest.mark.parametrize("sql", ["select * from cl_pg2_missing", "select 1/0",
                                 "select 'x'::int", "selec 1"])
def test_errors_match_and_connection_usable_after(fig: FigProcess, sql: str) -> None:
    seen = []
    for direct in (False, True):
        conn = connect(fig, direct)
        cur = conn.cursor()
        with pytest.raises(psycopg2.Error) as info:
            cur.execute(sql)
        error = info.value
        seen.append((type(error), error.pgcode, error.pgerror, error.diag.severity,
                     error.diag.message_primary, error.diag.statement_position))
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("select 1")
        conn.rollback()
        cur.execute("select 42")
        assert cur.fetchone() == (42,)
        conn.close()
    assert seen[0] == seen[1]
    assert seen[0][1] is not None and len(seen[0][1]) == 5


def test_copy_expert_both_ways(fig: FigProcess) -> None:
    outputs = []
    for direct in (False, True):
        conn = connect(fig, direct)
        cur = conn.cursor()
        cur.execute("create temp table cp (id int, name text, at timestamptz)")
        data = "".join(f"{i},name {i},2024-01-0{i % 9 + 1} 00:00:00+00\n" for i in range(500))
        cur.copy_expert("copy cp from stdin with (format csv)", io.StringIO(data))
        assert cur.rowcount == 500
        out = io.StringIO()
        cur.copy_expert("copy (select * from cp order by id) to stdout with (format csv, header)",
                        out)
        outputs.append(out.getvalue())
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
            cur.copy_expert("copy cp from stdin with (format csv)", io.StringIO("x,y,z\n"))
        conn.rollback()
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
        conn.close()
    assert outputs[0] == outputs[1]
    assert outputs[0].count("\n") == 501


def test_server_side_cursor_and_notices(fig: FigProcess) -> None:
    results = []
    for direct in (False, True):
        conn = connect(fig, direct)
        cur = conn.cursor("named")
        cur.itersize = 13
        cur.execute("select g, g::text from generate_series(1, 100) g")
        rows = list(cur)
        plain = conn.cursor()
        plain.execute("do $$ begin raise notice 'hello %', 42; end $$")
        results.append((rows, conn.notices[-1:]))
        conn.close()
    assert results[0] == results[1]
    assert len(results[0][0]) == 100
