"""The embedded hot tier: a PostgreSQL that Fig initdb's, starts and stops under its data dir."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from fig_server.config import FigConfig
from fig_server.errors import ConfigurationError

log = logging.getLogger(__name__)

SERVER_SETTINGS = {
    "listen_addresses": "''",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "300",
    # A client that vanished mid-query is noticed by Postgres within a second.
    "client_connection_check_interval": "'1s'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "logging_collector": "off",
}

HBA = """\
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""


def find_bin_dir(configured: str) -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    if configured:
        return Path(configured)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "postgres").exists():
            return candidate
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found and (Path(found).parent / "postgres").exists():
            return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if versions:
        return versions[0]
    raise ConfigurationError("PostgreSQL server binaries not found: set [hot] bin_dir")


class EmbeddedPostgres:
    """A PostgreSQL cluster owned by Fig at <data_dir>/pg."""

    def __init__(self, config: FigConfig) -> None:
        self.root = config.data_dir / "pg"
        self.pgdata = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.port = config.hot.port
        self.listen_addresses = config.hot.listen_addresses
        self.extra_settings = config.hot.settings
        self.bin_dir = find_bin_dir(config.hot.bin_dir)
        self.os_user = config.hot.os_user if os.geteuid() == 0 else ""

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, check=False,
            user=self.os_user or None, cwd=self.root,
        )

    def _ensure_os_user(self) -> None:
        if not self.os_user:
            return
        try:
            pwd.getpwnam(self.os_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self.os_user], check=True)
        account = pwd.getpwnam(self.os_user)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        for parent in self.root.parents:
            # The server user must be able to reach its own directory.
            if parent.stat().st_mode & 0o001 == 0:
                raise ConfigurationError(
                    f"{parent} is not traversable by the '{self.os_user}' user that runs the "
                    "embedded PostgreSQL: chmod o+x it or choose another data dir")

    def initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._ensure_os_user()
        log.info("initdb %s", self.pgdata)
        out = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
            "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust",
        )
        if out.returncode != 0:
            raise ConfigurationError(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")
        (self.pgdata / "pg_hba.conf").write_text(HBA)
        self._ensure_os_user()

    def _write_settings(self) -> None:
        settings = dict(SERVER_SETTINGS)
        settings["port"] = str(self.port)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        settings["listen_addresses"] = f"'{self.listen_addresses}'"
        for entry in self.extra_settings:
            name, _, value = entry.partition("=")
            settings[name.strip()] = value.strip()
        lines = [f"{name} = {value}" for name, value in settings.items()]
        (self.pgdata / "postgresql.auto.conf").write_text(
            "# Written by Fig at every start: edit conf/fig.toml [hot] settings instead.\n"
            + "\n".join(lines) + "\n")

    def _postmaster_alive(self) -> bool:
        """Whether postmaster.pid names a live postgres process. A killed postmaster that no
        one reaped (a container whose PID 1 does not reap orphans) is a zombie: dead, though
        pg_ctl status, which only sends it signal 0, calls it running."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ValueError, IndexError, OSError):
            return False
        return b"postgres" in cmdline and state != "Z"

    def _clear_stale_pid(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists() and not self._postmaster_alive():
            log.warning("removing stale %s", pid_file)
            pid_file.unlink()

    def is_running(self) -> bool:
        return self._postmaster_alive() and self._run(
            str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> None:
        """initdb when absent, then start the server and wait until it accepts connections."""
        if not (self.pgdata / "PG_VERSION").exists():
            self.initdb()
        self.socket_dir.mkdir(exist_ok=True)
        self._ensure_os_user()
        self._write_settings()
        if self.is_running():
            log.info("embedded PostgreSQL already running at %s", self.pgdata)
            return
        self._clear_stale_pid()
        out = self._run(
            str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "120", "-D", str(self.pgdata),
            "-l", str(self.log_file),
        )
        if out.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ConfigurationError(f"PostgreSQL did not start: {out.stderr.strip()}\n{tail}")
        log.info("embedded PostgreSQL started, socket %s", self.socket_path)

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode,
                      "-D", str(self.pgdata))
