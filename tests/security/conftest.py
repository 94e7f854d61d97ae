"""Fixtures for the security tests: Figs with authentication on, and roles with passwords."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.conftest import FigProcess, start_fig

# name -> (password, how Postgres stores it)
ROLES = {"alice_scram": ("s3cret-ä", "scram-sha-256"), "bob_md5": ("hunter2", "md5")}


def create_roles(fig: FigProcess) -> None:
    """Roles made directly on the hot Postgres, one per kind of stored secret."""
    with psycopg.connect(fig.hot_dsn, autocommit=True) as conn:
        for name, (password, encryption) in ROLES.items():
            conn.execute(f"SET password_encryption = '{encryption}'")
            conn.execute(f"DROP ROLE IF EXISTS {name}")
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)))


@pytest.fixture(scope="session", params=["password", "md5", "scram-sha-256"])
def auth_fig(request: pytest.FixtureRequest) -> Iterator[tuple[str, FigProcess]]:
    """One Fig per authentication method, with the roles of ROLES."""
    method = request.param
    server = start_fig(env={"FIG__AUTH__METHOD": method})
    create_roles(server)
    yield method, server
    server.stop()


def jdbc_jar() -> str:
    jars = sorted(glob.glob(os.path.expanduser(
        "~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar")))
    assert jars, "pgjdbc jar not found under ~/.m2"
    return jars[-1]
