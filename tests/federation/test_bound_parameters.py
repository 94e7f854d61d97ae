"""Parameters (how drivers send values) are pushed into the cold part with the values of the
statement's Bind, when one Bind runs it: the answers stay the twin's, however the driver
binds, prepares, pipelines or re-binds, and the cold scan keeps only what the values reach."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from fig_server import wire
from tests.clients.test_jdbc import jdbc_jar
from tests.conftest import FigProcess
from tests.federation.test_oracle import build_oracle
from tests.protocol.test_bad_input import RawClient

# (statement over {t}, parameter value sets); %s placeholders, psycopg style
STATEMENTS = [
    ("select count(*), sum(amount) from {t} where user_id = %s", [(7,), (49,), (0,), (None,)]),
    ("select id, status, note from {t} where user_id = %s and status = %s order by id "
     "limit 20", [(3, 500), (11, 404), (3, 200)]),
    ("select status, count(*) from {t} where ts >= %s and ts < %s group by 1 order by 1",
     "windows"),
    ("select country, count(*) from {t} where country = any(%s) and day < %s "
     "group by 1 order by 1", "countries"),
    ("select count(*) from {t} where note like %s", [("n1%",), ("ñé%",)]),
]


@pytest.fixture(scope="module")
def oracle() -> Iterator[tuple[FigProcess, dt.datetime]]:
    fig, _ = build_oracle()
    yield fig, dt.datetime.now(dt.UTC)
    fig.stop()


def value_sets(spec: Any, now: dt.datetime) -> list[tuple[Any, ...]]:
    if spec == "windows":
        return [(now - dt.timedelta(days=d + 3), now - dt.timedelta(days=d))
                for d in (100, 60, 31, 29, 5)]
    if spec == "countries":
        return [(["DE", "FR"], (now - dt.timedelta(days=50)).date()),
                (["BR"], (now - dt.timedelta(days=2)).date())]
    return list(spec)


def both(conn: psycopg.Connection, sql: str, values: tuple[Any, ...],
         **kwargs: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return (conn.execute(sql.format(t="events"), values, **kwargs).fetchall(),
            conn.execute(sql.format(t="events_plain"), values, **kwargs).fetchall())


@pytest.mark.parametrize("route", ["auto", "cold"])
@pytest.mark.parametrize("autocommit", [True, False])
def test_bound_values_answer_like_the_twin(oracle: tuple[FigProcess, dt.datetime], route: str,
                                           autocommit: bool) -> None:
    """Unnamed statements (psycopg's default), prepared ones re-bound with other values
    (prepare=True), binary parameters (%b), in and out of a transaction block."""
    fig, now = oracle
    with psycopg.connect(fig.dsn, autocommit=autocommit) as conn:
        conn.execute(f"set fig.route = '{route}'")
        for sql, spec in STATEMENTS:
            for values in value_sets(spec, now):
                got, want = both(conn, sql, values)
                assert got == want, (sql, values)
                got, want = both(conn, sql, values, prepare=True)
                assert got == want, (sql, values, "prepared")
                binary = sql.replace("%s", "%b")
                got, want = both(conn, binary, values)
                assert got == want, (sql, values, "binary")
            if not autocommit:
                conn.commit()


@pytest.mark.parametrize("route", ["auto", "cold"])
def test_many_binds_in_one_batch_answer_like_the_twin(oracle: tuple[FigProcess, dt.datetime],
                                                      route: str) -> None:
    """A pipeline binds one statement several times before one Sync: the cold rows are then
    loaded for any values (one load serves every Bind)."""
    fig, now = oracle
    sql = "select count(*), min(id), max(id) from {t} where user_id = %s and ts < %s"
    values = [(u, now - dt.timedelta(days=d)) for u, d in ((1, 40), (2, 90), (3, 10), (1, 31))]
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute(f"set fig.route = '{route}'")
        for table in ("events", "events_plain"):
            with conn.pipeline():
                cursors = [conn.execute(sql.format(t=table), v) for v in values]
            rows = [c.fetchall() for c in cursors]
            if table == "events":
                got = rows
            else:
                assert got == rows


def test_asyncpg_prepared_statement_re_bound(oracle: tuple[FigProcess, dt.datetime]) -> None:
    """asyncpg prepares once and binds each call: every Bind plans the statement again."""
    fig, now = oracle

    async def run() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(host=fig.host, port=fig.port, user="postgres",
                                     database="postgres")
        try:
            answers: dict[str, list[Any]] = {}
            for table in ("events", "events_plain"):
                statement = await conn.prepare(
                    f"select count(*), sum(amount) from {table} where user_id = $1 "
                    "and ts < $2")
                answers[table] = [tuple(await statement.fetchrow(u, now - dt.timedelta(days=d)))
                                  for u, d in ((5, 40), (6, 40), (5, 5), (7, 100))]
            return answers["events"], answers["events_plain"]
        finally:
            await conn.close()

    got, want = asyncio.run(run())
    assert got == want
    assert any(count and total != Decimal(0) for count, total in got)


def test_a_bound_time_window_prunes_cold_files(oracle: tuple[FigProcess, dt.datetime]) -> None:
    """The Bind's values reach the cold scan: a three-day window reads a few day files, not
    all of them (before: every file, its rows copied into the session)."""
    fig, now = oracle
    marker = "bound_window_marker"
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        conn.execute(f"select count(*) /* {marker} */ from events where ts >= %s and ts < %s",
                     (now - dt.timedelta(days=63), now - dt.timedelta(days=60)))
        deadline = time.monotonic() + 10
        rows: list[tuple[Any, ...]] = []
        while not rows and time.monotonic() < deadline:
            rows = conn.execute("select files_kept, files_total from fig.query_log where "
                                "statement like %s and statement not like '%%query_log%%'",
                                (f"%{marker}%",)).fetchall()
            time.sleep(0.2)
    assert rows, "the statement was not logged"
    kept, total = rows[-1]
    assert total > 20 and kept <= 5, rows


JDBC_PROGRAM = r"""
import java.sql.*;
import java.util.Properties;

public class FigBoundProbe {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        props.setProperty("prepareThreshold", args[1]);
        String table = args[2];
        StringBuilder out = new StringBuilder();
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            if (args[3].equals("reads")) reads(conn, table, out); else writes(conn, table, out);
        }
        System.out.print(out);
    }

    static void reads(Connection conn, String table, StringBuilder out) throws SQLException {
        String sql = "select id, status, amount from " + table
            + " where user_id = ? and ts < now() - ? * interval '1 day' order by id";
        for (boolean block : new boolean[] {false, true}) {
            conn.setAutoCommit(!block);
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                if (block) ps.setFetchSize(4);  // a portal read a few rows at a time
                for (int round = 0; round < 8; round++) {
                    ps.setLong(1, round % 5);
                    ps.setInt(2, new int[] {100, 40, 31, 29, 5}[round % 5]);
                    ResultSet rs = ps.executeQuery();
                    int n = 0;
                    long ids = 0;
                    while (rs.next()) { n++; ids += rs.getLong(1); }
                    out.append(block).append(' ').append(round).append(' ').append(n)
                       .append(' ').append(ids).append('\n');
                }
            }
            if (block) conn.commit();
        }
    }

    static void writes(Connection conn, String table, StringBuilder out) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(
                "update " + table + " set note = ? where id = ?")) {
            for (int round = 0; round < 7; round++) {
                ps.setString(1, "jdbc " + round);
                ps.setLong(2, 1000 + round * 97);
                out.append("update ").append(ps.executeUpdate()).append('\n');
            }
        }
        try (PreparedStatement ps = conn.prepareStatement(
                "delete from " + table + " where user_id = ? and ts < now() - ? * "
                + "interval '1 day'")) {
            for (int round = 0; round < 6; round++) {
                ps.setLong(1, 40 + round);
                ps.setInt(2, 60 + round);
                out.append("delete ").append(ps.executeUpdate()).append('\n');
            }
        }
    }
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("jdbc-bound")
    (work / "FigBoundProbe.java").write_text(JDBC_PROGRAM)
    subprocess.run(["javac", "-cp", jdbc_jar(), "FigBoundProbe.java"], cwd=work, check=True,
                   timeout=120)
    return work


def run_probe(fig: FigProcess, work: Path, threshold: str, table: str, mode: str) -> str:
    """The probe's output for one table (pgjdbc's prepareThreshold; mode reads or writes)."""
    result = subprocess.run(
        ["java", "-cp", f"{jdbc_jar()}:.", "FigBoundProbe",
         f"jdbc:postgresql://{fig.host}:{fig.port}/postgres", threshold, table, mode],
        cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("threshold", ["0", "1", "5"])
def test_jdbc_prepared_statements_answer_like_the_twin(
        oracle: tuple[FigProcess, dt.datetime], probe: Path, threshold: str) -> None:
    """pgjdbc binds unnamed statements, then (prepareThreshold) named ones it re-binds; with a
    fetch size inside a transaction it reads the portal a few rows per Execute."""
    fig, _ = oracle
    got, want = (run_probe(fig, probe, threshold, table, "reads")
                 for table in ("events", "events_plain"))
    assert got == want
    assert len(got.splitlines()) == 16, got
    assert sum(int(line.split()[2]) for line in got.splitlines()) > 100, got


def test_a_portal_executed_in_a_later_batch_reads_cold_rows(
        oracle: tuple[FigProcess, dt.datetime]) -> None:
    """In a transaction block a client may Bind a portal, Sync, and Execute it later (a
    portal API such as tokio-postgres's): the portal's snapshot is taken at the Bind, so
    the cold rows must be loaded then (before: none were, and it read hot rows alone)."""
    fig, _ = oracle

    def parse(sql: str) -> bytes:
        return wire.message(b"P", b"\0" + wire.cstring(sql) + wire.INT16.pack(0))

    bind = wire.message(b"B", wire.cstring("p1") + b"\0" + wire.INT16.pack(0) * 3)
    execute = wire.message(b"E", wire.cstring("p1") + wire.INT32.pack(0))
    sync = wire.message(b"S", b"")
    counts = {}
    for table in ("events", "events_plain"):
        client = RawClient(fig.port, fig.host)
        try:
            client.start()
            client.query("BEGIN")
            client.send(parse(f"select id from {table} where user_id = 7") + bind + sync)
            assert [m[0] for m in client.read_until()] == [b"1", b"2", b"Z"]
            client.send(execute + sync)
            counts[table] = sum(1 for m in client.read_until() if m[0] == b"D")
        finally:
            client.close()
    assert counts["events"] == counts["events_plain"] > 300, counts


def test_jdbc_bound_writes_reach_cold(oracle: tuple[FigProcess, dt.datetime],
                                      probe: Path) -> None:
    """Last in this module (it changes rows of both tables alike): pgjdbc's UPDATE and DELETE
    with parameters, unnamed and then named (prepareThreshold 3), reach cold rows and leave
    the tiered table equal to its twin."""
    fig, _ = oracle
    got, want = (run_probe(fig, probe, "3", table, "writes")
                 for table in ("events", "events_plain"))
    assert got == want
    assert "delete 0" not in got and "update 1" in got, got
    summary = "select count(*), sum(id), count(note), max(note) from {t}"
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        assert conn.execute(summary.format(t="events")).fetchone() == \
            conn.execute(summary.format(t="events_plain")).fetchone()

