"""Fig's Postgres endpoint: accepts clients, negotiates startup, hands them to their sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from fig_server import wire
from fig_server.config import FigConfig
from fig_server.errors import FigError, ProtocolViolation, TooManyConnections
from fig_server.hot.backend import HotTarget
from fig_server.protocol.connection import ClientConnection
from fig_server.session.session import Session

log = logging.getLogger(__name__)

MAX_STARTUP_BYTES = 10_000
STARTUP_TIMEOUT_S = 60.0


class FigServer:
    """The asyncio server; one task per client connection."""

    def __init__(self, config: FigConfig, target: HotTarget,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.target = target
        self.tls_context = tls_context
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
            for session in list(self.sessions.values()):
                await session.close()
            await self.server.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        try:
            await self._negotiate(reader, writer)
        except FigError as error:
            if not writer.is_closing():
                writer.write(wire.error_response(error.fields()))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        except Exception:
            log.exception("connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self.connections -= 1
            with contextlib.suppress(ConnectionError, RuntimeError):
                await writer.drain()
            writer.close()

    async def _read_startup(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        length = wire.UINT32.unpack(await reader.readexactly(4))[0]
        if length < 8 or length > MAX_STARTUP_BYTES:
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        body = await reader.readexactly(length - 4)
        return wire.INT32.unpack_from(body)[0], body[4:]

    async def _negotiate(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """SSLRequest, GSSENCRequest and CancelRequest, until a StartupMessage arrives."""
        while True:
            code, body = await asyncio.wait_for(self._read_startup(reader), STARTUP_TIMEOUT_S)
            if code == wire.CANCEL_REQUEST:
                await self._on_cancel_request(body)
                return
            if code == wire.GSSENC_REQUEST:
                writer.write(b"N")
                continue
            if code == wire.SSL_REQUEST:
                if self.tls_context is None:
                    writer.write(b"N")
                else:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.tls_context)
                continue
            if code >> 16 != 3:
                raise ProtocolViolation(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "server supports 3.0 to 3.0")
            try:
                params = wire.parse_startup_params(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ProtocolViolation(f"invalid startup packet layout: {exc}") from exc
            if "user" not in params:
                raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
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
        connection = ClientConnection(session, reader, writer,
                                      self.config.server.max_message_bytes)
        try:
            if await connection.start(version):
                await connection.relay()
        finally:
            del self.sessions[session.pid]
            await session.close()
