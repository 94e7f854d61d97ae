"""One client connection after startup: authentication relay, then the message pumps."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from time import perf_counter

from fig_server import wire
from fig_server.errors import (
    AdminShutdown,
    ConnectionFailure,
    FigError,
    InternalError,
    ProtocolViolation,
)
from fig_server.limits import UserLimits
from fig_server.planner.parts import literal
from fig_server.planner.rewrite import refuse_after_session_change, split_statements
from fig_server.planner.tiers import TieredSet
from fig_server.protocol.auth import Authenticator
from fig_server.session.audit import StatementAudit, StatementRecord, route_of
from fig_server.session.cold_writes import bound_values, inline_parameters, run_cold_write
from fig_server.session.federation import BackendError, Bound, Federator, Prepared, data_rows
from fig_server.session.session import Session

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Wait for a peer to take our writes only once this much is buffered (drain() per message is
# a measurable share of a relayed primary-key lookup).
DRAIN_ABOVE = 64 * 1024
# Authentication requests after which the client must answer with a 'p' message.
AUTH_CODES_WANTING_REPLY = frozenset({2, 3, 5, 7, 8, 9, 10, 11})
COUNTS_AS_REQUEST = frozenset(b"QSF")
# Messages that carry little or nothing get Postgres's small length limit (PQ_SMALL_MESSAGE_LIMIT),
# so a Sync declaring megabytes is refused at once instead of waiting for bytes never sent.
SMALL_MESSAGE_TYPES = frozenset(b"CDEHScfX")
SMALL_MESSAGE_BYTES = 10_000
# How a backend ErrorResponse that ends the session begins (Postgres sends severity first).
FATAL_SEVERITIES = (b"SFATAL\0", b"SPANIC\0")
# Messages the audit notes: Query, Parse, Bind, Execute, Sync, FunctionCall from the client;
# CommandComplete, ErrorResponse, ParameterStatus from the backend (never a DataRow).
AUDITED_CLIENT = frozenset(b"QPBESF")
AUDITED_BACKEND = frozenset(b"CES")
# Messages that may begin a statement over tiered tables: Query, Parse, Bind.
FEDERATED = frozenset(b"QPB")
# A batch running one bound statement: Parse (or an earlier one), Bind, Describe, Execute, Sync
BOUND_WRITE_BATCH = re.compile(rb"P?BD?ES")
WRITE_VERB = re.compile(r"\s*(?:update|delete|with)\b", re.IGNORECASE)
# What Postgres answers Parse, Bind and a portal's Describe with for an UPDATE/DELETE
# without RETURNING: ParseComplete, BindComplete, NoData
ANSWERED = {80: b"1", 66: b"2", 68: b"n"}


@dataclass(frozen=True)
class BoundWrite:
    """An UPDATE/DELETE bound once (_bound_write): its statement name, SQL, the Parse when
    in the batch, the declared parameter types and the Bind's values (wire.bind_values)."""

    name: str
    sql: str
    parse: bytes | None
    types: list[int]
    values: bytes


# Statements after which the server-wide list of tiered tables and views is read again.
DDL = re.compile(r"^\s*(?:create|alter|drop)\b", re.IGNORECASE)
# Named statements remembered per session to see a table tiered after they were prepared
# (the oldest forgotten beyond this: drivers close theirs, psycopg keeps at most 100).
MAX_PLAIN_STATEMENTS = 4096


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
        # Prepared statements whose SQL names tiered tables: name -> (original SQL, the Parse
        # payload the backend holds).
        self.tiered_statements: dict[str, tuple[str, bytes]] = {}
        # Named statements prepared over no tiered table: Parse payload and the tiered
        # catalog's generation they were last checked against (a table may be tiered later).
        self.plain_statements: dict[str, tuple[bytes, int]] = {}
        self._idle = asyncio.Event()
        self._divert: asyncio.Queue[tuple[int, bytes]] | None = None
        # Per-user limits (set by the server), the refusal of the statement being held, and
        # whether an extended-protocol batch has begun (its first message is what counts).
        self.limits: UserLimits | None = None
        self._refused: FigError | None = None
        self._open_batch = False
        # The statement audit (set by the server when enabled) and the record of the request
        # Fig is holding, until it is forwarded or answered by Fig itself.
        self.audit: StatementAudit | None = None
        self._entry: StatementRecord | None = None
        # A statement runs in a transaction of Fig's own (Federator.begin_reduced): Fig ends
        # it, and holds back the statement's ReadyForQuery until it has.
        self._managed = False
        self._hold_ready = False
        # A batch ended by Flush (asyncpg's prepare) failed in Fig: as Postgres after an
        # extended-protocol error, the client's messages are discarded up to its Sync, which
        # is answered with the one ReadyForQuery (self.batch holds them back meanwhile).
        self._in_flush = False
        self._discarding = False

    # -- helpers -------------------------------------------------------------------------

    def send_error(self, error: FigError) -> None:
        """Report an error that ends the connection: FATAL, as Postgres reports those."""
        if not self.writer.is_closing():
            self.writer.write(wire.error_response({**error.fields(), "S": "FATAL",
                                                   "V": "FATAL"}))

    async def read_client_message(self) -> tuple[int, bytes]:
        """One whole client message, for the startup phase."""
        while True:
            spans, _, bad = self._frames()
            if spans:
                start, end = spans[0]
                kind = self.client_buffer[start]
                payload = bytes(self.client_buffer[start + 5:end])
                del self.client_buffer[:end]
                return kind, payload
            if bad is not None:
                raise bad
            chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                raise ConnectionResetError("client closed the connection")
            self.client_buffer += chunk

    def _frames(self) -> tuple[list[tuple[int, int]], int, ProtocolViolation | None]:
        """Complete client messages in the buffer up to the first with a bad type or length,
        where the rest begins, and the error of that bad message if there is one."""
        spans, rest = wire.split_messages(self.client_buffer)
        for index, (start, _) in enumerate(spans):
            bad = self._header_error(start)
            if bad is not None:
                return spans[:index], start, bad
        if len(self.client_buffer) - rest >= 5:
            return spans, rest, self._header_error(rest)
        return spans, rest, None

    def _header_error(self, start: int) -> ProtocolViolation | None:
        kind, length = wire.HEADER.unpack_from(self.client_buffer, start)
        if kind[0] not in wire.FRONTEND_TYPES:
            return ProtocolViolation(f"invalid frontend message type {kind[0]}")
        if length < 4 or (length > SMALL_MESSAGE_BYTES and kind[0] in SMALL_MESSAGE_TYPES):
            return ProtocolViolation(f"invalid message length {length}")
        if length > self.max_message_bytes:
            return ProtocolViolation(
                f"message of {length} bytes exceeds the limit of {self.max_message_bytes}")
        return None

    # -- startup -------------------------------------------------------------------------

    async def start(self, version: int, authenticator: Authenticator | None = None) -> bool:
        """Authenticate the client (or relay the backend's exchange when Fig trusts it), open
        the backend; True once the backend is ready."""
        credentials = None
        if authenticator is not None:
            credentials = await authenticator.authenticate(self, self.session.user)
        backend = await self.session.connect(version)
        while True:
            kind, payload = await backend.read_message()
            if kind == b"R" and credentials is not None:
                error = await credentials.answer(backend, payload)
                if error is None:
                    continue  # the client already had its AuthenticationOk from Fig
                kind, payload = b"E", error
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
                self.send_error(InternalError(f"internal error in Fig: {error!r}"))
                raise error

    async def _pump_client(self) -> None:
        """Frame the client's messages and pass them on in runs, holding back the few Fig
        must see first. One loop per chunk does the framing, the header check and the
        dispatch: this is every relayed statement's cost, so it reads each message once."""
        session = self.session
        backend = session.backend
        assert backend is not None
        buffer = self.client_buffer
        audit = self.audit
        unpack = wire.UINT32.unpack_from
        longest = self._longest_messages()
        while True:
            size = len(buffer)
            pos = sent = 0
            bad = None
            rated = self.limits is not None and self.limits.limits_rate
            while size - pos >= 5:
                kind = buffer[pos]
                length = unpack(buffer, pos + 1)[0]
                if not 4 <= length <= longest[kind]:
                    bad = self._header_error(pos)
                    break
                end = pos + 1 + length
                if end > size:
                    break
                if self.batch is not None or (kind in FEDERATED and self._federates(
                        kind, pos, end)) or (rated and self._refuses(kind)):
                    backend.writer.write(bytes(buffer[sent:pos]))
                    sent = end
                    await self._hold(kind, bytes(buffer[pos:end]))
                elif audit is not None and kind in AUDITED_CLIENT:
                    record = audit.on_client(kind, buffer, pos, end)
                    if kind in COUNTS_AS_REQUEST:
                        audit.pending.append(record)
                        session.in_flight += 1
                elif kind in COUNTS_AS_REQUEST:
                    session.in_flight += 1
                elif kind == 88:  # 'X' Terminate
                    # An orderly end: what was sent before it runs to completion, as on
                    # Postgres, so closing the session must not cancel it.
                    backend.writer.write(bytes(buffer[sent:end]))
                    session.in_flight = 0
                    return
                pos = end
            if pos > sent:
                backend.writer.write(bytes(buffer[sent:pos]))
            if pos:
                del buffer[:pos]
                if backend.writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
                    await backend.writer.drain()
                if self.federator is not None and self.federator.locked and self.batch is None:
                    await self._release_after_failed_block()
            if bad is not None:
                # As Postgres: what came before the bad message is answered, then the end.
                await self._wait_idle_while_connected()
                raise bad
            chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                return
            buffer += chunk

    def _longest_messages(self) -> tuple[int, ...]:
        """The longest length each message type byte may declare (0: not a frontend type):
        what _header_error checks, as one lookup."""
        return tuple(0 if kind not in wire.FRONTEND_TYPES
                     else min(SMALL_MESSAGE_BYTES, self.max_message_bytes)
                     if kind in SMALL_MESSAGE_TYPES else self.max_message_bytes
                     for kind in range(256))

    async def _release_after_failed_block(self) -> None:
        """A statement that failed its transaction block could not release Fig's boundary
        lock (nothing runs in a failed block; held, it would stop retention): release it as
        soon as what the client sent since (its ROLLBACK) has ended the block."""
        federator = self.federator
        assert federator is not None
        await self._wait_idle()
        if self.session.transaction_status != b"E":
            await federator.release(self)

    # -- statements over tiered tables ---------------------------------------------------

    def _federates(self, kind: int, start: int, end: int) -> bool:
        """Does this message need Fig's planner? One regex search over a Query's or Parse's
        raw bytes; a Bind only if it names a prepared statement over tiered tables."""
        if self.federator is None or kind not in FEDERATED:
            return False
        buffer = self.client_buffer
        try:
            if kind == 66:
                if not self.tiered_statements and not self.plain_statements:
                    return False
                name = wire.bind_statement(buffer, start + 5, end)
                return name in self.tiered_statements or self._tiered_since_parsed(name)
            if self.federator.may_apply(buffer, start + 5, end):
                return True
            if kind == 80 and buffer[start + 5] == 0:  # the unnamed statement is replaced
                if self.tiered_statements:
                    self.tiered_statements.pop("", None)
            elif kind == 80:  # a named statement over no tiered table (so far)
                payload = bytes(buffer[start + 5:end])
                name = wire.parse_text(payload)[0]
                self.tiered_statements.pop(name, None)
                self.plain_statements.pop(name, None)
                if len(self.plain_statements) >= MAX_PLAIN_STATEMENTS:
                    self.plain_statements.pop(next(iter(self.plain_statements)))
                self.plain_statements[name] = (payload, self.federator.tiered.generation)
        except ValueError:
            pass  # a malformed message: Postgres reports it as it always does
        return False

    def _tiered_since_parsed(self, name: str) -> bool:
        """Does a statement prepared over no tiered table now read one (tiered since)? Then
        it is planned at each Bind from now on, like one that did from the start."""
        entry = self.plain_statements.get(name)
        federator = self.federator
        if entry is None or federator is None or entry[1] == federator.tiered.generation:
            return False
        payload = entry[0]
        if not federator.may_apply(payload, 0, len(payload)):
            self.plain_statements[name] = (payload, federator.tiered.generation)
            return False
        del self.plain_statements[name]
        self.tiered_statements[name] = (wire.parse_text(payload)[1], payload)
        return True

    def _refuses(self, kind: int) -> bool:
        """Does the user's rate limit refuse the statement this message begins?"""
        if self.limits is None or not self.limits.limits_rate:
            return False
        first = kind == 81 or (kind in (80, 66, 69) and not self._open_batch)  # Q, or P B E
        self._open_batch = kind not in (81, 83)  # a Query or a Sync ends the batch
        if first:
            self._refused = self.limits.admit(self.session.user)
        return self._refused is not None

    async def _hold(self, kind: int, raw: bytes) -> None:
        if self._discarding:
            if kind == 83:  # 'S' Sync
                self._discarding, self.batch = False, None
                self.writer.write(wire.ready_for_query(self.session.transaction_status))
            return
        if self.audit is not None and kind in AUDITED_CLIENT:
            record = self.audit.on_client(kind, raw, 0, len(raw))
            if kind in COUNTS_AS_REQUEST:
                self._entry = record
        if self._refused is not None and kind in (81, 83):
            error, self._refused = self._refused, None
            self.batch, self._open_batch = None, False
            await self._wait_idle()
            await self._fail(error)
            return
        if kind == 81:
            await self._run_query(wire.query_text(raw[5:]))
            self._answered()
            return
        if self.batch is None:
            self.batch = []
        self.batch.append(raw)
        if kind in (83, 72):  # 'S' Sync ends the batch; so does 'H' Flush (asyncpg's prepare)
            batch, self.batch = self.batch, None
            await self._run_batch(batch)
            self._answered()

    def _answered(self) -> None:
        """The held request was answered by Fig alone (EXPLAIN): its record is complete."""
        entry, self._entry = self._entry, None
        if entry is not None and self.audit is not None:
            self.audit.finish(entry)

    def _note(self, prepared: list[Prepared], prelude_ms: float) -> None:
        """What the audit records of a statement over tiered tables: route, cold scans, the
        time of the prelude."""
        if self._entry is not None and self.federator is not None:
            self._entry.prepared = tuple(prepared)
            self._entry.route = route_of(prepared)
            self._entry.matcher = self.federator.tiered.current.matcher
            self._entry.prelude_ms = prelude_ms

    def _mark_forwarded(self) -> None:
        """The statement goes to Postgres now: what follows is its final step."""
        if self._entry is not None:
            self._entry.forwarded = perf_counter()

    async def _wait_idle(self) -> None:
        while self.session.in_flight > 0:
            self._idle.clear()
            await self._idle.wait()

    async def _wait_idle_while_connected(self) -> None:
        """_wait_idle, unless the client hangs up first: nobody is left to answer. A backend
        that ignores messages until a Sync (after an error in an extended-protocol message)
        never answers a Query sent before that Sync, and the wait would hold its session
        open for ever (the protocol fuzzer found it: Bind, Query, then a bad message)."""
        idle = asyncio.ensure_future(self._wait_idle())
        try:
            while not idle.done():
                hangup = asyncio.ensure_future(self.reader.read(READ_SIZE))
                await asyncio.wait({idle, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if not hangup.done():
                    hangup.cancel()
                elif not hangup.result():  # what came after the bad message is discarded
                    return
        finally:
            idle.cancel()

    async def inject(self, data: bytes, ready_count: int,
                     copy: AsyncIterator[bytes] | None = None) -> list[tuple[int, bytes]]:
        """Run Fig's own messages on the idle backend; the client never sees the answers.

        copy: CopyData messages to send after data (whose last statement is a COPY FROM
        STDIN), written as they come, then CopyDone."""
        backend = self.session.backend
        assert backend is not None
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._divert = queue
        try:
            backend.writer.write(data)
            await backend.writer.drain()
            if copy is not None:
                try:
                    async for message in copy:
                        backend.writer.write(message)
                        await backend.writer.drain()
                except Exception as exc:  # encoding failed: end the COPY, keep the session
                    backend.writer.write(wire.message(b"f", wire.cstring(f"Fig: {exc}")))
                    await self._answers(queue, ready_count)
                    raise
                backend.writer.write(wire.message(b"c"))
                await backend.writer.drain()
            return await self._answers(queue, ready_count)
        finally:
            self._divert = None

    async def _answers(self, queue: asyncio.Queue[tuple[int, bytes]], ready_count: int
                       ) -> list[tuple[int, bytes]]:
        """The backend's messages up to the ready_count-th ReadyForQuery."""
        answers = []
        while ready_count:
            kind, payload = await queue.get()
            answers.append((kind, payload))
            if kind == 90:
                ready_count -= 1
                self.session.transaction_status = payload[:1]
        return answers

    def _forward(self, data: bytes, requests: int) -> None:
        backend = self.session.backend
        assert backend is not None
        self.session.in_flight += requests
        if self.audit is not None and requests:
            self.audit.pending.append(self._entry)
            self._entry = None
        backend.writer.write(data)

    async def _federate(self, work: Callable[[Federator], Awaitable[bool | None]]) -> None:
        """Prelude (boundaries, settings, lock), the work, then release; errors to the client."""
        federator = self.federator
        assert federator is not None
        await self._wait_idle()
        cancel = threading.Event()
        self.session.cold_cancel = cancel
        try:
            with self.limits.cold_slot(self.session.user) if self.limits else nullcontext():
                if await work(federator) is not False:
                    await self._wait_idle()
                    await self._end_managed(federator)
        except FigError as error:
            await self._end_managed(federator, failed=True)
            # canceled by Fig's stop: say so, as Postgres does
            await self._fail(AdminShutdown() if self.session.shutting_down else error)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as error:  # a bug of Fig's: this statement fails, the session goes on
            if self.session.shutting_down:  # the backend or the engine went away under it
                log.info("federated statement ended by the stop: %r", error)
                await self._fail(AdminShutdown())
                return
            log.exception("federated statement failed")
            await self._end_managed(federator, failed=True)
            await self._fail(InternalError(f"internal error in Fig: {error!r}"))
        finally:
            self.session.cold_cancel = None
            if self.session.transaction_status != b"E":
                await federator.release(self)

    async def _end_managed(self, federator: Federator, failed: bool = False) -> None:
        """End Fig's own transaction around a statement: COMMIT after it ran (ROLLBACK when
        it failed in Postgres), ROLLBACK when Fig failed before it ran; then the
        ReadyForQuery held back, so the client sees the session idle, as it left it."""
        if not self._managed:
            return
        self._managed = self._hold_ready = federator.in_block = federator.reducing = False
        ran = not failed and self.session.transaction_status == b"T"
        answers = await self.inject(wire.message(
            b"Q", wire.cstring("COMMIT" if ran else "ROLLBACK")), 1)
        if failed:
            return  # _fail reports the error, with the ReadyForQuery
        self.writer.write(b"".join(wire.message(bytes([k]), p) for k, p in answers
                                   if k in (ord("E"), ord("N")))
                          + wire.ready_for_query(self.session.transaction_status))

    async def _fail(self, error: FigError) -> None:
        """Report an error of Fig's so the transaction state is what Postgres would make it."""
        entry, self._entry = self._entry, None
        if entry is not None and self.audit is not None:
            self.audit.finish(entry, error.fields().get("C", error.sqlstate))
        if self.session.transaction_status == b"T":
            fields = error.fields()
            raise_sql = ("DO $fig$ BEGIN RAISE EXCEPTION USING ERRCODE = "
                         f"{literal(fields['C'])}, MESSAGE = {literal(fields['M'])}"
                         + (f", HINT = {literal(fields['H'])}" if "H" in fields else "")
                         + "; END $fig$")
            answers = await self.inject(wire.message(b"Q", wire.cstring(raise_sql)), 1)
            if self._in_flush:  # the ReadyForQuery answers the client's Sync
                self._discard_until_sync()
                answers = [(k, p) for k, p in answers if k != 90]
            self.writer.write(b"".join(wire.message(bytes([k]), p) for k, p in answers))
            return
        if self._in_flush:
            self._discard_until_sync()
            self.writer.write(wire.error_response(error.fields()))
            return
        self.writer.write(wire.error_response(error.fields())
                          + wire.ready_for_query(self.session.transaction_status))

    def _discard_until_sync(self) -> None:
        self._discarding, self.batch = True, []

    async def _run_query(self, sql: str) -> None:
        """A simple Query naming a tiered table: load cold parts, then run it rewritten."""
        if self.session.transaction_status == b"E":
            await self._wait_idle()
            self._forward(wire.message(b"Q", wire.cstring(sql)), 1)
            return

        async def work(federator: Federator) -> bool:
            started = perf_counter()
            tiered, route, as_of = await federator.prelude(
                self, self.session.transaction_status == b"T")
            prelude_ms = (perf_counter() - started) * 1000
            statements = split_statements(sql)
            prepared = [await federator.plan(self, statement, tiered, route, f"q{index}",
                                             writes=True)
                        for index, statement in enumerate(statements)]
            refuse_after_session_change(statements, [p.rewrite is not None for p in prepared])
            self._note(prepared, prelude_ms)
            explain = next((p for p in prepared if p.rewrite and p.rewrite.explain), None)
            if explain is not None and len(prepared) == 1:
                await self._explain(federator, explain, as_of, prelude_ms)
                return True
            writes = [p for p in prepared if p.rewrite and p.rewrite.write]
            if writes:  # an UPDATE/DELETE reaching cold rows: both tiers, one command tag
                answers = await run_cold_write(
                    federator, self, writes + [p for p in prepared if p not in writes],
                    self.session.transaction_status == b"T", as_of, self.session.cold_cancel)
                self.writer.write(b"".join(wire.message(bytes([k]), p) for k, p in answers))
                return True
            if all(p.rewrite is None for p in prepared):
                # Nothing read from a tiered table (COPY ... FROM STDIN into one, DDL, a
                # table's name in a control function's argument): relay without holding the
                # boundary lock, and without waiting for the answer here: a COPY FROM needs
                # the client's CopyData, which this reader forwards.
                await federator.release(self)
                self._forward(wire.message(b"Q", wire.cstring(sql)), 1)
                if DDL.match(sql):
                    # a view over a tiered table may be new: the next statement must see it
                    await self._wait_idle()
                    await federator.tiered.refresh()
                return False
            await self._reduce(federator, prepared[0], len(prepared) == 1)
            for statement in prepared:
                await federator.load(self, statement, True, as_of, self.session.cold_cancel)
            self._mark_forwarded()
            self._hold_ready = self._managed
            self._forward(wire.message(b"Q", wire.cstring(
                ";\n".join(p.sql for p in prepared))), 1)
            return True

        await self._federate(work)

    async def _explain(self, federator: Federator, prepared: Prepared,
                       as_of: dt.datetime | None, prelude_ms: float) -> None:
        plan = prepared.rewrite
        assert plan is not None
        await federator.load(self, prepared, plan.analyze, as_of, self.session.cold_cancel)
        lines = await asyncio.to_thread(federator.explain_lines, prepared, as_of, prelude_ms)
        verb = "EXPLAIN ANALYZE " if plan.analyze else "EXPLAIN "
        answers = await self.inject(wire.message(b"Q", wire.cstring(verb + prepared.sql)), 1)
        error = next((p for k, p in answers if k == ord("E")), None)
        if error is not None:
            raise BackendError(wire.parse_fields(error))
        lines += [row[0] or "" for row in data_rows(answers)]
        self.writer.write(wire.row_description_text("QUERY PLAN")
                          + b"".join(wire.data_row_text([line]) for line in lines)
                          + wire.message(b"C", wire.cstring("EXPLAIN"))
                          + wire.ready_for_query(self.session.transaction_status))

    async def _reduce(self, federator: Federator, prepared: Prepared, alone: bool) -> None:
        """Begin Fig's own transaction with the statement's semi-join key sets when it is
        the one statement the client runs now, outside a transaction block (alone)."""
        if alone and not self._managed and \
                federator.reducible([prepared], self.session.transaction_status == b"I"):
            self._managed = True
            await federator.begin_reduced(self, prepared)

    async def _refresh_statement(self, federator: Federator, name: str, tiered: TieredSet,
                                 route: str, as_of: dt.datetime | None,
                                 alone: bool = False, bound: Bound | None = None) -> None:
        """Reload a prepared statement's cold rows before it runs again; when the boundary
        moved since it was parsed, or it is planned for this Bind's values (bound), parse it
        again under the same name (Close + Parse). alone: the only statement the batch runs
        (_reduce)."""
        sql, parsed = self.tiered_statements[name]
        prepared = await federator.plan(self, sql, tiered, route, f"s:{name}", bound=bound)
        if self._entry is not None:
            self._entry.prepared += (prepared,)
        await self._reduce(federator, prepared, alone)
        await federator.load(self, prepared, True, as_of, self.session.cold_cancel)
        payload = _parse_payload(parsed, prepared)
        if payload == parsed:
            return
        self.tiered_statements[name] = (sql, payload)
        # Answered by CloseComplete and ParseComplete, which the client did not ask for.
        answers = await self.inject(wire.message(b"C", b"S" + wire.cstring(name))
                                    + wire.message(b"P", payload) + wire.message(b"S"), 1)
        error = next((p for k, p in answers if k == ord("E")), None)
        if error is not None:
            raise BackendError(wire.parse_fields(error))

    async def _run_batch(self, batch: list[bytes]) -> None:
        """Extended-protocol messages up to Sync (or Flush): rewrite Parses, load cold parts
        for Binds. A Flush gets answers but no ReadyForQuery: nothing of Fig's may run on the
        backend after it, so the boundary lock is released before it is forwarded."""
        flush = batch[-1][0] == 72
        if self.session.transaction_status == b"E":
            await self._wait_idle()
            self._forward(b"".join(batch), 0 if flush else 1)
            return

        async def work(federator: Federator) -> bool:
            started = perf_counter()
            tiered, route, as_of = await federator.prelude(
                self, self.session.transaction_status == b"T")
            self._note([], (perf_counter() - started) * 1000)
            write = self._bound_write(batch)
            if write is not None and await self._run_bound_write(
                    federator, batch, write, tiered, route, as_of):
                return True
            # A Bind in the batch: its portal reads the cold rows as they are at the Bind (its
            # snapshot), whether an Execute here or in a later batch runs it
            run_cold = any(raw[0] in (66, 69) for raw in batch)
            # One statement bound and executed once, parsed here or before: it may run in
            # Fig's own transaction (_reduce)
            binds = [wire.bind_statement(raw[5:]) for raw in batch if raw[0] == 66]
            single = not flush and len(binds) == 1 and \
                sum(1 for raw in batch if raw[0] in (69, 80)) <= 2 and \
                sum(1 for raw in batch if raw[0] == 69) == 1
            parsed: set[str] = set()
            parses = 0
            out = []
            for raw in batch:
                kind, payload = raw[0], raw[5:]
                if kind == 80:
                    name, sql = wire.parse_text(payload)
                    # Unnamed statements pipelined before one Sync each keep their own cold
                    # rows until they run: the slot (temp tables) is per Parse, not per name.
                    parses += 1
                    slot = f"s:{name}" if name else f"s::{parses}"
                    bound = _bound(batch, name, wire.parse_parameter_types(payload))
                    # An UPDATE/DELETE parsed without a Bind of it here: each later Bind of it
                    # runs it as a cold write (_bound_write) or is refused (_refresh_statement)
                    alone = bool(WRITE_VERB.match(sql)) and not any(
                        r[0] == 66 and wire.bind_statement(r[5:]) == name for r in batch)
                    prepared = await federator.plan(self, sql, tiered, route, slot,
                                                    writes=alone, bound=bound)
                    if self._entry is not None:
                        self._entry.prepared += (prepared,)
                    parsed.add(name)
                    if prepared.rewrite is not None and prepared.rewrite.write is not None:
                        pass  # Postgres holds it as sent, never runs it
                    elif prepared.rewrite is not None:
                        await self._reduce(federator, prepared, single and name == binds[0])
                        await federator.load(self, prepared, run_cold, as_of,
                                             self.session.cold_cancel)
                        payload = _parse_payload(payload, prepared)
                        raw = wire.message(b"P", payload)
                    # Planned again at each Bind, even when hot alone answers it now (nothing
                    # of the table has left hot yet): retention may move rows to cold before
                    # the statement runs again.
                    self.tiered_statements[name] = (sql, payload)
                elif kind == 66:
                    name = wire.bind_statement(payload)
                    if name in self.tiered_statements and name not in parsed:
                        parsed.add(name)
                        bound = _bound(batch, name, wire.parse_parameter_types(
                            self.tiered_statements[name][1]))
                        await self._refresh_statement(federator, name, tiered, route, as_of,
                                                      single, bound)
                out.append(raw)
            if self._entry is not None:
                self._entry.route = route_of(self._entry.prepared)
            self._mark_forwarded()
            if flush:
                await federator.release(self)
                self._forward(b"".join(out), 0)
                return False
            self._hold_ready = self._managed
            self._forward(b"".join(out), 1)
            return True

        self._in_flush = flush
        try:
            await self._federate(work)
        finally:
            self._in_flush = False

    def _bound_write(self, batch: list[bytes]) -> BoundWrite | None:
        """An UPDATE or DELETE run once with its Bind's values, outside a transaction block
        (Parse, Bind, Describe of its portal, Execute, Sync; the Parse may have come in an
        earlier batch): what _run_bound_write runs as a cold write. Else None."""
        kinds = bytes(raw[0] for raw in batch)
        if self.session.transaction_status != b"I" or not BOUND_WRITE_BATCH.fullmatch(kinds):
            return None
        parse = batch[0][5:] if kinds[:1] == b"P" else None
        bind = next(raw[5:] for raw in batch if raw[0] == 66)
        name, portal = wire.bind_statement(bind), wire.bind_portal(bind)
        if parse is not None:
            parsed, sql = wire.parse_text(parse)
            if parsed != name:
                return None
            types = wire.parse_parameter_types(parse)
        elif name in self.tiered_statements:
            sql, payload = self.tiered_statements[name]
            types = wire.parse_parameter_types(payload)
        else:
            return None
        describe = next((raw[5:] for raw in batch if raw[0] == 68), None)
        execute = next(raw[5:] for raw in batch if raw[0] == 69)
        if not WRITE_VERB.match(sql) or wire.execute_portal(execute) != portal or (
                describe is not None and describe != b"P" + wire.cstring(portal)):
            return None
        return BoundWrite(name, sql, parse, types, wire.bind_values(bind))

    async def _run_bound_write(self, federator: Federator, batch: list[bytes],
                               write: BoundWrite, tiered: TieredSet, route: str,
                               as_of: dt.datetime | None) -> bool:
        """Run a bound UPDATE/DELETE that reaches cold rows as the simple query it stands for
        (its values written in: cold_writes.inline_parameters) and answer each message of
        the batch as Postgres would; False when it reaches no cold row (the batch then runs
        as usual, bound)."""
        unbound = await federator.plan(self, write.sql, tiered, route, "q0", writes=True)
        if unbound.rewrite is None or unbound.rewrite.write is None:
            return False  # no value can make it reach cold rows: no round trip for them
        types = await federator.parameter_types(self, write.sql, write.types)
        if types is None:
            return False
        sql = inline_parameters(write.sql, await bound_values(self, types, write.values))
        prepared = await federator.plan(self, sql, tiered, route, "q0", writes=True)
        if prepared.rewrite is None or prepared.rewrite.write is None:
            return False
        if self._entry is not None:
            self._entry.prepared += (prepared,)
            self._entry.route = route_of(self._entry.prepared)
        answers = await run_cold_write(federator, self, [prepared], False, as_of,
                                       self.session.cold_cancel)
        if write.parse is not None and write.name:
            # Postgres holds the named statement (its Describe, Close), never running it:
            # each Bind of it is a cold write of its own (tiered_statements routes it here)
            parsed = await self.inject(wire.message(b"P", write.parse) + wire.message(b"S"), 1)
            error = next((p for k, p in parsed if k == ord("E")), None)
            if error is not None:
                raise BackendError(wire.parse_fields(error))
            self.tiered_statements[write.name] = (write.sql, write.parse)
        out = []
        for raw in batch:
            if raw[0] in ANSWERED:
                out.append(wire.message(ANSWERED[raw[0]], b""))
            elif raw[0] == 69:  # 'E' Execute: the cold write's tag (and notices)
                out += [wire.message(bytes([k]), p) for k, p in answers if k != 90]
        self.writer.write(b"".join(out) + wire.ready_for_query(self.session.transaction_status))
        return True

    async def _pump_backend(self) -> None:
        session = self.session
        backend = session.backend
        assert backend is not None
        reader, writer = backend.reader, self.writer
        buffer = bytearray()
        ended = False  # the last message relayed was a FATAL error: the close is expected
        audit = self.audit
        unpack = wire.UINT32.unpack_from
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                if ended:
                    return
                if session.shutting_down:
                    raise AdminShutdown()
                raise ConnectionFailure(
                    "terminating connection because the hot PostgreSQL closed it")
            if buffer:
                buffer += chunk
                data: bytes | bytearray = buffer
            else:
                data = chunk
            if self._divert is not None:
                spans, rest = wire.split_messages(data)
                self._divert_messages(data, spans)
                buffer = bytearray(data[rest:])
                continue
            held = None
            size = len(data)
            pos = last = 0
            while size - pos >= 5:  # wire.split_messages, with each message looked at
                end = pos + 1 + unpack(data, pos + 1)[0]
                if end > size:
                    break
                kind = data[pos]
                if kind == 90:  # 'Z' ReadyForQuery
                    session.in_flight -= 1
                    session.transaction_status = bytes(data[pos + 5:pos + 6])
                    if self._hold_ready:  # Fig ends its transaction first (_end_managed)
                        self._hold_ready, held = False, (pos, end)
                    if session.in_flight <= 0:
                        self._idle.set()
                    if audit is not None:
                        audit.on_ready()
                elif audit is not None and kind in AUDITED_BACKEND:
                    audit.on_backend(kind, data, pos, end)
                last, pos = pos, end
            rest = pos
            if rest:
                ended = data[last] == 69 and data[last + 5:last + 12] in FATAL_SEVERITIES
            if held is not None:
                writer.write(bytes(data[:held[0]]) + bytes(data[held[1]:rest]))
                buffer = bytearray(data[rest:])
            elif rest == size:
                writer.write(data if data is chunk else bytes(data))
                buffer = bytearray()
            else:
                writer.write(bytes(data[:rest]))
                buffer = bytearray(data[rest:])
            if writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
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


def _bound(batch: list[bytes], name: str, types: list[int]) -> Bound | None:
    """The Bind a prepared statement may be planned for (Federator.plan's bound): the
    batch's only Bind of it, after any Parse of it there, its portal executed by the next
    message but Describes. The cold rows loaded for its values are then read by that portal
    alone: the next Bind of the statement plans it again, and a portal's rows are those its
    snapshot, taken at its Bind, sees. Else None: planned for any values."""
    found = None
    for index, raw in enumerate(batch):
        if raw[0] == 80 and wire.parse_text(raw[5:])[0] == name and found is not None:
            return None
        if raw[0] == 66 and wire.bind_statement(raw[5:]) == name:
            if found is not None:
                return None
            found = index
    if found is None:
        return None
    payload = batch[found][5:]
    following = next((raw for raw in batch[found + 1:] if raw[0] != 68), None)  # 'D'
    if following is None or following[0] != 69 or \
            wire.execute_portal(following[5:]) != wire.bind_portal(payload):
        return None
    return Bound(types, wire.bind_values(payload))


def _parse_payload(payload: bytes, prepared: Prepared) -> bytes:
    """The client's Parse payload with the rewritten SQL; declaring the parameter types
    Postgres resolved when the statement was planned for a Bind's values."""
    if prepared.parameter_types is None:
        return wire.replace_parse_sql(payload, prepared.sql)
    name = wire.parse_text(payload)[0]
    return wire.parse_message(name, prepared.sql, prepared.parameter_types)[5:]
