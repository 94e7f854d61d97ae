"""pgjdbc through Fig: a small Java program run through Fig and directly, outputs compared."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FigProcess

PROGRAM = r"""
import java.sql.*;
import java.util.Properties;

public class FigJdbcProbe {
    static void dump(String title, ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        StringBuilder out = new StringBuilder("== " + title + "\n");
        while (rs.next()) {
            for (int i = 1; i <= md.getColumnCount(); i++) {
                out.append(md.getColumnLabel(i)).append('=').append(rs.getString(i)).append(' ');
            }
            out.append('\n');
        }
        rs.close();
        System.out.print(out);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        props.setProperty("prepareThreshold", args[1]);
        props.setProperty("options", "-c timezone=UTC");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData meta = conn.getMetaData();
            System.out.println("product " + meta.getDatabaseProductName() + " "
                               + meta.getDatabaseProductVersion());
            dump("schemas", meta.getSchemas());
            dump("tables", meta.getTables(null, null, "%", new String[] {"TABLE", "VIEW"}));
            dump("columns", meta.getColumns(null, "cl_jdbc", "%", "%"));
            dump("pk", meta.getPrimaryKeys(null, "cl_jdbc", "items"));
            dump("imported", meta.getImportedKeys(null, "cl_jdbc", "lines"));

            try (PreparedStatement ps = conn.prepareStatement(
                    "select id, name, price, at, ? as tag from cl_jdbc.items where id <= ? "
                    + "order by id")) {
                for (int round = 0; round < 6; round++) {
                    ps.setString(1, "round " + round);
                    ps.setInt(2, round * 3);
                    dump("prepared " + round, ps.executeQuery());
                }
            }
            conn.setAutoCommit(false);
            try (PreparedStatement ins = conn.prepareStatement(
                    "insert into cl_jdbc.lines (item_id, qty) values (?, ?)")) {
                for (int i = 1; i <= 25; i++) {
                    ins.setInt(1, i % 10 + 1);
                    ins.setBigDecimal(2, new java.math.BigDecimal(i).movePointLeft(1));
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                System.out.println("batch " + counts.length);
            }
            try (Statement st = conn.createStatement()) {
                dump("in transaction", st.executeQuery(
                    "select item_id, sum(qty) from cl_jdbc.lines group by 1 order by 1"));
            }

            try (Statement st = conn.createStatement()) {
                st.setFetchSize(7);
                ResultSet rs = st.executeQuery(
                    "select g, md5(g::text) from generate_series(1, 100) g");
                long sum = 0;
                int n = 0;
                while (rs.next()) { sum += rs.getLong(1); n++; }
                System.out.println("fetched " + n + " sum " + sum);
                try (PreparedStatement ps = conn.prepareStatement(
                        "select id from cl_jdbc.items where id > ? order by id")) {
                    ps.setFetchSize(3);
                    ps.setInt(1, 2);
                    dump("fetch prepared", ps.executeQuery());
                }
            }
            conn.rollback();

            try (Statement st = conn.createStatement()) {
                st.executeQuery("select * from cl_jdbc.missing");
            } catch (SQLException e) {
                System.out.println("error " + e.getSQLState() + " " + e.getMessage());
            }
            conn.rollback();
            try (Statement st = conn.createStatement()) {
                dump("after error", st.executeQuery("select count(*) from cl_jdbc.lines"));
            }
            conn.rollback();
        }
    }
}
"""


def jdbc_jar() -> str:
    jars = sorted(glob.glob(os.path.expanduser(
        "~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar")))
    assert jars, "pgjdbc jar not found under ~/.m2"
    return jars[-1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, fig: FigProcess) -> Path:
    work = tmp_path_factory.mktemp("jdbc")
    (work / "FigJdbcProbe.java").write_text(PROGRAM)
    subprocess.run(["javac", "-cp", jdbc_jar(), "FigJdbcProbe.java"], cwd=work, check=True,
                   timeout=120)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists cl_jdbc cascade")
        conn.execute("create schema cl_jdbc")
        conn.execute("create table cl_jdbc.items (id int primary key, name text not null, "
                     "price numeric(10,2), at timestamptz default '2024-05-06 07:08:09+00')")
        conn.execute("create table cl_jdbc.lines (item_id int references cl_jdbc.items, "
                     "qty numeric)")
        conn.execute("insert into cl_jdbc.items (id, name, price) "
                     "select g, 'item ' || g, g * 0.5 from generate_series(1, 20) g")
    return work


def run_probe(work: Path, host: str, port: int, threshold: str) -> str:
    result = subprocess.run(
        ["java", "-cp", f"{jdbc_jar()}:.", "FigJdbcProbe",
         f"jdbc:postgresql://{host}:{port}/postgres", threshold],
        cwd=work, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("threshold", ["1", "5", "0"])
def test_jdbc_matches_direct(fig: FigProcess, compiled: Path, threshold: str) -> None:
    via = run_probe(compiled, fig.host, fig.port, threshold)
    direct = run_probe(compiled, "127.0.0.1", fig.hot_port, threshold)
    assert via == direct
    assert "fetched 100 sum 5050" in via
    pk = via.split("== pk\n")[1].split("==")[0]
    assert "TABLE_SCHEM=cl_jdbc TABLE_NAME=items COLUMN_NAME=id KEY_SEQ=1" in pk, pk
    assert "error 42P01" in via and "batch 25" in via
    assert "after error\ncount=0 \n" in via
