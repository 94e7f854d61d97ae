"""SIGKILL of the whole `fig serve` process tree (server, CDC process, cold workers and the
embedded Postgres) at random moments of a write workload with retention and compaction
running; after each restart and at the end, nothing committed is lost or duplicated.

Every workload transaction changes a tiered table and its never-tiered twin identically, in
one Postgres transaction, so both committed or neither. Checked after the last restart:
the tiered table read through Fig equals the twin row for row; the Iceberg table, read with
pyiceberg, equals the twin too (it holds hot rows and the cold-only history), with no key
twice. CI: 10 rounds; FIG_LONG=1: 100. FIG_SEED picks the seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from tests.conftest import FigProcess, make_data_dir, start_fig

ROUNDS = 100 if os.environ.get("FIG_LONG") == "1" else 10
ENV = {"FIG__TIERING__RETENTION_INTERVAL_S": "1", "FIG__TIERING__RETENTION_BATCH_ROWS": "300",
       "FIG__CDC__SPILL_BYTES": "150000", "FIG__CDC__FLUSH_BYTES": "600000",
       "FIG__CDC__FLUSH_INTERVAL_MS": "100"}
COLUMNS = "id, ts, v, s"


def tree(root: int) -> list[int]:
    """root and every process descending from it, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def kill_everything(fig: FigProcess) -> None:
    """SIGKILL fig serve's tree and the embedded Postgres's (pg_ctl detaches it)."""
    pids = tree(fig.process.pid)
    pid_file = fig.data_dir / "pg" / "data" / "postmaster.pid"
    if pid_file.exists():
        pids += tree(int(pid_file.read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    fig.process.wait()
    for pid in pids:  # the postmaster's backends must be gone before a new one starts
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or \
                    Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.02)


def transaction(conn: psycopg.Connection, rng: random.Random, next_id: list[int]) -> None:
    """The same random changes to the tiered table and its twin, in one transaction."""
    ops = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.55:
            count, first = rng.randint(1, 400), next_id[0]
            next_id[0] += count
            # some rows older than the hot retention: late rows, moved to cold by retention
            ops.append(f"INSERT INTO {{t}} SELECT g, now() - (g % 15) * interval '1 day' "
                       f"- interval '1 hour', g % 100, repeat('x', (g % 9)::int * 20) "
                       f"FROM generate_series({first}, {first + count - 1}) g")
        elif kind < 0.8:
            ops.append(f"UPDATE {{t}} SET v = v + 1, s = s || 'u' WHERE id % {rng.randint(3, 9)}"
                       f" = {rng.randint(0, 2)} AND ts > now() - interval '5 days'")
        else:
            ops.append(f"DELETE FROM {{t}} WHERE id % {rng.randint(7, 20)} = 0 "
                       "AND ts > now() - interval '5 days'")
    with conn.transaction():
        for op in ops:
            for table in ("k", "k_twin"):
                conn.execute(op.format(t=table))


def workload(fig: FigProcess, rng: random.Random, next_id: list[int],
             stop: threading.Event) -> None:
    try:
        with psycopg.connect(fig.dsn, autocommit=True, connect_timeout=5) as conn:
            while not stop.is_set():
                if rng.random() < 0.05:
                    conn.execute("SELECT fig.compact('k', interval '20 seconds')")
                else:
                    transaction(conn, rng, next_id)
    except psycopg.Error:
        pass  # killed under it


def iceberg_rows(fig: FigProcess) -> list[tuple[object, ...]]:
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    table = catalog.load_table(("public", "k")).scan().to_arrow()
    columns = [table.column(name).to_pylist() for name in COLUMNS.split(", ")]
    return sorted(zip(*columns, strict=True), key=lambda row: row[0])  # type: ignore[arg-type, return-value]


@pytest.mark.timeout(ROUNDS * 60)
def test_kill_the_whole_serve_tree_loses_and_duplicates_nothing() -> None:
    rng = random.Random(int(os.environ.get("FIG_SEED", "20261205")))
    data_dir = make_data_dir()
    fig = start_fig(data_dir, env=ENV)
    next_id = [1_000_000]
    try:
        with psycopg.connect(fig.dsn, autocommit=True) as conn, conn.transaction():
            for table in ("k", "k_twin"):  # one transaction: the same now()
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, "
                             "ts timestamptz NOT NULL, v int, s text)")
                conn.execute(f"INSERT INTO {table} SELECT g, now() - g * interval '10 min', "
                             "g % 100, 'seed' FROM generate_series(1, 3000) g")
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            conn.execute("SELECT fig.tier_table('k', 'ts', interval '10 days')")
            conn.execute("SELECT fig.sync(interval '300 seconds')")
        for _ in range(ROUNDS):
            stop = threading.Event()
            worker = threading.Thread(target=workload, args=(fig, rng, next_id, stop))
            worker.start()
            time.sleep(rng.uniform(0.3, 1.5))
            kill_everything(fig)
            stop.set()
            worker.join(30)
            next_id[0] += 10_000  # ids of a transaction in flight may have committed
            fig = start_fig(data_dir, env=ENV)
            # caught up before the next round: its kill lands while CDC applies its writes
            with psycopg.connect(fig.dsn, autocommit=True) as conn:
                conn.execute("SELECT fig.sync(interval '300 seconds')")
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            conn.execute("SELECT fig.sync(interval '300 seconds')")
            conn.execute("SELECT fig.run_retention()")
            conn.execute("SELECT fig.sync(interval '300 seconds')")
            twin = conn.execute(f"SELECT {COLUMNS} FROM k_twin ORDER BY id").fetchall()
            via_fig = conn.execute(f"SELECT {COLUMNS} FROM k ORDER BY id").fetchall()
            boundary = conn.execute("SELECT boundary > '-infinity' FROM fig.tiered_tables "
                                    "WHERE table_name = 'k'").fetchone()
        assert boundary == (True,), "retention never ran: nothing was only in cold"
        assert len(via_fig) == len(twin) and via_fig == twin
        cold = iceberg_rows(fig)
        assert len({row[0] for row in cold}) == len(cold), "a key is twice in Iceberg"
        assert cold == [tuple(row) for row in twin]
    finally:
        kill_everything(fig)
