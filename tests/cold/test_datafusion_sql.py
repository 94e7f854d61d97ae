"""DataFusion over the guarded SQL returns what DuckDB returns, on the filter shapes whose
column intervals DataFusion 55 narrows wrongly (cold/datafusion_sql.py)."""

from __future__ import annotations

import datetime as dt
import random

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from datafusion import SessionContext

from fig_server.cold.datafusion_sql import datafusion_sql


def _table() -> pa.Table:
    rng = random.Random(1)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    n = 400
    return pa.table({
        "ts": pa.array([start + dt.timedelta(seconds=rng.randint(0, 3 * 86_400))
                        for _ in range(n)], pa.timestamp("us", tz="UTC")),
        "i": pa.array([rng.randint(0, 100) for _ in range(n)], pa.int64()),
        "f": pa.array([rng.uniform(0, 10) for _ in range(n)]),
    })


# (Fig's cold SQL, the same for DuckDB where its spelling differs: `/` on integers)
SHAPES = [
    ("SELECT ts FROM u WHERE CAST(ts AS DATE) = '2024-01-02' ORDER BY ts DESC LIMIT 3", None),
    ("SELECT ts FROM u WHERE CAST(ts AS DATE) = '2024-01-02' ORDER BY ts", None),
    ("SELECT ts FROM u WHERE CAST(ts AS DATE) IN ('2024-01-02') AND i > 3 "
     "ORDER BY ts DESC LIMIT 3", None),
    ("SELECT ts FROM u WHERE CAST(ts AS DATE) BETWEEN '2024-01-02' AND '2024-01-02' "
     "ORDER BY ts LIMIT 3", None),
    ("SELECT ts FROM u WHERE NOT CAST(ts AS DATE) <> '2024-01-02' ORDER BY ts LIMIT 3", None),
    ("SELECT i FROM u WHERE i / 10 = 5 ORDER BY i LIMIT 4",
     "SELECT i FROM u WHERE i // 10 = 5 ORDER BY i LIMIT 4"),
    ("SELECT f FROM u WHERE CAST(f AS BIGINT) = 5 ORDER BY f DESC LIMIT 3",
     "SELECT f FROM u WHERE CAST(trunc(f) AS BIGINT) = 5 ORDER BY f DESC LIMIT 3"),
    ("SELECT ts, row_number() OVER (ORDER BY ts) AS n FROM u "
     "WHERE CAST(ts AS DATE) = '2024-01-02' ORDER BY n LIMIT 3", None),
    ("SELECT ts, count(*) AS c FROM u WHERE CAST(ts AS DATE) = '2024-01-02' "
     "GROUP BY ts ORDER BY c DESC, ts LIMIT 3", None),
    ("SELECT ts FROM u WHERE i > 50 AND CAST(ts AS DATE) = '2024-01-03' OR i = 7 "
     "ORDER BY ts LIMIT 5", None),
]


@pytest.mark.parametrize(("sql", "duck_sql"), SHAPES)
def test_guarded_sql_answers_as_duckdb(sql: str, duck_sql: str | None) -> None:
    table = _table()
    ctx = SessionContext()
    ctx.register_record_batches("u", [table.to_batches(max_chunksize=64)])
    guarded = datafusion_sql(sqlglot.parse_one(sql, dialect="postgres"))
    got = ctx.sql(guarded).to_arrow_table().to_pylist()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("u", table)
    want = con.execute(duck_sql or sql).fetchall()
    assert [tuple(r.values()) for r in got] == want, guarded


@pytest.mark.parametrize("sql", [
    "SELECT a FROM t WHERE a = 1 AND b BETWEEN 2 AND 3 AND c IN (1, 2) AND d IS NULL",
    "SELECT a FROM t JOIN s ON t.a = s.b WHERE t.c >= CAST('2024-01-01' AS DATE)",
    "SELECT a, count(*) FROM t GROUP BY a HAVING a < -1 OR NOT a = 5",
])
def test_plain_filters_are_sent_as_written(sql: str) -> None:
    """Comparisons of columns with constants stay readable by DataFusion's pruning (and a
    join's keys stay keys)."""
    tree = sqlglot.parse_one(sql, dialect="postgres")
    assert datafusion_sql(tree) == tree.sql(dialect="postgres")
