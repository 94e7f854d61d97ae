"""Where work units run: worker processes (forkserver) that can be stopped mid-unit, or threads.
A Ray executor can implement the same interface."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from fig_server import metrics
from fig_server.cold import worker
from fig_server.cold.units import TaskOutput, UnitTask
from fig_server.errors import InternalError, QueryCanceled

log = logging.getLogger(__name__)

# How often a lane waiting on its worker looks for an abort request.
_POLL_S = 0.02


class Executor(ABC):
    """Runs UnitTasks somewhere, returning TaskOutputs (Arrow IPC bytes) through futures."""

    slots: int

    @abstractmethod
    def submit(self, task: UnitTask) -> Future[TaskOutput]: ...

    def abort(self, future: Future[TaskOutput]) -> None:
        """Stop a task: drop it if still queued; executors that can also stop a running one."""
        future.cancel()

    def warm(self) -> None:  # noqa: B027 - optional hook, nothing to start by default
        """Start whatever the first query would otherwise wait for (in the background)."""

    def load(self) -> tuple[int, int]:
        """Slots running a task now, and tasks waiting for a slot (for the metrics)."""
        return 0, 0

    @abstractmethod
    def close(self) -> None: ...


def scratch_root() -> str:
    """A private folder for workers' per-batch file links: in memory when /dev/shm exists."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="fig-cold-", dir=base)


class WorkerDied(InternalError):
    """The worker running a task went away without answering (killed, crashed, its node
    lost): the lane starts another and runs the task again, up to RERUNS times."""


# How many times a lane reruns a task whose worker died under it.
RERUNS = 2


class ProcessExecutor(Executor):
    """One lane per slot: a thread feeding one worker process over a pipe.

    A lane can kill its process in the middle of a unit (client cancel, statement timeout)
    and starts another; processes are forked from a forkserver that has the worker module
    imported already, so a restart costs milliseconds, not a DataFusion import. The process
    runs `target(conn, scratch, *args)`: worker.serve here, a Ray actor's driver for
    RayExecutor.
    """

    def __init__(self, workers: int, *, eager: bool = False,
                 target: Callable[..., None] = worker.serve, args: tuple[Any, ...] = ()
                 ) -> None:
        self.slots = workers
        self.scratch = scratch_root()
        weakref.finalize(self, shutil.rmtree, self.scratch, True)
        self._target, self._args = target, args
        self._tasks: queue.Queue[tuple[Future[TaskOutput], UnitTask] | None] = queue.Queue()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._closed = False
        if eager:
            self.warm()

    def warm(self) -> None:
        with self._lock:
            if self._closed or self._lanes:
                return
            self._lanes = [
                _Lane(self._tasks, _ProcessWorker(self.scratch, i, self._target, self._args), i)
                for i in range(self.slots)]
            for lane in self._lanes:
                lane.start()

    def submit(self, task: UnitTask) -> Future[TaskOutput]:
        if self._closed:
            raise InternalError("the cold engine is closed")
        self.warm()
        future: Future[TaskOutput] = Future()
        self._tasks.put((future, task))
        return future

    def abort(self, future: Future[TaskOutput]) -> None:
        future.fig_abort = True  # type: ignore[attr-defined]  # seen by a lane taking it now
        if future.cancel():
            return
        for lane in self._lanes:
            lane.abort(future)

    def worker_pids(self) -> list[int]:
        """Live worker processes (for tests and monitoring)."""
        return [pid for lane in self._lanes if (pid := lane.worker.pid()) is not None]

    def load(self) -> tuple[int, int]:
        return sum(lane.busy() for lane in self._lanes), self._tasks.qsize()

    def busy_pids(self) -> list[int]:
        """Worker processes running a task right now."""
        return [pid for lane in self._lanes
                if lane.busy() and (pid := lane.worker.pid()) is not None]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lanes = list(self._lanes)
        for lane in lanes:
            lane.stop()
        for _ in lanes:
            self._tasks.put(None)
        for lane in lanes:
            lane.join(timeout=10)
        while True:  # futures nobody will run any more
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        shutil.rmtree(self.scratch, ignore_errors=True)


class _Lane(threading.Thread):
    """Feeds queued tasks to one worker; kills and replaces it on abort or death."""

    def __init__(self, tasks: queue.Queue[tuple[Future[TaskOutput], UnitTask] | None],
                 worker: _ProcessWorker, index: int) -> None:
        super().__init__(name=f"fig-cold-lane-{index}", daemon=True)
        self._tasks = tasks
        self.worker = worker
        self._current: Future[TaskOutput] | None = None
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self._guard = threading.Lock()

    def busy(self) -> bool:
        return self._current is not None

    def abort(self, future: Future[TaskOutput]) -> None:
        with self._guard:
            if self._current is future:
                self._abort.set()

    def stop(self) -> None:
        self._stopping.set()
        self._abort.set()

    def run(self) -> None:
        try:
            try:
                self.worker.start()
            except Exception:  # retried per task, whose future then carries the error
                log.warning("cold worker did not start; retrying with the next task",
                            exc_info=True)
            while True:
                item = self._tasks.get()
                if item is None or self._stopping.is_set():
                    if item is not None:
                        item[0].cancel()
                    break
                future, task = item
                if not future.set_running_or_notify_cancel():
                    continue
                with self._guard:
                    self._current = future
                    self._abort.clear()
                    if getattr(future, "fig_abort", False):
                        self._abort.set()
                began = time.monotonic()
                try:
                    self._run(future, task)
                finally:
                    with self._guard:
                        self._current = None
                    metrics.WORKER_SECONDS.inc(time.monotonic() - began)
                if not self.worker.alive() and not self._stopping.is_set():
                    with contextlib.suppress(Exception):  # retried with the next task
                        self.worker.start()  # a killed worker's replacement starts at once
        finally:
            self.worker.shutdown()

    def _run(self, future: Future[TaskOutput], task: UnitTask) -> None:
        for attempt in range(RERUNS + 1):
            try:
                if not self.worker.alive():
                    self.worker.start()
                ok, payload = self.worker.exchange(task, self._abort)
            except WorkerDied as exc:
                if attempt < RERUNS and not self._abort.is_set():
                    log.warning("%s; running its work unit again", exc)
                    continue
                future.set_exception(exc)
                return
            except BaseException as exc:  # the future carries it to the dispatching thread
                future.set_exception(exc)
                return
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(payload)
            return


class _ProcessWorker:
    """A worker process from the forkserver, fed over a pipe."""

    def __init__(self, scratch: str, index: int, target: Callable[..., None],
                 args: tuple[Any, ...]) -> None:
        self._scratch = scratch
        self._target, self._args = target, args
        self._name = f"fig-cold-{index}"
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        self.kill()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fig_server.cold.worker"])
        parent, child = context.Pipe()
        process = context.Process(target=self._target,
                                  args=(child, self._scratch, *self._args),
                                  name=self._name, daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent

    def exchange(self, task: UnitTask, abort: threading.Event) -> tuple[bool, Any]:
        """Run the task: (True, TaskOutput) or (False, FigError). Kills the process and raises
        QueryCanceled once abort is set; raises WorkerDied when it exits without answering."""
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        try:
            conn.send(task)
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerDied("a cold worker process died") from exc
        while True:
            ready = wait([conn, process.sentinel], timeout=_POLL_S)
            if abort.is_set():
                self.kill()
                raise QueryCanceled("canceling statement: work unit stopped")
            if conn in ready:
                try:
                    outcome: tuple[bool, Any] = conn.recv()
                    return outcome
                except (EOFError, OSError) as exc:
                    self.kill()
                    raise WorkerDied("a cold worker process died") from exc
            if ready:  # the sentinel alone: the process exited without answering
                self.kill()
                raise WorkerDied("a cold worker process died")

    def shutdown(self) -> None:
        conn, process = self._conn, self._process
        if conn is not None and process is not None and process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            process.join(timeout=2)
        self.kill()

    def kill(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if conn is not None:
            conn.close()
        if process is not None:
            pid = process.pid
            process.kill()
            process.join()
            process.close()
            shutil.rmtree(os.path.join(self._scratch, str(pid)), ignore_errors=True)


class ThreadExecutor(Executor):
    """Work units in threads of this process (DataFusion and pyarrow release the GIL).

    A running unit cannot be stopped here; only queued ones are dropped on abort.
    """

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.scratch = scratch_root()
        weakref.finalize(self, shutil.rmtree, self.scratch, True)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fig-cold",
                                        initializer=worker.initialize,
                                        initargs=(self.scratch,))

    def submit(self, task: UnitTask) -> Future[TaskOutput]:
        return self._pool.submit(worker.run_task, task)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
