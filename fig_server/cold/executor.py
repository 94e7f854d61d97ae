"""Where work units run: a process pool (forkserver) by default, threads for small setups.
A Ray executor can implement the same interface."""

from __future__ import annotations

import multiprocessing
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

from fig_server.cold import worker
from fig_server.cold.units import UnitTask


class Executor(ABC):
    """Runs UnitTasks somewhere, returning Arrow IPC bytes through futures."""

    slots: int

    @abstractmethod
    def submit(self, task: UnitTask) -> Future[bytes]: ...

    @abstractmethod
    def close(self) -> None: ...


class ProcessExecutor(Executor):
    """Worker processes started lazily with forkserver; each builds its SessionContext once."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(self.slots, mp_context=context,
                                                 initializer=worker.initialize)
            return self._pool

    def submit(self, task: UnitTask) -> Future[bytes]:
        return self._ensure().submit(worker.run_unit, task)

    def reset(self) -> None:
        """Drop a broken pool (a worker died); the next submit starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class ThreadExecutor(Executor):
    """Work units in threads of this process (DataFusion and pyarrow release the GIL)."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fig-cold",
                                        initializer=worker.initialize)

    def submit(self, task: UnitTask) -> Future[bytes]:
        return self._pool.submit(worker.run_unit, task)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
