"""Cold work units on a real two-node Ray cluster on this machine: answers equal the local
pool's, actors spread over both nodes, an actor killed mid-query has its units run again,
cancel stops running units, and a cluster that cannot be reached fails with 58030."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from fig_server.cold import ColdEngine
from fig_server.cold.ray_executor import RayExecutor
from fig_server.errors import IoError, QueryCanceled
from tests import ray_cluster
from tests.cold.compare import rows, same_rows
from tests.conftest import free_port

SLOW = "SELECT count(*) FROM big WHERE sha256(repeat(CAST(id AS TEXT), 3000)) <> ''"


@pytest.fixture(scope="module")
def on_ray() -> Iterator[ColdEngine]:
    executor = RayExecutor(ray_cluster.address(), ray_cluster.NODES)
    with ColdEngine(executor=executor, eager=True) as cold:
        yield cold


@pytest.fixture(scope="module")
def big(module_catalog: SqlCatalog) -> Table:
    table = module_catalog.create_table("public.big", schema=pa.schema([("id", pa.int64())]),
                                        properties={"write.parquet.row-group-limit": "100000"})
    for part in range(4):
        table.append(pa.table({"id": pa.array(range(part * 150_000, (part + 1) * 150_000),
                                              pa.int64())}))
    return table


def actor_processes(busy: bool = False) -> dict[int, int]:
    """pid -> parent pid (its node's raylet) of every Ray actor process running our units."""
    title = "ray::UnitActor.run" if busy else "ray::UnitActor"
    found = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True).stdout
    out = {}
    for pid in map(int, found.split()):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                out[pid] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def wait_for(predicate: object, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def test_answers_equal_the_local_pool_and_actors_use_both_nodes(
        on_ray: ColdEngine, engine: ColdEngine, big: Table) -> None:
    tables = {"public.big": big}
    for sql in ("SELECT count(*), sum(id), min(id) FROM big WHERE id % 7 = 3",
                "SELECT id % 5 AS k, count(*) FROM big GROUP BY id % 5",
                "SELECT id FROM big WHERE id % 1000 = 1 ORDER BY id DESC LIMIT 5"):
        assert same_rows(on_ray.query(sql, tables).table, engine.query(sql, tables).table), sql
    nodes = wait_for(lambda: len(set(actor_processes().values())) == ray_cluster.NODES)
    assert nodes


def test_an_actor_killed_mid_query_has_its_units_run_again(on_ray: ColdEngine,
                                                           big: Table) -> None:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = on_ray.query(SLOW, {"big": big})
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    victims = wait_for(lambda: actor_processes(busy=True))
    os.kill(next(iter(victims)), signal.SIGKILL)  # type: ignore[call-overload]
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert rows(outcome["result"].table) == [(600_000,)]  # type: ignore[attr-defined]


def test_cancel_stops_running_units(on_ray: ColdEngine, big: Table) -> None:
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            on_ray.query(SLOW, {"big": big}, cancel=cancel)
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    busy = wait_for(lambda: actor_processes(busy=True))
    cancel.set()
    thread.join(timeout=60)
    assert isinstance(outcome.get("error"), QueryCanceled)
    # the running actors were killed, not left to finish their units
    wait_for(lambda: not set(busy) & set(actor_processes()))  # type: ignore[arg-type]
    assert rows(on_ray.query("SELECT count(*) FROM big WHERE id < 10", {"big": big}).table
                ) == [(10,)]


def test_an_unreachable_cluster_fails_cold_queries_clearly(big: Table) -> None:
    executor = RayExecutor(f"127.0.0.1:{free_port()}", 1)
    with ColdEngine(executor=executor) as cold, pytest.raises(IoError, match="Ray cluster"):
        cold.query("SELECT sum(id) FROM big", {"big": big})
