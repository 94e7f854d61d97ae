"""Fixtures for CDC tests: a fresh database in the session Postgres and a private warehouse."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from fig_server.config import FigConfig
from fig_server.hot.embedded import EmbeddedPostgres
from tests.conftest import make_config, make_data_dir

_counter = itertools.count()


@dataclass
class CdcEnv:
    """One database of the hot Postgres, with its own slot, publication and warehouse."""

    dsn: str
    config: FigConfig
    data_dir: Path

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)


def make_env(pg: EmbeddedPostgres, **cdc: object) -> CdcEnv:
    name = f"cdc_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    data_dir = make_data_dir("fig-cdc-")
    settings = {"slot_name": f"{name}_slot", "publication": "fig_pub", "flush_interval_ms": 100}
    settings.update(cdc)
    config = make_config(data_dir, cdc=settings, tiering={"retention_interval_s": 3600})
    dsn = pg.dsn.replace("dbname=postgres", f"dbname={name}")
    return CdcEnv(dsn, config, data_dir)


def drop_env(pg: EmbeddedPostgres, env: CdcEnv) -> None:
    dbname = env.dsn.rsplit("dbname=", 1)[1]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND active", (env.config.cdc.slot_name,))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        for _ in range(50):
            row = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s "
                               "AND active", (env.config.cdc.slot_name,)).fetchone()
            if row and row[0] == 0:
                break
            import time
            time.sleep(0.1)
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s", (env.config.cdc.slot_name,))
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


@pytest.fixture
def cdc_env(hot_pg: EmbeddedPostgres) -> Iterator[CdcEnv]:
    env = make_env(hot_pg)
    yield env
    drop_env(hot_pg, env)
