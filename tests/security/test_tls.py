"""TLS towards clients: generated and configured certificates, sslmode require and verify-full,
SSLRequest refused when off, and unencrypted clients refused from other hosts."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.conftest import FigProcess, start_fig
from tests.security.conftest import ROLES, create_roles

USER, PASSWORD = "alice_scram", ROLES["alice_scram"][0]


def remote_address() -> str | None:
    """An address of this machine that is not loopback, when there is one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def tls_fig() -> Iterator[FigProcess]:
    """tls = auto on every address, SCRAM, TLS required for clients that are not local."""
    server = start_fig(env={"FIG__SERVER__TLS": "auto", "FIG__SERVER__HOST": "0.0.0.0",
                            "FIG__SERVER__TLS_REQUIRED_FOR_REMOTE": "true",
                            "FIG__AUTH__METHOD": "scram-sha-256"})
    create_roles(server)
    yield server
    server.stop()


def connect(fig: FigProcess, host: str = "127.0.0.1", **extra: str) -> psycopg.Connection:
    return psycopg.connect(host=host, port=fig.port, user=USER, password=PASSWORD,
                           dbname="postgres", connect_timeout=10, **extra)


def psql(fig: FigProcess, host: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PGPASSWORD": PASSWORD, **env}
    return subprocess.run(
        ["psql", "-X", "-w", "-h", host, "-p", str(fig.port), "-U", USER, "-d", "postgres",
         "-c", r"\conninfo", "-Atc", "select current_user"],
        env=full, capture_output=True, text=True, timeout=30)


def test_auto_generates_a_pair_in_the_data_dir(tls_fig: FigProcess) -> None:
    tls_dir = tls_fig.data_dir / "tls"
    assert (tls_dir / "server.crt").exists()
    assert (tls_dir / "server.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_psycopg_require_and_verify_full(tls_fig: FigProcess, host: str) -> None:
    root = str(tls_fig.data_dir / "tls" / "server.crt")
    for extra in ({"sslmode": "require"}, {"sslmode": "verify-full", "sslrootcert": root}):
        with connect(tls_fig, host, **extra) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select current_user").fetchone() == (USER,)


def test_verify_full_checks_the_host_name(tls_fig: FigProcess) -> None:
    root = str(tls_fig.data_dir / "tls" / "server.crt")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(host="not-fig.example", hostaddr="127.0.0.1", port=tls_fig.port,
                        user=USER, password=PASSWORD, dbname="postgres",
                        sslmode="verify-full", sslrootcert=root, connect_timeout=10)
    system_roots = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(system_roots):  # a CA that did not sign Fig's certificate
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            connect(tls_fig, sslmode="verify-full", sslrootcert=system_roots)


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_psql_over_tls(tls_fig: FigProcess, mode: str) -> None:
    out = psql(tls_fig, "localhost", PGSSLMODE=mode,
               PGSSLROOTCERT=str(tls_fig.data_dir / "tls" / "server.crt"))
    assert out.returncode == 0, out.stderr
    assert "SSL connection (protocol: TLSv1." in out.stdout and out.stdout.endswith(f"{USER}\n")


def test_plain_clients_refused_only_from_other_hosts(tls_fig: FigProcess) -> None:
    with connect(tls_fig, sslmode="disable") as conn:  # loopback: allowed
        assert not conn.pgconn.ssl_in_use
    address = remote_address()
    if address is None:
        # No network address here: give loopback's device a non-loopback one for the test.
        address = TEST_ADDRESS
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        _refused_without_tls(tls_fig, address)
    finally:
        if address == TEST_ADDRESS:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


TEST_ADDRESS = "198.18.0.77"


def _refused_without_tls(tls_fig: FigProcess, address: str) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as info:
        asyncio.run(asyncpg.connect(host=address, port=tls_fig.port, user=USER,
                                    password=PASSWORD, database="postgres", ssl=False))
    assert info.value.sqlstate == "28000"
    assert f'no pg_hba.conf entry for host "{address}"' in str(info.value)
    with connect(tls_fig, address, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
    out = psql(tls_fig, address, PGSSLMODE="disable")
    assert out.returncode != 0 and "no encryption" in out.stderr


def test_tls_on_loads_configured_files(tls_fig: FigProcess) -> None:
    tls_dir = tls_fig.data_dir / "tls"
    server = start_fig(env={"FIG__SERVER__TLS": "on",
                            "FIG__SERVER__TLS_CERT": str(tls_dir / "server.crt"),
                            "FIG__SERVER__TLS_KEY": str(tls_dir / "server.key")})
    try:
        with psycopg.connect(server.dsn.replace("127.0.0.1", "localhost"),
                             sslmode="verify-full",
                             sslrootcert=str(tls_dir / "server.crt")) as conn:
            assert conn.pgconn.ssl_in_use
        assert not (server.data_dir / "tls").exists()
    finally:
        server.stop()


def test_ssl_request_answered_n_when_off(fig: FigProcess) -> None:
    with socket.create_connection((fig.host, fig.port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"N"
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(fig.dsn, sslmode="require")
    with psycopg.connect(fig.dsn, sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use
