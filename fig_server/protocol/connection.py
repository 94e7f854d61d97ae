"""One client connection after startup: authentication relay, then the message pumps."""

from __future__ import annotations

import asyncio
import logging

from fig_server import wire
from fig_server.errors import ConnectionFailure, FigError, ProtocolViolation
from fig_server.session.federation import Federator
from fig_server.session.session import Session

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Authentication requests after which the client must answer with a 'p' message.
AUTH_CODES_WANTING_REPLY = frozenset({2, 3, 5, 7, 8, 9, 10, 11})
COUNTS_AS_REQUEST = frozenset(b"QSF")
# Messages that carry little or nothing get Postgres's small length limit (PQ_SMALL_MESSAGE_LIMIT),
# so a Sync declaring megabytes is refused at once instead of waiting for bytes never sent.
SMALL_MESSAGE_TYPES = frozenset(b"CDEHScfX")
SMALL_MESSAGE_BYTES = 10_000


class ClientConnection:
    """Moves messages between a client and its session's backend; never interprets rows."""

    def __init__(self, session: Session, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, max_message_bytes: int,
                 federator: Federator | None = None) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.max_message_bytes = max_message_bytes
        self.client_buffer = bytearray()
        self.federator = federator
        # Extended-protocol messages held back until Sync because they name tiered tables.
        self.batch: list[bytes] | None = None
        # Prepared statements whose SQL names tiered tables: name -> original SQL.
        self.tiered_statements: dict[str, str] = {}
        self._idle = asyncio.Event()
        self._divert: asyncio.Queue[tuple[int, bytes]] | None = None

    # -- helpers -------------------------------------------------------------------------

    def send_error(self, error: FigError) -> None:
        """Report an error that ends the connection: FATAL, as Postgres reports those."""
        if not self.writer.is_closing():
            self.writer.write(wire.error_response({**error.fields(), "S": "FATAL",
                                                   "V": "FATAL"}))

    async def read_client_message(self) -> tuple[int, bytes]:
        """One whole client message, for the startup phase."""
        while True:
            spans, _ = self._frames()
            if spans:
                start, end = spans[0]
                kind = self.client_buffer[start]
                payload = bytes(self.client_buffer[start + 5:end])
                del self.client_buffer[:end]
                return kind, payload
            chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                raise ConnectionResetError("client closed the connection")
            self.client_buffer += chunk

    def _frames(self) -> tuple[list[tuple[int, int]], int]:
        """Complete client messages in the buffer, each checked for type and length."""
        spans, rest = wire.split_messages(self.client_buffer)
        for start, _ in spans:
            self._check_header(start)
        if len(self.client_buffer) - rest >= 5:
            self._check_header(rest)
        return spans, rest

    def _check_header(self, start: int) -> None:
        kind, length = wire.HEADER.unpack_from(self.client_buffer, start)
        if kind[0] not in wire.FRONTEND_TYPES:
            raise ProtocolViolation(f"invalid frontend message type {kind[0]}")
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        if length > SMALL_MESSAGE_BYTES and kind[0] in SMALL_MESSAGE_TYPES:
            raise ProtocolViolation(f"invalid message length {length}")
        if length > self.max_message_bytes:
            raise ProtocolViolation(
                f"message of {length} bytes exceeds the limit of {self.max_message_bytes}")

    # -- startup -------------------------------------------------------------------------

    async def start(self, version: int) -> bool:
        """Open the backend and relay authentication; True once the backend is ready."""
        backend = await self.session.connect(version)
        while True:
            kind, payload = await backend.read_message()
            if kind == b"K":
                backend.pid, backend.secret = wire.INT32.unpack_from(payload)[0], \
                    wire.INT32.unpack_from(payload, 4)[0]
                self.writer.write(wire.backend_key_data(self.session.pid, self.session.secret))
                continue
            self.writer.write(wire.message(kind, payload))
            if kind == b"E":
                await self.writer.drain()
                return False
            if kind == b"Z":
                self.session.transaction_status = payload[:1]
                await self.writer.drain()
                return True
            if kind == b"R" and wire.INT32.unpack_from(payload)[0] in AUTH_CODES_WANTING_REPLY:
                await self.writer.drain()
                reply_kind, reply = await self.read_client_message()
                if reply_kind != ord("p"):
                    raise ProtocolViolation(
                        f"expected password response, got message type {reply_kind}")
                backend.writer.write(wire.message(b"p", reply))

    # -- relay ---------------------------------------------------------------------------

    async def relay(self) -> None:
        """Run both pumps until either side ends, then close the backend cleanly."""
        client_task = asyncio.create_task(self._pump_client())
        backend_task = asyncio.create_task(self._pump_backend())
        done, pending = await asyncio.wait(
            {client_task, backend_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            error = task.exception()
            if isinstance(error, FigError):
                self.send_error(error)
            elif error is not None and not isinstance(error, ConnectionError):
                raise error

    async def _pump_client(self) -> None:
        session = self.session
        backend = session.backend
        assert backend is not None
        buffer = self.client_buffer
        while True:
            spans, rest = self._frames()
            if rest:
                for start, end in spans:
                    kind = buffer[start]
                    if kind in COUNTS_AS_REQUEST:
                        session.in_flight += 1
                    elif kind == 88:  # 'X' Terminate
                        # An orderly end: what was sent before it runs to completion, as on
                        # Postgres, so closing the session must not cancel it.
                        backend.writer.write(bytes(buffer[:end]))
                        session.in_flight = 0
                        return
                backend.writer.write(bytes(buffer[:rest]))
                del buffer[:rest]
                await backend.writer.drain()
            chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                return
            buffer += chunk

    async def _pump_backend(self) -> None:
        session = self.session
        backend = session.backend
        assert backend is not None
        reader, writer = backend.reader, self.writer
        buffer = bytearray()
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                raise ConnectionFailure(
                    "terminating connection because the hot PostgreSQL closed it")
            if buffer:
                buffer += chunk
                data: bytes | bytearray = buffer
            else:
                data = chunk
            spans, rest = wire.split_messages(data)
            if self._divert is not None:
                self._divert_messages(data, spans)
                buffer = bytearray(data[rest:])
                continue
            for start, _ in spans:
                if data[start] == 90:  # 'Z' ReadyForQuery
                    session.in_flight -= 1
                    session.transaction_status = data[start + 5:start + 6]
                    if session.in_flight <= 0:
                        self._idle.set()
            if rest == len(data):
                writer.write(data if data is chunk else bytes(data))
                buffer = bytearray()
            else:
                writer.write(bytes(data[:rest]))
                buffer = bytearray(data[rest:])
            await writer.drain()

    def _divert_messages(self, data: bytes | bytearray, spans: list[tuple[int, int]]) -> None:
        """Answers to Fig's own messages go to the injector; notifications still to the client."""
        assert self._divert is not None
        for start, end in spans:
            kind = data[start]
            if kind in (65, 83):  # 'A' NotificationResponse, 'S' ParameterStatus
                self.writer.write(bytes(data[start:end]))
            else:
                self._divert.put_nowait((kind, bytes(data[start + 5:end])))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
