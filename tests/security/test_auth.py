"""Authentication matrix: each method x client x (right password, wrong password, unknown role)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest

from fig_server.protocol.auth import ScramSecret, check_password, md5_verifier
from tests.conftest import FigProcess, start_fig
from tests.security.conftest import ROLES, jdbc_jar

FAILED = 'password authentication failed for user "{}"'

# (user, password) attempts; the expected outcome depends on the method.
ATTEMPTS = [("alice_scram", ROLES["alice_scram"][0]), ("alice_scram", "wrong"),
            ("bob_md5", ROLES["bob_md5"][0]), ("bob_md5", "wrong"), ("nobody", "whatever")]


def expected(method: str, user: str, password: str) -> str:
    """'ok' or the SQLSTATE Postgres itself would give for this rule and secret."""
    if user not in ROLES or ROLES[user][0] != password:
        return "28P01"
    if method == "scram-sha-256" and ROLES[user][1] == "md5":
        return "28P01"  # Postgres cannot run SCRAM against an md5 secret
    return "ok"


def via_psycopg(fig: FigProcess, user: str, password: str) -> str:
    try:
        with psycopg.connect(host=fig.host, port=fig.port, user=user, password=password,
                             dbname="postgres", sslmode="disable") as conn:
            assert conn.execute("select current_user").fetchone() == (user,)
        return "ok"
    except psycopg.OperationalError as exc:
        assert exc.sqlstate in (None, "28P01"), exc
        assert str(exc).strip().endswith(FAILED.format(user)), str(exc)
        return "28P01"


def via_asyncpg(fig: FigProcess, user: str, password: str) -> str:
    async def run() -> str:
        try:
            conn = await asyncpg.connect(host=fig.host, port=fig.port, user=user,
                                         password=password, database="postgres", ssl=False)
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate == "28P01" and str(exc) == FAILED.format(user), exc
            return "28P01"
        try:
            assert await conn.fetchval("select current_user") == user
            return "ok"
        finally:
            await conn.close()
    return asyncio.run(run())


def via_psql(fig: FigProcess, user: str, password: str) -> str:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable",
           "PGCONNECT_TIMEOUT": "10"}
    out = subprocess.run(
        ["psql", "-X", "-w", "-h", fig.host, "-p", str(fig.port), "-U", user, "-d", "postgres",
         "-Atc", "select current_user"], env=env, capture_output=True, text=True, timeout=30)
    if out.returncode == 0:
        assert out.stdout.strip() == user
        return "ok"
    assert FAILED.format(user) in out.stderr, out.stderr
    return "28P01"


@pytest.mark.parametrize("client", [via_psql, via_psycopg, via_asyncpg],
                         ids=["psql", "psycopg", "asyncpg"])
def test_auth_matrix(auth_fig: tuple[str, FigProcess], client) -> None:  # type: ignore[no-untyped-def]
    method, fig = auth_fig
    got = {(user, pw): client(fig, user, pw) for user, pw in ATTEMPTS}
    assert got == {(user, pw): expected(method, user, pw) for user, pw in ATTEMPTS}


JAVA = r"""
import java.sql.*;
import java.util.Properties;

public class FigAuthProbe {
    public static void main(String[] args) {
        for (int i = 1; i + 1 < args.length; i += 2) {
            Properties props = new Properties();
            props.setProperty("user", args[i]);
            props.setProperty("password", args[i + 1]);
            props.setProperty("sslmode", "disable");
            try (Connection conn = DriverManager.getConnection(args[0], props);
                 ResultSet rs = conn.createStatement().executeQuery("select current_user")) {
                rs.next();
                System.out.println(args[i] + " ok " + rs.getString(1));
            } catch (SQLException e) {
                System.out.println(args[i] + " " + e.getSQLState() + " " + e.getMessage());
            }
        }
    }
}
"""


@pytest.fixture(scope="session")
def jdbc_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("jdbc-auth")
    (work / "FigAuthProbe.java").write_text(JAVA)
    subprocess.run(["javac", "-cp", jdbc_jar(), "FigAuthProbe.java"], cwd=work,
                   check=True, timeout=120)
    return work


def test_auth_matrix_pgjdbc(auth_fig: tuple[str, FigProcess], jdbc_probe: Path) -> None:
    method, fig = auth_fig
    args = [f"jdbc:postgresql://{fig.host}:{fig.port}/postgres"]
    for user, pw in ATTEMPTS:
        args += [user, pw]
    out = subprocess.run(["java", "-cp", f"{jdbc_jar()}:.", "FigAuthProbe", *args],
                         cwd=jdbc_probe, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(ATTEMPTS), out.stdout + out.stderr
    for (user, pw), line in zip(ATTEMPTS, lines, strict=True):
        want = expected(method, user, pw)
        if want == "ok":
            assert line == f"{user} ok {user}", line
        else:
            assert line.startswith(f"{user} 28P01 ") and FAILED.format(user) in line, line


def test_wrong_password_leaks_nothing_about_the_role(auth_fig: tuple[str, FigProcess]) -> None:
    """The same error, field for field, for a wrong password and for a role that is missing."""
    _, fig = auth_fig

    async def fields(user: str) -> dict[str, str]:
        try:
            await asyncpg.connect(host=fig.host, port=fig.port, user=user, password="nope",
                                  database="postgres", ssl=False)
        except asyncpg.PostgresError as exc:
            return {k: v for k, v in exc.as_dict().items() if v is not None}
        raise AssertionError("connected")

    wrong, missing = asyncio.run(fields("alice_scram")), asyncio.run(fields("nobody"))
    assert wrong["sqlstate"] == missing["sqlstate"] == "28P01"
    assert set(wrong) == set(missing) and "detail" not in wrong and "hint" not in wrong


def test_session_runs_as_the_role_and_postgres_checks_login(
        auth_fig: tuple[str, FigProcess]) -> None:
    _, fig = auth_fig
    user, password = "alice_scram", ROLES["alice_scram"][0]
    with psycopg.connect(fig.hot_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {user} VALID UNTIL '2000-01-01'")
    try:
        assert via_psycopg(fig, user, password) == "28P01"  # an expired password fails
    finally:
        with psycopg.connect(fig.hot_dsn, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {user} VALID UNTIL 'infinity'")
    with psycopg.connect(host=fig.host, port=fig.port, user=user, password=password,
                         dbname="postgres", sslmode="disable") as conn:
        row = conn.execute("select session_user, usesuper from pg_user "
                           "where usename = session_user").fetchone()
        assert row == (user, False)


def test_secret_helpers_match_postgres(auth_fig: tuple[str, FigProcess]) -> None:
    """Fig's verifier arithmetic agrees with the secrets Postgres stored."""
    _, fig = auth_fig
    with psycopg.connect(fig.hot_dsn) as conn:
        stored = dict(conn.execute("select rolname, rolpassword from pg_authid "
                                   "where rolname = any(%s)", (list(ROLES),)).fetchall())
    scram = ScramSecret.parse(stored["alice_scram"])
    assert scram is not None
    assert ScramSecret.from_password(ROLES["alice_scram"][0].encode(), scram.salt,
                                     scram.iterations) == scram
    assert stored["bob_md5"] == md5_verifier(ROLES["bob_md5"][0].encode(), "bob_md5")
    assert check_password(b"hunter2", "bob_md5", stored["bob_md5"])
    assert not check_password(b"hunter3", "bob_md5", stored["bob_md5"])


def test_trust_beyond_loopback_refuses_to_start() -> None:
    with pytest.raises(RuntimeError, match=r"refusing to listen on 0\.0\.0\.0"):
        start_fig(env={"FIG__SERVER__HOST": "0.0.0.0"}, timeout=60)


@pytest.mark.parametrize("env", [
    {"FIG__AUTH__TRUST_REMOTE": "true"},
    {"FIG__AUTH__METHOD": "scram-sha-256", "FIG__AUTH__SUPERUSER_PASSWORD": "open sesame"}])
def test_remote_listening_when_asked_for(env: dict[str, str]) -> None:
    fig = start_fig(env={"FIG__SERVER__HOST": "0.0.0.0", **env})
    try:
        password = env.get("FIG__AUTH__SUPERUSER_PASSWORD")
        with psycopg.connect(host="127.0.0.1", port=fig.port, user="postgres",
                             password=password, dbname="postgres", sslmode="disable") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        if password:
            with pytest.raises(psycopg.OperationalError, match="password authentication"):
                psycopg.connect(host="127.0.0.1", port=fig.port, user="postgres",
                                password="wrong", dbname="postgres", sslmode="disable")
    finally:
        fig.stop()
