"""TLS towards clients: the server's SSLContext, a self-signed pair for `tls = auto`, and the
rule that refuses unencrypted clients from other hosts."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from fig_server.config import FigConfig
from fig_server.errors import ConfigurationError, InvalidAuthorization

log = logging.getLogger(__name__)

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
VALID_DAYS = 3650


def _alt_names(host: str) -> str:
    """DNS and IP names a client may verify against: loopback, this host, the listen address."""
    names = {"DNS:localhost", "IP:127.0.0.1", "IP:::1", f"DNS:{socket.gethostname()}"}
    for candidate in (host.strip(),):
        if not candidate or candidate in ("0.0.0.0", "::", "*"):
            continue
        try:
            names.add(f"IP:{ipaddress.ip_address(candidate)}")
        except ValueError:
            names.add(f"DNS:{candidate}")
    return ",".join(sorted(names))


def generate_self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key under directory, made once and then reused."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigurationError("tls = \"auto\" needs the openssl command to generate a "
                                 "certificate; install it or set tls = \"on\" with your files")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", str(VALID_DAYS), "-subj", f"/CN={socket.gethostname()}",
         "-addext", f"subjectAltName={_alt_names(host)}",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ConfigurationError(f"openssl could not generate a certificate: {out.stderr.strip()}")
    os.chmod(key, 0o600)
    log.info("generated a self-signed TLS certificate at %s", cert)
    return cert, key


def server_context(config: FigConfig) -> ssl.SSLContext | None:
    """The SSLContext for `[server] tls`; None when TLS is off."""
    mode = config.server.tls.strip().lower()
    if mode == "off":
        return None
    if mode == "auto":
        cert, key = generate_self_signed(config.data_dir / "tls", config.server.host)
    elif mode == "on":
        if not (config.server.tls_cert and config.server.tls_key):
            raise ConfigurationError("tls = \"on\" needs [server] tls_cert and tls_key")
        cert, key = Path(config.server.tls_cert), Path(config.server.tls_key)
    else:
        raise ConfigurationError(f"[server] tls must be off, auto or on, not {mode!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS certificate {cert} and key {key}: {exc}"
                                 ) from exc
    return context


def is_local(peer: object) -> bool:
    """Loopback TCP peers and Unix-socket peers are local."""
    if not isinstance(peer, tuple) or not peer:
        return True
    try:
        return ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


def require_tls(peer: object, encrypted: bool, params: dict[str, str]) -> None:
    """Refuse an unencrypted client from another host, as a pg_hba `hostssl` rule would."""
    if encrypted or is_local(peer):
        return
    host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
    user = params.get("user", "")
    raise InvalidAuthorization(
        f'no pg_hba.conf entry for host "{host}", user "{user}", '
        f'database "{params.get("database", user)}", no encryption',
        hint="Fig requires TLS for clients that are not on this host: use sslmode=require.")
