"""Load the same events into a plain Postgres database (the peer), and the hot dimension table.

The peer is the database a user would pick instead of Fig: every row in one Postgres table,
with the indexes a user would create for these queries. It lives in Fig's embedded cluster
(database `peer`) so both run on the same Postgres build and settings; it is loaded once per
data set and recognised by a marker row.
"""

from __future__ import annotations

import io
import time

import psycopg
import pyarrow.csv as pacsv
from psycopg import sql

from benchmarks.datagen import (
    PG_COUNTRIES_DDL,
    PG_EVENTS_DDL,
    PG_USERS_DDL,
    VERSION,
    DataSet,
    countries_table,
    iter_days,
    users_table,
)

PEER_DB = "peer"
# Fig's hot events table gets the same indexes (figload.hot_indexes): a user tiering a table
# keeps the indexes the hot part's queries need.
PEER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_day_status_ts ON events (day, status, ts)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    "CREATE INDEX IF NOT EXISTS events_user_id ON events (user_id)",
)


def ensure_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def load_countries(dsn: str) -> None:
    """The hot-only dimension table `countries`, recreated (it is tiny)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS countries")
        conn.execute(PG_COUNTRIES_DDL.format(name="countries"))
        with conn.cursor() as cur, cur.copy("COPY countries FROM STDIN") as copy:
            for row in countries_table().to_pylist():
                copy.write_row((row["code"], row["name"], row["region"]))
        conn.execute("ANALYZE countries")


def load_users(dsn: str, seed: int) -> None:
    """The hot-only dimension table `users` (a million rows), loaded once per seed: the table's
    comment names what it holds."""
    key = f"benchmark users, seed {seed}, v{VERSION}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT obj_description(to_regclass('users'), 'pg_class')").fetchone()
        if found and found[0] == key:
            return
        conn.execute("DROP TABLE IF EXISTS users")
        conn.execute(PG_USERS_DDL.format(name="users"))
        buffer = io.BytesIO()
        pacsv.write_csv(users_table(seed), buffer, pacsv.WriteOptions(include_header=False))
        with conn.cursor() as cur, cur.copy("COPY users FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())
        conn.execute(sql.SQL("COMMENT ON TABLE users IS {}").format(sql.Literal(key)))
        conn.execute("VACUUM ANALYZE users")


def _loaded_key(conn: psycopg.Connection) -> str | None:
    found = conn.execute("SELECT to_regclass('bench_meta')").fetchone()
    if not found or found[0] is None:
        return None
    row = conn.execute("SELECT key FROM bench_meta").fetchone()
    return str(row[0]) if row else None


def copy_events(conn: psycopg.Connection, data: DataSet, label: str) -> None:
    """COPY every generated day into the table `events`, one transaction per day."""
    options = pacsv.WriteOptions(include_header=False)
    for index, (_, rows) in enumerate(iter_days(data.scale, data.seed)):
        buffer = io.BytesIO()
        pacsv.write_csv(rows, buffer, options)
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY events FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())
        if index % 10 == 9 or index == data.scale.days - 1:
            print(f"  {label}: {index + 1}/{data.scale.days} days loaded", flush=True)


def ensure_postgres_peer(admin_dsn: str, peer_dsn: str, data: DataSet) -> float:
    """Load every event into `peer`.events unless already there; returns seconds spent."""
    ensure_database(admin_dsn, PEER_DB)
    key = data.root.name
    with psycopg.connect(peer_dsn, autocommit=True) as conn:
        if _loaded_key(conn) == key:
            return 0.0
        started = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS bench_meta, events")
        conn.execute(PG_EVENTS_DDL.format(name="events"))
        copy_events(conn, data, "postgres peer")
        for statement in PEER_INDEXES:
            conn.execute(statement)
        conn.execute("VACUUM ANALYZE events")
        conn.execute("CREATE TABLE bench_meta (key text)")
        conn.execute("INSERT INTO bench_meta VALUES (%s)", (key,))
    load_countries(peer_dsn)
    return time.perf_counter() - started
