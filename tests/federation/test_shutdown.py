"""SIGTERM while cold queries run: Fig ends them with 57P01, stops everything and exits.

Before, a cold query still dispatching work units when the engine closed waited forever for
units no worker would run, and `fig serve` never exited.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import start_fig


def test_sigterm_ends_running_cold_queries_and_exits() -> None:
    fig = start_fig()
    try:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            conn.execute("create table busy (id bigint primary key, ts timestamptz not null, "
                         "note text)")
            conn.execute("insert into busy select g, %s::timestamptz + g * interval '20 s', "
                         "md5(g::text) from generate_series(1, 400000) g", (start,))
            conn.execute("select fig.tier_table('busy', 'ts', interval '30 days')")
            conn.execute("select fig.sync(interval '300 seconds')")
            conn.execute("select fig.run_retention()")
        outcomes: list[str] = []
        messages: list[str] = []

        def query() -> None:
            try:
                with psycopg.connect(fig.dsn, autocommit=True) as conn:
                    conn.execute("set fig.route = 'cold'")
                    for _ in range(20):
                        conn.execute("select note, count(*) from busy group by 1 "
                                     "order by 2 desc, 1 limit 3").fetchall()
                outcomes.append("done")
            except psycopg.Error as exc:
                outcomes.append(exc.sqlstate or type(exc).__name__)
                messages.append(str(exc))

        threads = [threading.Thread(target=query) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        fig.process.send_signal(signal.SIGTERM)
        try:
            code = fig.process.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail("fig serve did not exit after SIGTERM with cold queries running")
        for thread in threads:
            thread.join(30)
        assert code == 0
        assert outcomes and set(outcomes) <= {"57P01", "done", "OperationalError"}, messages
        assert "57P01" in outcomes
    finally:
        fig.stop(signal.SIGKILL)


def test_cdc_ends_when_fig_serve_is_killed() -> None:
    """SIGKILL of fig serve alone: its CDC process must not live on as an orphan holding the
    replication slot (it did, applying for as long as it had work)."""
    from tests.federation.test_kill_serve import kill_everything, tree

    fig = start_fig()
    try:
        children = [pid for pid in tree(fig.process.pid) if pid != fig.process.pid
                    and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert children, "no CDC process found"
        fig.process.kill()
        fig.process.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in children)
    finally:
        kill_everything(fig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cdc_processes(server_pid: int) -> list[int]:
    """fig serve's CDC child processes (spawned; the cold workers come from a forkserver)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == server_pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def test_sigterm_after_the_cdc_process_was_killed_exits() -> None:
    """A CDC process killed while it waited on the stop request (its metrics thread mostly
    does) leaves multiprocessing's Event waiting for it to wake: fig serve processes were
    found stuck for hours in Event.set at stop. This is that sequence (with the old Event it
    hung only sometimes; the stop flag now has no waiters to wait for)."""
    fig = start_fig()
    try:
        killed = cdc_processes(fig.process.pid)
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        while not set(cdc_processes(fig.process.pid)) - set(killed):  # restarted (else:
            time.sleep(0.2)  # the test's timeout)
        fig.process.send_signal(signal.SIGTERM)
        fig.process.wait(120)  # raises if fig serve never exits
    finally:
        fig.stop(signal.SIGKILL)
