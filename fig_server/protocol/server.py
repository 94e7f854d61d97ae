"""Fig's Postgres endpoint: accepts clients, negotiates startup, hands them to their sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from fig_server import metrics, wire
from fig_server.config import FigConfig
from fig_server.errors import (
    FeatureNotSupported,
    FigError,
    InvalidAuthorization,
    ProtocolViolation,
    TooManyConnections,
)
from fig_server.hot.backend import HotTarget
from fig_server.hot.roles import RoleDirectory
from fig_server.limits import UserLimits
from fig_server.protocol import tls
from fig_server.protocol.auth import Authenticator
from fig_server.protocol.connection import ClientConnection
from fig_server.session.audit import StatementAudit
from fig_server.session.audit_log import AuditLog
from fig_server.session.federation import ColdService, Federator, TieredCatalog
from fig_server.session.session import Session

log = logging.getLogger(__name__)

MAX_STARTUP_BYTES = 10_000
STARTUP_TIMEOUT_S = 60.0


def fatal_response(error: FigError) -> bytes:
    """The ErrorResponse for an error that ends the connection: FATAL, as Postgres sends it."""
    return wire.error_response({**error.fields(), "S": "FATAL", "V": "FATAL"})


def _refuse_pipelined(reader: asyncio.StreamReader, what: str) -> None:
    """Bytes sent before the answer to an encryption request are refused, as Postgres does:
    after TLS starts they would pass for encrypted data (a man-in-the-middle could inject them).
    """
    if reader._buffer:  # type: ignore[attr-defined]  # asyncio has no public peek
        raise ProtocolViolation(
            f"received unencrypted data after {what} request",
            detail="This could be either a client-software bug or evidence of an attempted "
                   "man-in-the-middle attack.")


class OldProtocol(FeatureNotSupported):
    """A client asking for protocol 1 or 2: answered in the old format, as Postgres does."""


class FigServer:
    """The asyncio server; one task per client connection."""

    def __init__(self, config: FigConfig, target: HotTarget,
                 tls_context: ssl.SSLContext | None = None,
                 tiered: TieredCatalog | None = None, cold: ColdService | None = None,
                 hot_dsn: str = "", audit: AuditLog | None = None) -> None:
        self.config = config
        self.audit = audit
        self.target = target
        self.tls_context = tls_context or tls.server_context(config)
        self.roles: RoleDirectory | None = None
        self.authenticator: Authenticator | None = None
        if config.auth.method != "trust":
            if not hot_dsn:
                raise ValueError(f"auth method {config.auth.method} needs the hot DSN")
            self.roles = RoleDirectory(hot_dsn)
            self.authenticator = Authenticator(config.auth.method, self.roles)
        self.tiered = tiered
        self.cold = cold
        self.limits = UserLimits(config.limits)
        self.sessions: dict[int, Session] = {}
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port actually bound (the configured one, or any if it is 0)."""
        self.server = await asyncio.start_server(
            self._serve_client, self.config.server.host, self.config.server.port,
            limit=wire.UINT32.size * 65536, reuse_address=True, backlog=1024)
        port: int = self.server.sockets[0].getsockname()[1]
        log.info("Fig listening on %s:%d", self.config.server.host, port)
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            sessions = list(self.sessions.values())
            # every session first: while one closes, another's statement may already fail
            # because the cold engine is going away, and must say 57P01 too
            for session in sessions:
                session.shutting_down = True
            for session in sessions:
                await session.close()
            await self.server.wait_closed()
        if self.roles is not None:
            await self.roles.close()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_TOTAL.inc()
        try:
            await self._negotiate(reader, writer)
        except OldProtocol as error:
            if not writer.is_closing():
                writer.write(wire.error_response_v2(f"FATAL:  {error.message}"))
        except FigError as error:
            if not writer.is_closing():
                writer.write(fatal_response(error))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        except Exception:
            log.exception("connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self.connections -= 1
            metrics.CONNECTIONS.dec()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await writer.drain()
            writer.close()

    async def _read_startup(self, reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
        """The next startup packet; None if its length is invalid.

        Like Postgres, a bad length gets no answer: the peer may not speak the protocol at all.
        """
        length = wire.UINT32.unpack(await reader.readexactly(4))[0]
        if length < 8 or length > MAX_STARTUP_BYTES:
            log.info("invalid length of startup packet: %d", length)
            return None
        body = await reader.readexactly(length - 4)
        return wire.INT32.unpack_from(body)[0], body[4:]

    async def _negotiate(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """SSLRequest, GSSENCRequest and CancelRequest, until a StartupMessage arrives."""
        ssl_done = gss_done = False
        while True:
            packet = await asyncio.wait_for(self._read_startup(reader), STARTUP_TIMEOUT_S)
            if packet is None:
                return
            code, body = packet
            if code == wire.CANCEL_REQUEST:
                await self._on_cancel_request(body)
                return
            # A second SSLRequest or GSSENCRequest is refused as an unknown protocol below.
            if code == wire.GSSENC_REQUEST and not gss_done:
                gss_done = True
                writer.write(b"N")
                _refuse_pipelined(reader, "GSSAPI encryption")
                continue
            if code == wire.SSL_REQUEST and not ssl_done:
                ssl_done = True
                if self.tls_context is None:
                    writer.write(b"N")
                    _refuse_pipelined(reader, "SSL")
                else:
                    _refuse_pipelined(reader, "SSL")
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.tls_context)
                continue
            major, minor = (code >> 16) & 0xFFFF, code & 0xFFFF
            if major != 3:
                unsupported = OldProtocol if major < 3 else FeatureNotSupported
                raise unsupported(f"unsupported frontend protocol {major}.{minor}: "
                                  "server supports 3.0 to 3.0")
            try:
                params = wire.parse_startup_params(body)
            except ValueError as exc:
                raise ProtocolViolation(f"invalid startup packet layout: {exc}") from exc
            if not params.get("user"):
                raise InvalidAuthorization(
                    "no PostgreSQL user name specified in startup packet")
            if self.config.server.tls_required_for_remote:
                tls.require_tls(writer.get_extra_info("peername"),
                                writer.get_extra_info("ssl_object") is not None, params)
            await self._on_startup(code, params, reader, writer)
            return

    async def _on_cancel_request(self, body: bytes) -> None:
        if len(body) != 8:
            return
        pid, secret = wire.INT32.unpack_from(body)[0], wire.INT32.unpack_from(body, 4)[0]
        session = self.sessions.get(pid)
        if session is not None and session.secret == secret:
            await session.cancel()

    async def _on_startup(self, version: int, params: dict[str, str],
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.config.server.max_connections:
            raise TooManyConnections("sorry, too many clients already")
        peer = writer.get_extra_info("peername")
        session = Session(self.target, params, peer=str(peer))
        while session.pid in self.sessions:
            session = Session(self.target, params, peer=str(peer))
        self.sessions[session.pid] = session
        federator = None
        if self.tiered is not None and self.cold is not None:
            federator = Federator(self.cold, self.tiered, session.database)
        connection = ClientConnection(session, reader, writer,
                                      self.config.server.max_message_bytes, federator)
        connection.limits = self.limits
        if self.audit is not None:
            connection.audit = StatementAudit(self.audit, session)
        try:
            if await connection.start(version, self.authenticator):
                await connection.relay()
        finally:
            if connection.audit is not None:
                connection.audit.close()
            del self.sessions[session.pid]
            await session.close()
