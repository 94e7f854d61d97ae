"""Work units on a Ray cluster ([cold] executor = "ray"): the local pool's lanes, each feeding
one long-lived Ray actor through a small local driver process.

An actor holds one DataFusion SessionContext (worker.run_task, as a local worker does), reads
its units' files from the warehouse itself (an object store, or a folder every node mounts)
and returns Arrow IPC bytes; the coordinator in `fig serve` keeps planning, the top-n early
stop and the final merge.

Why a driver process per lane rather than Ray in `fig serve` itself: a Ray driver exits when
the cluster's GCS stays unreachable, and `fig serve` must outlive the cluster (hot statements
go on, cold ones fail with 58030). The lane also cancels a running unit the way it does
locally, by killing its process: Ray then kills the actor that process owned (a sync actor
cannot be interrupted), and the lane starts another. A driver whose actor died exits, so
the lane runs the unit again on a new actor. Ray is optional: `pip install fig-server[ray]`.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from multiprocessing.connection import Connection
from typing import Any

from fig_server.cold import worker
from fig_server.cold.executor import ProcessExecutor
from fig_server.errors import ConfigurationError, FigError, IoError

# Starting an actor on a busy cluster can take a while; beyond this cold units fail.
START_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            '[cold] executor = "ray" needs Ray: pip install "fig-server[ray]"') from exc
    return ray


class RayExecutor(ProcessExecutor):
    """One lane per actor of the cluster at address."""

    def __init__(self, address: str, actors: int, memory_limit_mb: int = 0) -> None:
        require_ray()
        self.address = address
        super().__init__(actors, target=serve, args=(address, memory_limit_mb))


class UnitActor:
    """The Ray actor: a worker's SessionContext and scratch folder, kept across units."""

    def __init__(self, memory_limit_mb: int) -> None:
        os.environ[worker.MEMORY_LIMIT_ENV] = str(memory_limit_mb)
        worker.initialize(tempfile.mkdtemp(prefix="fig-ray-"))

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: Any) -> tuple[bool, Any]:
        return worker.answer(task)


def serve(conn: Connection, scratch: str, address: str, memory_limit_mb: int) -> None:
    """The lane's driver process: start one actor, then pass tasks to it and answers back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    try:
        ray = require_ray()
        _reachable(address)
        ray.init(address=address, log_to_driver=False, logging_level="WARNING",
                 configure_logging=False)
        actor = ray.remote(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")(
            UnitActor).remote(memory_limit_mb)
        ray.get(actor.ready.remote(), timeout=START_TIMEOUT_S)
    except Exception as exc:  # answered to the next task: the query fails, clearly
        failure = exc if isinstance(exc, FigError) else IoError(
            f"no cold worker started on the Ray cluster at {address}: {_first_line(exc)}")
        _answer_and_exit(conn, failure)
        return

    def run(task: Any) -> tuple[bool, Any]:
        try:
            outcome: tuple[bool, Any] = ray.get(actor.run.remote(task))
        except ray.exceptions.RayError:
            os._exit(1)  # the actor died: the lane sees this process gone and reruns the unit
        return outcome

    worker.answer_tasks(conn, run)


def _reachable(address: str) -> None:
    """Fail in seconds, not after Ray's own minute of retries, when nothing listens."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise IoError(f"cannot reach the Ray cluster at {address}: {exc}",
                      hint="check [cold] ray_address and that the cluster runs") from exc


def _answer_and_exit(conn: Connection, failure: BaseException) -> None:
    try:
        task = conn.recv()
        if task is not None:
            conn.send((False, failure))
    except (EOFError, OSError, ValueError):
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
