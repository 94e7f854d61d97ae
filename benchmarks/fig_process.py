"""Start `fig serve` on a benchmark data dir and reach it, or its hot Postgres, directly.

A trimmed copy of tests/conftest.py's start_fig (benchmarks do not import the test suite):
the data dir persists between runs so the loaded Postgres peer is reused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Same settings for Fig's hot tier and the Postgres peer: durability off as in the tests, and
# the memory an analyst would give a Postgres on a 24 GiB machine.
PG_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off",
               "shared_buffers=2GB", "work_mem=64MB", "maintenance_work_mem=512MB",
               "effective_cache_size=8GB", "max_parallel_workers_per_gather=2",
               "max_wal_size=4GB")


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

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def hot_dsn(self, dbname: str = "postgres") -> str:
        """The embedded Postgres directly, over its Unix socket."""
        return f"host={self.hot_socket_dir} port={self.hot_port} user=postgres dbname={dbname}"

    def hot_tcp_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.hot_port} user=postgres dbname={dbname}"

    def log_tail(self, chars: int = 3000) -> str:
        return (self.data_dir / "fig.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_fig(data_dir: Path, timeout: float = 180.0) -> FigProcess:
    """Run `fig serve` on data_dir (Iceberg catalog at data_dir/iceberg) until it accepts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    hot_port = free_port()
    env = dict(os.environ)
    env.update({
        "FIG__SERVER__DATA_DIR": str(data_dir),
        "FIG__SERVER__PORT": "0",
        "FIG__METRICS__PORT": "0",
        "FIG__HOT__PORT": str(hot_port),
        "FIG__HOT__LISTEN_ADDRESSES": "127.0.0.1",
        "FIG__HOT__SETTINGS": ",".join(PG_SETTINGS),
        "FIG__DEMO__ENABLED": "false",
        "FIG__CDC__FLUSH_INTERVAL_MS": "200",
        "PGTZ": "UTC",
    })
    state_file = data_dir / "server.json"
    state_file.unlink(missing_ok=True)
    log = (data_dir / "fig.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "fig_server.cli", "serve"], env=env,
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = (data_dir / "fig.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fig serve did not start:\n{tail}")
        time.sleep(0.05)
    state = json.loads(state_file.read_text())
    return FigProcess(process, data_dir, state["host"], state["port"], hot_port,
                      data_dir / "pg" / "run")
