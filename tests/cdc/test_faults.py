"""A seeded random workload over several tables, with the CDC process SIGKILLed at random
points and restarted; at the end every Iceberg table equals its Postgres table row for row.

FIG_LONG=1 runs many more rounds.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time

import psycopg

from fig_server.cdc.control import install_control_schema
from fig_server.hot.embedded import EmbeddedPostgres
from tests.cdc.conftest import drop_env, make_env
from tests.cdc.helpers import CdcRunner, catalog_of, cold_rows, hot_rows, sync

TABLES = ("fa", "fb", "fc")
ROUNDS = 60 if os.environ.get("FIG_LONG") else 10


def random_transaction(conn: psycopg.Connection, rng: random.Random, next_id: list[int],
                       extra: dict[str, int]) -> None:
    table = rng.choice(TABLES)
    with conn.transaction():
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.5:
                count = rng.randint(1, 300)
                conn.execute(
                    f"INSERT INTO {table} (id, ts, v, s) SELECT g, timestamptz '2024-01-01' + "
                    "(g %% 5) * interval '1 day', g::int, repeat('x', (g %% 7)::int * 3) "
                    "FROM generate_series(%s::bigint, %s::bigint) g",
                    (next_id[0], next_id[0] + count - 1))
                next_id[0] += count
            elif kind < 0.75:
                conn.execute(f"UPDATE {table} SET v = v + 1, ts = ts + interval '1 day' "
                             "WHERE id %% %s = %s", (rng.randint(3, 9), rng.randint(0, 2)))
            elif kind < 0.93:
                conn.execute(f"DELETE FROM {table} WHERE id %% %s = 0", (rng.randint(5, 20),))
            elif kind < 0.97:
                conn.execute(f"TRUNCATE {table}")
            elif extra[table] < 3:
                extra[table] += 1
                conn.execute(f"ALTER TABLE {table} ADD COLUMN c{extra[table]} int")
                conn.execute(f"UPDATE {table} SET c{extra[table]} = v WHERE id % 2 = 0")


def test_random_workload_with_kills(hot_pg: EmbeddedPostgres) -> None:
    rng = random.Random(int(os.environ.get("FIG_SEED", "20261103")))
    # spill_bytes small: many transactions spill, and kills land while their groups apply;
    # every other restart cuts them differently, so a transaction killed midway is replayed
    # over the groups of it already in
    env = make_env(hot_pg, flush_interval_ms=50, spill_bytes=20_000, flush_bytes=60_000)
    layouts = (env.config, dataclasses.replace(
        env.config, cdc=dataclasses.replace(env.config.cdc, spill_bytes=30_000)))
    install_control_schema(env.dsn)
    conn = env.connect()
    next_id, extra = [1], dict.fromkeys(TABLES, 0)
    for table in TABLES:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
                     "v int, s text)")
    for _ in TABLES:
        random_transaction(conn, rng, next_id, extra)
    runner = CdcRunner(env.config, env.dsn).start()
    kills = 0
    try:
        for table in TABLES:
            conn.execute(f"SELECT fig.tier_table('{table}', 'ts', interval '100 years')")
        for _ in range(ROUNDS):
            for _ in range(rng.randint(1, 6)):
                random_transaction(conn, rng, next_id, extra)
            time.sleep(rng.random() * 0.4)
            if rng.random() < 0.6:
                runner.kill()
                kills += 1
                runner = CdcRunner(layouts[kills % 2], env.dsn).start()
        sync(conn, "120s")
        catalog = catalog_of(env.config)
        for table in TABLES:
            assert cold_rows(catalog, "public", table, "id") == hot_rows(conn, table, "id"), table
        assert kills > 0
    finally:
        runner.stop()
        conn.close()
        drop_env(hot_pg, env)
