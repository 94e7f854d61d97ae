"""The `fig` command: `fig serve` starts the hot tier (when embedded), CDC and the endpoint."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import uvloop

from fig_server import metrics
from fig_server.cdc import service as cdc_service
from fig_server.cdc.control import install_control_schema
from fig_server.cold.worker import MEMORY_LIMIT_ENV
from fig_server.config import FigConfig, load_config
from fig_server.dashboard.endpoint import Endpoint, refuse_open_endpoint
from fig_server.dashboard.health import HealthMonitor
from fig_server.dashboard.status import print_status
from fig_server.demo import install_demo
from fig_server.errors import ConfigurationError, FigError
from fig_server.hot.backend import HotTarget
from fig_server.hot.embedded import EmbeddedPostgres
from fig_server.hot.privileges import apply_control_grants, set_superuser_password
from fig_server.hot.query_log import install_query_log
from fig_server.hot.session_state import install_session_state
from fig_server.protocol.auth import refuse_open_trust
from fig_server.protocol.server import FigServer
from fig_server.session.audit_log import AuditLog
from fig_server.session.federation import ColdService, TieredCatalog
from fig_server.session.statement_metrics import StatementMetrics
from fig_server.storage.catalog import check_warehouse

log = logging.getLogger("fig")
METRICS_WRITE_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fig", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run Fig's Postgres endpoint")
    serve.add_argument("--config", help="TOML config file (default conf/fig.toml)")
    serve.add_argument("--data-dir", help="state directory (default .fig)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 5433)")
    status = commands.add_parser("status", help="print the health of a running fig serve")
    status.add_argument("--config", help="TOML config file (default conf/fig.toml)")
    status.add_argument("--data-dir", help="its state directory (default .fig)")
    status.add_argument("--url", help="its metrics endpoint (default: from the data dir)")
    status.add_argument("--json", action="store_true", help="the health document as JSON")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FigConfig:
    server = {key: value for key, value in
              (("data_dir", args.data_dir), ("host", getattr(args, "host", None)),
               ("port", getattr(args, "port", None)))
              if value is not None}
    return load_config(args.config, server=server)


def _exit_with_parent(parent: int) -> None:
    """When fig serve dies without stopping CDC (SIGKILL, a crash), CDC ends too: an orphan
    would hold the replication slot against the next fig serve's CDC. Exiting at any moment
    is safe: Iceberg and the slot are exact under a kill."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            log.error("fig serve (pid %d) is gone: the CDC process exits", parent)
            os._exit(1)


def run_cdc(config: FigConfig, dsn: str, stop_event: Any, parent: int) -> None:
    """The CDC process's entry point: logging as the server's, then the CDC loop."""
    logging.basicConfig(level=config.server.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="fig-cdc-parent-watch").start()
    threading.Thread(target=_write_metrics, args=(_snapshot(config, "cdc"), stop_event),
                     daemon=True, name="fig-cdc-metrics").start()
    cdc_service.run(config, dsn, stop_event)


def _snapshot(config: FigConfig, process: str) -> Path:
    """Where a process other than fig serve leaves its metrics for the endpoint."""
    return config.data_dir / "metrics" / f"{process}.prom"


def _write_metrics(path: Path, stop_event: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            metrics.write_snapshot(path)
        except OSError as exc:
            log.warning("could not write CDC metrics to %s: %s", path, exc)
        if stop_event.wait(METRICS_WRITE_S):
            metrics.write_snapshot(path)
            return


class StopFlag:
    """A stop request fig serve shares with its CDC process, polled. Not multiprocessing's
    Event: its set() waits for every process sleeping on it to wake, and one killed while it
    waited never does, so fig serve hung at stop for ever after its CDC process was killed."""

    POLL_S = 0.1

    def __init__(self, context: Any) -> None:
        self._value = context.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(self.POLL_S if left is None else min(self.POLL_S, left))
        return True


class CdcSupervisor:
    """Runs CDC in its own process, so ingest never competes with the endpoint's event loop."""

    def __init__(self, config: FigConfig, dsn: str) -> None:
        self.config = config
        self.dsn = dsn
        self.context = multiprocessing.get_context("spawn")
        self.stop_event = StopFlag(self.context)
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        self.process = self.context.Process(
            target=run_cdc, args=(self.config, self.dsn, self.stop_event, os.getpid()),
            name="fig-cdc", daemon=False)
        self.process.start()

    async def watch(self) -> None:
        """Restart the CDC process if it dies; it resumes from the LSN recorded in Iceberg."""
        while True:
            await asyncio.sleep(1.0)
            if self.process is not None and not self.process.is_alive() \
                    and not self.stop_event.is_set():
                log.warning("CDC process exited with %s; restarting", self.process.exitcode)
                await asyncio.sleep(1.0)
                self.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.process is not None:
            self.process.join(15)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5)


def lock_data_dir(data_dir: Path, wait_s: float = 60.0) -> IO[bytes]:
    """Own the data dir for this process's life: a second `fig serve` on it waits for the
    first to finish stopping (its embedded Postgres included), then fails if it does not."""
    handle = (data_dir / "fig.lock").open("ab")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError as exc:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"another fig serve is using the data dir {data_dir}") from exc
            time.sleep(0.2)


async def serve(config: FigConfig) -> None:
    """Run until SIGINT or SIGTERM, then stop everything Fig started."""
    refuse_open_trust(config)
    refuse_open_endpoint(config.metrics)
    await asyncio.to_thread(check_warehouse, config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = await asyncio.to_thread(lock_data_dir, config.data_dir)
    # counters of an earlier run's CDC process are not this run's
    _snapshot(config, "cdc").unlink(missing_ok=True)
    embedded = None if config.hot.dsn else EmbeddedPostgres(config)
    if embedded is not None:
        await asyncio.to_thread(embedded.start)
    dsn = config.hot.dsn or embedded.dsn  # type: ignore[union-attr]
    await asyncio.to_thread(install_control_schema, dsn)
    await asyncio.to_thread(install_session_state, dsn)
    await asyncio.to_thread(apply_control_grants, dsn, config.auth.admin_role)
    if embedded is not None and config.auth.superuser_password:
        await asyncio.to_thread(set_superuser_password, dsn, config.auth.superuser_password)
    await asyncio.to_thread(install_query_log, dsn, config.auth.admin_role)
    # Cold workers (started later, from a forkserver) read their memory limit from here.
    os.environ[MEMORY_LIMIT_ENV] = str(config.cold.memory_limit_mb)
    counted = StatementMetrics(config.audit.price_per_gb) if config.metrics.enabled else None
    audit = AuditLog(config.audit, config.data_dir, dsn, counted) \
        if config.audit.enabled or counted is not None else None
    tiered = TieredCatalog(dsn)
    await tiered.refresh()
    tiered.start()
    cold = ColdService(config)
    cdc = CdcSupervisor(config, dsn)
    cdc.start()
    server = FigServer(config, HotTarget.from_dsn(dsn), tiered=tiered, cold=cold, hot_dsn=dsn,
                       audit=audit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    supervise = asyncio.create_task(cdc.watch())
    if audit is not None:
        audit.start()
    endpoint = None
    try:
        port = await server.start()
        state = {"host": config.server.host, "port": port, "pid": os.getpid(), "hot_dsn": dsn}
        if counted is not None:
            endpoint = start_endpoint(config, dsn, counted)
            state["metrics_url"] = endpoint.url if endpoint is not None else None
        # written whole, then renamed: readers wait for the file to exist, then read it
        written = config.data_dir / "server.json.tmp"
        written.write_text(json.dumps(state))
        written.replace(config.data_dir / "server.json")
        if tiered.current.tables or (config.demo.enabled and embedded is not None):
            # the workers start in the background; metadata is read in a thread of its own
            warming = asyncio.create_task(asyncio.to_thread(cold.warm, tiered.current.tables),
                                          name="cold metadata read-ahead")
            warming.add_done_callback(_log_failure)
        if config.demo.enabled and embedded is not None:
            demo = asyncio.create_task(asyncio.to_thread(install_demo, dsn, config.demo.rows),
                                       name="demo setup")
            demo.add_done_callback(_log_failure)
        await stop.wait()
        log.info("shutting down")
    finally:
        supervise.cancel()
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)
        await server.stop()
        if audit is not None:
            await audit.stop()
        await tiered.stop()
        await asyncio.to_thread(cdc.stop)
        await asyncio.to_thread(cold.close)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        (config.data_dir / "server.json").unlink(missing_ok=True)
        lock.close()


class _Running:
    """The metrics endpoint and the monitor behind it, as started."""

    def __init__(self, endpoint: Endpoint, monitor: HealthMonitor, url: str) -> None:
        self.endpoint, self.monitor, self.url = endpoint, monitor, url

    def stop(self) -> None:
        self.endpoint.stop()
        self.monitor.stop()


def start_endpoint(config: FigConfig, dsn: str, counted: StatementMetrics) -> _Running | None:
    """The [metrics] endpoint; a port already taken is logged, and Fig serves without it."""
    snapshot = _snapshot(config, "cdc")
    monitor = HealthMonitor(dsn, [snapshot], config.audit.enabled, counted.add_cost_today)
    endpoint = Endpoint(config.metrics, monitor)
    try:
        url = endpoint.start()
    except OSError as exc:
        log.error("metrics endpoint not started on %s:%s: %s", config.metrics.host,
                  config.metrics.port, exc)
        return None
    monitor.start()
    log.info("metrics and dashboard at %s", url)
    return _Running(endpoint, monitor, url)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", task.get_name(), task.exception())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fig: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        return print_status(config.data_dir, args.url, as_json=args.json)
    logging.basicConfig(level=config.server.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(serve(config))
    except FigError as exc:
        log.error("%s%s", exc.message, f" (hint: {exc.hint})" if exc.hint else "")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
