"""psql through Fig, its output compared with psql against the hot Postgres directly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FigProcess

PSQL = "/usr/bin/psql"


def psql(fig: FigProcess, *args: str, direct: bool = False, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run psql against Fig, or against the hot Postgres over TCP with direct=True."""
    port = fig.hot_port if direct else fig.port
    host = "127.0.0.1" if direct else fig.host
    env = {"PATH": "/usr/bin:/bin", "PGTZ": "UTC", "PGCONNECT_TIMEOUT": "10", "LANG": "C.UTF-8",
           "PGOPTIONS": "-c statement_timeout=60000"}
    result = subprocess.run(
        [PSQL, "-X", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
         "-v", "ON_ERROR_STOP=1", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def both(fig: FigProcess, *args: str, cwd: Path | None = None,
         check: bool = True) -> tuple[subprocess.CompletedProcess[str], ...]:
    return (psql(fig, *args, cwd=cwd, check=check),
            psql(fig, *args, direct=True, cwd=cwd, check=check))


@pytest.fixture(scope="module")
def psql_table(fig: FigProcess) -> str:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("drop table if exists cl_psql_items cascade")
        conn.execute("create table cl_psql_items (id int primary key, name text not null, "
                     "price numeric(10,2), tags text[], at timestamptz default "
                     "'2024-01-02 03:04:05+00', note text check (note <> 'x'))")
        conn.execute("create index cl_psql_items_name on cl_psql_items (name)")
        conn.execute("insert into cl_psql_items (id, name, price, tags, note) "
                     "select g, 'item ' || g, g * 1.25, array['a', 'b' || g], "
                     "case when g % 3 = 0 then null else 'tab\there, \"quoted\"' end "
                     "from generate_series(1, 200) g")
    return "cl_psql_items"


def test_dash_c_output_matches(fig: FigProcess, psql_table: str) -> None:
    for sql in (f"select * from {psql_table} order by id",
                "select 1 as one; select 'two' as two, null::int as three",
                "select version(), current_user, current_setting('server_encoding')",
                f"update {psql_table} set price = price where id < 5"):
        via, direct = both(fig, "-c", sql)
        assert via.stdout == direct.stdout
        assert via.stdout.strip()


def test_error_output_matches(fig: FigProcess) -> None:
    via, direct = both(fig, "-c", "select * from cl_psql_missing", check=False)
    assert via.returncode == direct.returncode == 1
    assert via.stderr == direct.stderr
    assert 'relation "cl_psql_missing" does not exist' in via.stderr


@pytest.mark.parametrize("meta", [r"\dt", r"\d cl_psql_items", r"\l", r"\dn", r"\di",
                                  r"\df pg_sleep", r"\du"])
def test_backslash_commands_match(fig: FigProcess, psql_table: str, meta: str) -> None:
    via, direct = both(fig, "-c", meta)
    assert via.stdout == direct.stdout
    assert via.stdout.strip()


def test_copy_to_and_from_files_match(fig: FigProcess, psql_table: str, tmp_path: Path) -> None:
    via, direct = both(fig, "-c", rf"\copy (select * from {psql_table} order by id) to 'out.csv' "
                       "with (format csv, header)", cwd=tmp_path)
    out_fig = (tmp_path / "out.csv").read_bytes()
    (tmp_path / "out.csv").unlink()
    psql(fig, "-c", rf"\copy (select * from {psql_table} order by id) to 'out.csv' "
         "with (format csv, header)", direct=True, cwd=tmp_path)
    assert out_fig == (tmp_path / "out.csv").read_bytes()
    assert out_fig.count(b"\n") == 201
    assert via.stdout == direct.stdout == "COPY 200\n"

    counts = []
    for direct_run, table in ((False, "cl_psql_in_fig"), (True, "cl_psql_in_direct")):
        psql(fig, "-c", f"drop table if exists {table}", "-c",
             f"create table {table} (like {psql_table} including all)")
        result = psql(fig, "-c", rf"\copy {table} from 'out.csv' with (format csv, header)",
                      direct=direct_run, cwd=tmp_path)
        counts.append(result.stdout)
    assert counts == ["COPY 200\n", "COPY 200\n"]
    with psycopg.connect(fig.hot_dsn) as conn:
        rows = [conn.execute(f"select * from {t} order by id").fetchall()
                for t in ("cl_psql_in_fig", "cl_psql_in_direct", psql_table)]
    assert rows[0] == rows[1] == rows[2]


def test_copy_from_stdin_text_and_bad_row(fig: FigProcess, tmp_path: Path) -> None:
    script = ("create temp table t (a int, b text);\n"
              "copy t from stdin;\n1\tone\n2\t\\N\n\\.\n"
              "select * from t order by a;\n"
              "copy t from stdin;\nnot a number\tx\n\\.\n")
    (tmp_path / "s.sql").write_text(script)
    via, direct = both(fig, "-f", "s.sql", cwd=tmp_path, check=False)
    assert via.returncode == direct.returncode == 3
    assert via.stdout == direct.stdout
    assert via.stderr == direct.stderr
    assert "invalid input syntax for type integer" in via.stderr
