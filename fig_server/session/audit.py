"""Statement capture for the audit: the pumps report the few messages that matter (Query,
Parse, Bind, Execute, Sync from the client; CommandComplete, ErrorResponse, ReadyForQuery from
the backend) and each request becomes one record when its ReadyForQuery arrives.

Nothing here decodes rows or SQL: texts are kept as raw (bounded) bytes and turned into
documents later, off the event loop (see audit_log).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fig_server.session.audit_log import AuditLog
    from fig_server.session.session import Session

# Prepared statement texts remembered per connection (for Binds of named statements).
MAX_STATEMENTS = 4096
FUNCTION_CALL = b"<function call>"


class StatementRecord:
    """One request (a Query, or extended-protocol messages up to Sync) and how it ended.

    A plain slotted class: one is made per request on the event loop, so it stays cheap.
    """

    __slots__ = ("busy", "calls", "command", "ended", "forwarded", "matcher", "origin",
                 "prelude_ms", "prepared", "route", "rows", "sqlstate", "started", "text")

    def __init__(self, started: float, text: bytes, origin: StatementAudit) -> None:
        self.started = started  # perf_counter; the writer converts it to wall-clock time
        self.ended = started
        self.text = text  # raw SQL, at most the configured bytes, maybe followed by NUL...
        self.origin = origin  # the connection's audit: user, client, application_name
        self.route = "relay"
        self.rows = 0  # of the request's statements before the last (see total_rows)
        self.command = b""
        self.sqlstate = ""
        # Set for statements over tiered tables: the session's Prepared statements (their
        # cold ScanStats) and the tiered-name matcher, read by the writer once done.
        self.prepared: tuple[Any, ...] = ()
        self.matcher: Any = None
        # Statements over tiered tables: the prelude's time (ms) and when the rewritten
        # statement went to Postgres (perf_counter; its final step runs until `ended`).
        self.prelude_ms = 0.0
        self.forwarded = 0.0
        # Identical relayed statements grouped by the writer: how many, their total time.
        self.calls = 1
        self.busy = 0.0

    def total_rows(self) -> int:
        """Rows of every statement: the last tag's count is read only now, off the pumps."""
        return self.rows + command_rows(self.command)


class StatementAudit:
    """One connection's capture: texts of the current batch, records waiting for their Z."""

    def __init__(self, log: AuditLog, session: Session) -> None:
        self.log = log
        self.user = session.user
        self.database = session.database
        self.client = session.peer
        self.application = session.params.get("application_name", "")
        # JSON of the fields above, cached by the writer, and the application it was made for.
        self.prefix = ""
        self.prefix_of: str | None = None
        self.max_bytes = log.statement_max_bytes
        # One entry per request sent to the backend, in order; None for a request that ran
        # nothing (a Sync after Parse/Describe only): its ReadyForQuery is matched all the same.
        self.pending: deque[StatementRecord | None] = deque()
        self._statements: dict[bytes, bytes] = {}
        self._unnamed = b""
        self._bound = b""
        self._executed: bytes | None = None
        self._batch_start = 0.0

    # -- client side -----------------------------------------------------------------

    def on_client(self, kind: int, buf: bytes | bytearray, start: int, end: int
                  ) -> StatementRecord | None:
        """Note a Q, P, B, E, S or F message; a new record when it ends a request."""
        if kind == 81:  # 'Q'
            self._batch_start = 0.0
            return StatementRecord(
                perf_counter(), bytes(buf[start + 5:min(end - 1, start + 5 + self.max_bytes)]),
                self)
        if not self._batch_start:
            self._batch_start = perf_counter()
        if kind == 80:  # 'P'
            if start + 5 < end and buf[start + 5] == 0:  # unnamed: most drivers, every time
                text = bytes(buf[start + 6:min(end, start + 6 + self.max_bytes)])
                self._unnamed = text
            else:
                self._bound = self._parse_named(buf, start, end)
                return None
            self._bound = text
        elif kind == 66:  # 'B'
            portal_end = buf.find(0, start + 5, end)
            if portal_end >= 0 and portal_end + 1 < end and buf[portal_end + 1] == 0:
                self._bound = self._unnamed
            else:
                name_end = buf.find(0, portal_end + 1, end) if portal_end >= 0 else -1
                name = bytes(buf[portal_end + 1:name_end]) if name_end >= 0 else b"\0"
                self._bound = self._statements.get(name, b"")
        elif kind == 69:  # 'E'
            if self._executed is None:
                self._executed = self._bound
        elif kind == 83:  # 'S'
            return self.end_batch()
        elif kind == 70:  # 'F'
            began, self._batch_start = self._batch_start, 0.0
            return StatementRecord(began or perf_counter(), FUNCTION_CALL, self)
        return None

    def _parse_named(self, buf: bytes | bytearray, start: int, end: int) -> bytes:
        # A malformed message (no NUL) is Postgres's to report: noted as an empty text.
        name_end = buf.find(0, start + 5, end)
        if name_end < 0:
            name_end = end
        text = bytes(buf[name_end + 1:min(end, name_end + 1 + self.max_bytes)])
        if len(self._statements) >= MAX_STATEMENTS:
            self._statements.clear()
        self._statements[bytes(buf[start + 5:name_end])] = text
        return text

    def end_batch(self) -> StatementRecord | None:
        """The Sync's record: None when nothing was executed (a Parse or Describe only)."""
        executed, self._executed = self._executed, None
        began, self._batch_start = self._batch_start, 0.0
        return None if executed is None else StatementRecord(began or perf_counter(),
                                                             executed, self)

    # -- backend side ----------------------------------------------------------------

    def on_backend(self, kind: int, buf: bytes | bytearray, start: int, end: int) -> None:
        """Note a CommandComplete, ErrorResponse or ParameterStatus of the backend."""
        if kind == 83:  # 'S': application_name is reported when it changes
            if buf.startswith(b"application_name\0", start + 5):
                value = bytes(buf[start + 22:end - 1])
                self.application = value.decode(errors="replace")
            return
        record = self.pending[0] if self.pending else None
        if record is None:
            return
        if kind == 67:  # 'C'
            if record.command:  # an earlier statement of the same Query
                record.rows += command_rows(record.command)
            record.command = bytes(buf[start + 5:end - 1])
        else:  # 'E'
            at = buf.find(b"\0C", start + 5, end)
            if at >= 0:
                record.sqlstate = bytes(buf[at + 2:at + 7]).decode(errors="replace")

    def on_ready(self) -> None:
        """ReadyForQuery: the oldest waiting request is done (finish, inlined: every request)."""
        if self.pending:
            record = self.pending.popleft()
            if record is not None:
                record.ended = perf_counter()
                self.log.submit(record)

    def finish(self, record: StatementRecord, sqlstate: str = "") -> None:
        record.ended = perf_counter()
        if sqlstate:
            record.sqlstate = sqlstate
        self.log.submit(record)

    def close(self) -> None:
        """The connection ended: requests still waiting are recorded as they stand."""
        while self.pending:
            record = self.pending.popleft()
            if record is not None:
                self.finish(record, record.sqlstate or "08006")


def command_rows(tag: bytes) -> int:
    """The row count a CommandComplete tag ends with (SELECT 5, INSERT 0 5), else 0."""
    count = tag.rpartition(b" ")[2]
    return int(count) if count.isdigit() else 0


def route_of(prepared: Sequence[Any]) -> str:
    """The route of a request's statements: their planner route, SPLIT when they differ,
    relay when none of them needed the planner."""
    routes = {p.rewrite.route.value for p in prepared if p.rewrite is not None}
    if not routes:
        return "relay"
    return routes.pop() if len(routes) == 1 else "SPLIT"
