"""Fixtures shared by every test: a real PostgreSQL and a real Fig, each in a fresh data dir.
With FIG_TEST_WAREHOUSE=s3 each one's warehouse is a fresh bucket of a loopback S3 endpoint;
with FIG_TEST_EXECUTOR=ray cold work units run on a two-node Ray cluster on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fig_server.config import FigConfig, load_config
from fig_server.hot.embedded import EmbeddedPostgres
from tests import ray_cluster, s3

FAST_PG = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


# Data dirs this run made (a Fig's is ~190 MB, and a run starts about a hundred).
_DATA_DIRS: list[Path] = []


def make_data_dir(prefix: str = "fig-test-") -> Path:
    """A temp dir the unprivileged Postgres user can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    _DATA_DIRS.append(path)
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A passing run removes the data dirs it made; a failing one keeps them to look at."""
    if exitstatus == 0:
        for path in _DATA_DIRS:
            shutil.rmtree(path, ignore_errors=True)


def make_config(data_dir: Path, **sections: dict[str, object]) -> FigConfig:
    """Fig's defaults pointed at a private data dir, with a Postgres tuned for tests."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"data_dir": str(data_dir), "port": 0},
        "hot": {"settings": FAST_PG},
        "demo": {"enabled": False},
    }
    if s3.S3_MODE and "warehouse" not in sections.get("cold", {}):
        overrides["cold"] = dict(s3.new_warehouse())
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(**overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def hot_pg() -> Iterator[EmbeddedPostgres]:
    """One real PostgreSQL for the whole run, initdb'd in a temp dir."""
    data_dir = make_data_dir()
    pg = EmbeddedPostgres(make_config(data_dir))
    pg.start()
    os.environ.setdefault("PGTZ", "UTC")
    yield pg
    pg.stop("immediate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FigProcess:
    """A `fig serve` child process and how to reach it and its hot Postgres."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    host: str
    port: int
    hot_port: int
    hot_socket_dir: Path
    env: dict[str, str]
    metrics_url: str | None = None  # the dashboard, when [metrics] is on

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname=postgres"

    @property
    def hot_dsn(self) -> str:
        """The embedded Postgres directly, over its Unix socket."""
        return f"host={self.hot_socket_dir} port={self.hot_port} user=postgres dbname=postgres"

    @property
    def hot_tcp_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.hot_port} user=postgres dbname=postgres"

    def log(self) -> str:
        return (self.data_dir / "fig.log").read_text(errors="replace")

    def metric(self, name: str) -> float:
        """An unlabelled metric's value from the metrics endpoint."""
        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url + "metrics", timeout=30) as response:
            text = response.read().decode()
        return float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith(name + " ")))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_fig(data_dir: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120.0) -> FigProcess:
    """Run `fig serve` in a fresh (or given) data dir and wait until it accepts clients."""
    data_dir = data_dir or make_data_dir()
    hot_port = free_port()
    full_env = dict(os.environ)
    full_env.update({
        "FIG__SERVER__DATA_DIR": str(data_dir),
        "FIG__SERVER__PORT": "0",
        "FIG__HOT__PORT": str(hot_port),
        "FIG__HOT__LISTEN_ADDRESSES": "127.0.0.1",
        "FIG__HOT__SETTINGS": ",".join(FAST_PG),
        "FIG__DEMO__ENABLED": "false",
        "FIG__CDC__FLUSH_INTERVAL_MS": "200",
        "FIG__METRICS__PORT": "0",
    })
    if s3.S3_MODE and "FIG__COLD__WAREHOUSE" not in (env or {}):
        full_env.update(s3.as_env(s3.new_warehouse()))
    if ray_cluster.RAY_MODE and "FIG__COLD__EXECUTOR" not in (env or {}):
        full_env.update(ray_cluster.env())
    full_env.update(env or {})
    state_file = data_dir / "server.json"
    state_file.unlink(missing_ok=True)
    log = (data_dir / "fig.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "fig_server.cli", "serve"], env=full_env,
        stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("fig serve did not start:\n"
                               + (data_dir / "fig.log").read_text(errors="replace")[-3000:])
        time.sleep(0.05)
    state = json.loads(state_file.read_text())
    return FigProcess(process, data_dir, state["host"], state["port"], hot_port,
                      data_dir / "pg" / "run", full_env, state.get("metrics_url"))


@pytest.fixture(scope="session")
def fig() -> Iterator[FigProcess]:
    """One Fig (with its embedded Postgres) shared by the client tests."""
    server = start_fig()
    yield server
    server.stop()
