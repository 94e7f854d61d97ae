"""A client session's own connection to the hot PostgreSQL, spoken at the message level."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict

from fig_server import wire
from fig_server.errors import ConnectionFailure

READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class HotTarget:
    """Where the hot PostgreSQL listens: a Unix socket path or a TCP host and port."""

    unix_path: str = ""
    host: str = ""
    port: int = 5432

    @classmethod
    def from_dsn(cls, dsn: str) -> HotTarget:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "/var/run/postgresql")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            return cls(unix_path=f"{host}/.s.PGSQL.{port}", port=port)
        return cls(host=host, port=port)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.unix_path:
                return await asyncio.open_unix_connection(self.unix_path, limit=READ_SIZE)
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_SIZE)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return reader, writer
        except OSError as exc:
            raise ConnectionFailure(
                f"could not connect to the hot PostgreSQL: {exc.strerror or exc}") from exc

    async def cancel(self, pid: int, secret: int) -> None:
        """Send a CancelRequest for the backend process pid."""
        _, writer = await self.open()
        writer.write(wire.cancel_packet(pid, secret))
        await writer.drain()
        writer.close()


class BackendConnection:
    """The socket to one backend process, with its cancel key once known."""

    def __init__(self, target: HotTarget, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.pid = 0
        self.secret = 0

    @classmethod
    async def open(cls, target: HotTarget, params: dict[str, str],
                   version: int = wire.PROTOCOL_V3) -> BackendConnection:
        """Connect and send the client's own startup parameters."""
        reader, writer = await target.open()
        writer.write(wire.startup_packet(params, version))
        return cls(target, reader, writer)

    async def read_message(self) -> tuple[bytes, bytes]:
        """One whole message (type, payload); ConnectionFailure if the backend hung up."""
        try:
            header = await self.reader.readexactly(5)
            kind, length = wire.HEADER.unpack(header)
            payload = await self.reader.readexactly(length - 4)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ConnectionFailure("the hot PostgreSQL closed the connection") from exc
        return kind, payload

    async def cancel(self) -> None:
        if self.pid:
            await self.target.cancel(self.pid, self.secret)

    def close(self) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.writer.write(wire.message(b"X"))
            self.writer.close()
