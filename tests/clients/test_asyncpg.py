"""asyncpg (binary protocol, named statements) through Fig, compared with asyncpg direct."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.conftest import FigProcess

Body = Callable[[asyncpg.Connection], Awaitable[Any]]


async def connect(fig: FigProcess, direct: bool) -> asyncpg.Connection:
    port = fig.hot_port if direct else fig.port
    host = "127.0.0.1" if direct else fig.host
    return await asyncpg.connect(host=host, port=port, user="postgres", database="postgres",
                                 server_settings={"timezone": "UTC"}, timeout=30)


def both(fig: FigProcess, body: Body) -> tuple[Any, Any]:
    """Run the same coroutine body through Fig and directly; return both results."""
    async def run(direct: bool) -> Any:
        conn = await connect(fig, direct)
        try:
            return await body(conn)
        finally:
            await conn.close()

    async def main() -> tuple[Any, Any]:
        return await run(False), await run(True)

    return asyncio.run(main())


def test_prepared_statements_and_binary_types(fig: FigProcess) -> None:
    values = [decimal.Decimal("-12345678901234567890.000123"), decimal.Decimal("NaN"),
              dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC),
              uuid.UUID("12345678-1234-5678-1234-567812345678"), '{"a": [1, 2, {"b": null}]}',
              [[1, 2], [3, None]], ["x", None, "z ü"],
              dt.timedelta(days=-3, hours=4, microseconds=7), b"\x00\x01\xff",
              dt.date(1999, 12, 31), 2**62, 1.25]
    types = ["numeric", "numeric", "timestamptz", "uuid", "jsonb", "int4[]", "text[]",
             "interval", "bytea", "date", "int8", "float8"]
    sql = "select " + ", ".join(f"${i + 1}::{t}" for i, t in enumerate(types))

    async def body(conn: asyncpg.Connection) -> Any:
        stmt = await conn.prepare(sql)
        first = await stmt.fetchrow(*values)
        again = await stmt.fetchrow(*values)
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        params = [p.name for p in stmt.get_parameters()]
        many = await conn.fetch("select g, g * 1.5::numeric, now() - now() as z "
                                "from generate_series(1, 300) g where g > $1", 10)
        return list(first), list(again), attrs, params, [tuple(r) for r in many]

    via, direct = both(fig, body)
    assert repr(via) == repr(direct)  # repr: NaN never equals itself
    assert via[0][0] == values[0] and via[0][3] == values[3]
    assert len(via[4]) == 290


def test_copy_records_and_copy_from_query(fig: FigProcess) -> None:
    rows = [(i, f"name {i}", dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i),
             [i, -i]) for i in range(1000)]

    async def body(conn: asyncpg.Connection) -> Any:
        await conn.execute("create temp table cp (id int, name text, at timestamptz, "
                           "pair int[])")
        status = await conn.copy_records_to_table("cp", records=rows)
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            chunks.append(chunk)

        out_status = await conn.copy_from_query(
            "select * from cp where id % $1 = 0 order by id", 7, output=sink, format="csv")
        back = await conn.fetch("select * from cp order by id")
        return status, out_status, b"".join(chunks), [tuple(r) for r in back]

    via, direct = both(fig, body)
    assert via == direct
    assert via[0] == "COPY 1000" and via[3] == rows


@pytest.mark.parametrize("sql", ["select * from cl_apg_missing", "select 1/0",
                                 "select $1::int", "insert into nope values (1"])
def test_errors_with_sqlstate_and_connection_usable(fig: FigProcess, sql: str) -> None:
    async def body(conn: asyncpg.Connection) -> Any:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetch(sql, "not an int") if "$1" in sql else await conn.fetch(sql)
        error = info.value
        fields = (type(error).__name__, error.sqlstate, error.severity, error.message,
                  error.position, error.detail, error.hint)
        assert await conn.fetchval("select 42") == 42
        return fields

    via, direct = both(fig, body)
    assert via == direct
    assert via[1] is not None and len(via[1]) == 5


def test_cursor_in_transaction(fig: FigProcess) -> None:
    async def body(conn: asyncpg.Connection) -> Any:
        got = []
        async with conn.transaction():
            async for record in conn.cursor("select g from generate_series(1, 250) g",
                                            prefetch=17):
                got.append(record[0])
            cur = await conn.cursor("select g, g::text from generate_series(1, 50) g")
            first = await cur.fetch(5)
            await cur.forward(10)
            later = await cur.fetchrow()
        return got, [tuple(r) for r in first], tuple(later) if later else None

    via, direct = both(fig, body)
    assert via == direct
    assert via[0] == list(range(1, 251)) and via[2] == (16, "16")


def test_executemany_and_transaction_rollback(fig: FigProcess) -> None:
    async def body(conn: asyncpg.Connection) -> Any:
        await conn.execute("create temp table em (id int primary key, v text)")
        await conn.executemany("insert into em values ($1, $2)",
                               [(i, str(i)) for i in range(200)])
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("insert into em values (1000, 'x')")
                await conn.execute("insert into em values (1, 'dup')")
        return await conn.fetchval("select count(*) from em")

    via, direct = both(fig, body)
    assert via == direct == 200
