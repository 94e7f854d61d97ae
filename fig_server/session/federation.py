"""Answers statements over tiered tables: cold parts from the cold engine, the rest by Postgres.

The backend session itself merges: each cold part is copied (binary COPY, CSV for types
without a binary encoder; a plain scan while it is still scanned) into a session temp table,
and the rewritten statement reads `temp UNION ALL hot rows`, so result types, formats,
parameters, privileges on the hot table and every SQL construct stay Postgres's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from fig_server import metrics, wire
from fig_server.config import FigConfig
from fig_server.errors import (
    ConfigurationError,
    FeatureNotSupported,
    FigError,
    InvalidParameterValue,
    IoError,
    ProgramLimitExceeded,
)
from fig_server.hot.session_state import TIERED_SQL
from fig_server.planner.bounds import Need
from fig_server.planner.parts import Route, literal
from fig_server.planner.rewrite import ColdPart, Rewrite, plan_body, rewrite
from fig_server.planner.tiers import (
    TieredFunction,
    TieredSet,
    TieredTable,
    TieredTrigger,
    TieredView,
)
from fig_server.session.audit import command_rows
from fig_server.session.cold_rows import ColdRows
from fig_server.storage import pgbinary
from fig_server.storage.typemap import to_copy_csv

if TYPE_CHECKING:
    from fig_server.cold import ColdEngine, Executor

log = logging.getLogger(__name__)

# Taken shared by every federated statement, exclusively by retention while it moves a
# boundary, so a statement never sees a boundary that moved under it.
BOUNDARY_LOCK = 7203
COPY_CHUNK = 256 * 1024
COPY_BATCH_ROWS = 64 * 1024  # rows encoded at a time
# A session's temp table for cold rows is emptied with DELETE until this many rows were
# copied into it since it was last truncated (Federator._emptying).
TRUNCATE_AFTER_ROWS = 10_000
# The Postgres types of a temp table's columns (pg_catalog's type names; NULL for others),
# learned once per session and temp table, to choose and drive the binary COPY encoders.
COLUMN_TYPES_SQL = """SELECT json_agg(CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace
  THEN t.typname END ORDER BY a.attnum)
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = 'pg_temp.{}'::regclass AND a.attnum > 0 AND NOT a.attisdropped"""


def tiered_set_from_json(documents: Sequence[str]) -> TieredSet:
    """The tiered set TIERED_SQL's documents describe; the same documents (every statement
    of a session between two changes) give the same immutable set, built once."""
    return _tiered_set(tuple(documents))


@functools.lru_cache(maxsize=64)
def _tiered_set(documents: tuple[str, ...]) -> TieredSet:
    tables, views, functions, triggers = [], [], [], []
    for text in documents:
        doc = json.loads(text)
        if "trigger" in doc:
            triggers.append(TieredTrigger(doc["trigger"], doc["schema"], doc["name"],
                                          doc["function"], doc["reads"], bool(doc["visible"]),
                                          frozenset(doc["on"])))
            continue
        if "function" in doc:
            functions.append(TieredFunction(doc["schema"], doc["name"], doc["reads"],
                                            doc["function"]))
            continue
        if "view" in doc:
            views.append(TieredView(doc["schema"], doc["name"], doc["definition"],
                                    doc["view"], bool(doc["visible"])))
            continue
        boundary = dt.datetime.fromisoformat(doc["boundary"]) if doc["boundary"] else None
        tables.append(TieredTable(doc["schema"], doc["name"], doc["time"], boundary,
                                  tuple((name, kind) for name, kind in doc["columns"]),
                                  bool(doc.get("rls")), bool(doc.get("visible", True)),
                                  frozenset(doc.get("byte_ordered") or ()),
                                  int(doc.get("oid") or 0), tuple(doc.get("late") or ()),
                                  bool(doc.get("own_late")), bool(doc.get("time_indexed"))))
    return TieredSet.of(tables, views, functions, triggers)


class TieredCatalog:
    """The server-wide, periodically refreshed view of fig.tiered_tables."""

    def __init__(self, dsn: str, interval_s: float = 0.5) -> None:
        self.dsn = dsn
        self.database = str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres")
        self.interval_s = interval_s
        self.current = TieredSet()
        # Counts the changes of `current` (sessions re-check what they cached against it).
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        # Kept between refreshes (a new one every 0.5 s was a backend started and ended each
        # time); opened again after any error.
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._refreshing = asyncio.Lock()  # the loop's refresh and a session's (after DDL)

    async def refresh(self) -> None:
        async with self._refreshing:
            await self._refresh()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        """The kept connection, opened again when closed (call under _refreshing)."""
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, application_name="fig catalog")
        return self._conn

    async def _refresh(self) -> None:
        try:
            cur = await (await self._connection()).execute(TIERED_SQL)
            current = tiered_set_from_json([row[0] for row in await cur.fetchall()])
            if current != self.current:
                log.info("tiered tables: %s", ", ".join(
                    f"{t.qualified} (boundary {t.boundary})" for t in current.tables) or "none")
                self.generation += 1
            self.current = current
        except psycopg.errors.UndefinedTable:
            if self.current != TieredSet():
                self.generation += 1
            self.current = TieredSet()
        except psycopg.Error as exc:
            log.warning("could not read fig.tiered_tables: %s", exc)
            await self._close()

    async def late_writers(self, oid: int) -> list[str]:
        """The writers (xid8) of the table's late changes CDC has not applied or applied
        recently (cdc/late.py), as a fresh snapshot sees them."""
        async with self._refreshing:
            cur = await (await self._connection()).execute(
                "SELECT xid::text FROM fig.late_changes WHERE table_oid = %(oid)s "
                "AND xid IS NOT NULL UNION SELECT xid::text FROM fig.late_applied "
                "WHERE table_oid = %(oid)s", {"oid": oid})
            return [row[0] for row in await cur.fetchall()]

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close()


@dataclass
class ColdService:
    """The cold engine and the Iceberg catalog, opened on first use and shared by sessions."""

    config: FigConfig
    _engine: ColdEngine | None = None
    _catalog: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Tiered table -> until when (time.monotonic) hot is not asked first for it: its last
    # probe ran out of time (Federator._hot_holds).
    hot_first_off: dict[str, float] = field(default_factory=dict)

    def _open(self) -> tuple[ColdEngine, Any]:
        with self._lock:
            if self._engine is None:
                from fig_server.cold import ColdEngine
                from fig_server.storage.catalog import open_catalog

                self._catalog = open_catalog(self.config)
                engine = self._engine = ColdEngine(
                    workers=self.config.cold.workers, executor=_executor(self.config),
                    result_cache_bytes=self.config.cold.result_cache_mb << 20)
                metrics.WORKERS.set_function(lambda: engine.executor.slots)
                metrics.WORKERS_BUSY.set_function(lambda: engine.executor.load()[0])
                metrics.WORK_QUEUE.set_function(lambda: engine.executor.load()[1])
                metrics.METADATA_FOOTERS.set_function(lambda: engine.cache.footers_cached)
                metrics.RESULT_CACHE_BYTES.set_function(lambda: engine.results.bytes)
            return self._engine, self._catalog

    def warm(self, tables: Sequence[TieredTable] = ()) -> None:
        """Start the cold workers now, so the first cold query does not wait for them, and
        read the tables' Iceberg metadata and footers into the engine's cache."""
        engine, catalog = self._open()
        engine.warm()
        for tiered in tables:
            try:
                table = catalog.load_table((tiered.schema, tiered.name))
                footers = engine.warm_metadata(table)
            except Exception as exc:  # a cache left cold costs the first query, no more
                log.warning("could not read the metadata of %s ahead: %r", tiered.qualified,
                            exc)
                continue
            log.info("cached the metadata of %s (%d footers)", tiered.qualified, footers)

    def tables(self, part: ColdPart) -> dict[str, Any]:
        """The part's Iceberg table as the catalog has it now, by both its names."""
        _, catalog = self._open()
        table = catalog.load_table((part.table.schema, part.table.name))
        return {part.table.qualified: table, part.table.name: table}

    def query(self, part: ColdPart, as_of: dt.datetime | None,
              cancel: threading.Event | None, timeout_s: float | None = None,
              keys: tuple[tuple[str, pa.Array], ...] = (),
              sink: Callable[[pa.Table], None] | None = None,
              cached: bool = True, tables: dict[str, Any] | None = None
              ) -> tuple[pa.Table, Any]:
        """The part's rows and scan stats; with sink, a part whose plan streams passes its
        rows to sink as they come and returns none of them (ColdEngine.query). cached: the
        session's fig.result_cache (off: every task runs). tables: the part's Iceberg tables
        as loaded before (self.tables), else as the catalog has them now."""
        engine, _ = self._open()
        limit = self.config.limits.max_result_rows
        streamed = 0

        def check(rows: int) -> None:
            if limit and rows > limit:
                raise ProgramLimitExceeded(
                    f"cold part of {part.table.qualified} returned {rows} rows, "
                    f"more than [limits] max_result_rows = {limit}",
                    hint="Narrow the statement (a time range, a filter, LIMIT) or raise the "
                         "limit.")

        def passing(piece: pa.Table) -> None:
            nonlocal streamed
            streamed += piece.num_rows
            check(streamed)
            assert sink is not None
            sink(piece)

        with _storage_errors(part):
            result = engine.query(part.cold_sql, tables or self.tables(part), as_of=as_of,
                                  cancel=cancel, timeout_s=timeout_s, keys=keys,
                                  sink=None if sink is None else passing, cached=cached)
        metrics.COLD_ROWS_REDUCED.inc(result.stats.rows_reduced)
        metrics.COLD_UNITS_CACHED.inc(result.stats.units_cached)
        metrics.COLD_ROWS_STREAMED.inc(streamed)
        check(streamed + result.table.num_rows)
        return result.table, result.stats

    def explain(self, part: ColdPart, analyze: bool, as_of: dt.datetime | None,
                cached: bool = True) -> list[str]:
        engine, _ = self._open()
        with _storage_errors(part):
            return list(engine.explain(part.cold_sql, self.tables(part), analyze=analyze,
                                       as_of=as_of, cached=cached))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _executor(config: FigConfig) -> Executor | None:
    """Where work units run: None for the local process pool, or a Ray cluster."""
    cold = config.cold
    if cold.executor == "local":
        return None
    if cold.executor != "ray" or not cold.ray_address:
        raise ConfigurationError(
            f"[cold] executor = {cold.executor!r}: use \"local\", or \"ray\" with "
            "ray_address set")
    from fig_server.cold.ray_executor import RayExecutor

    return RayExecutor(cold.ray_address, cold.workers or os.cpu_count() or 1,
                       cold.memory_limit_mb)


@contextlib.contextmanager
def _storage_errors(part: ColdPart) -> Iterator[None]:
    """Iceberg metadata or Parquet that storage could not serve (a folder gone, an object
    store unreachable): 58030, naming the table, instead of an internal error."""
    try:
        yield
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IoError(f"could not read the cold tier of {part.table.qualified}: {first}",
                      hint="Fig retries each request a few times; check the warehouse "
                           "storage (`fig status`, fig.cdc_status)") from exc


async def copy_messages(pieces: AsyncIterator[pa.Table], schema: pa.Schema,
                        coders: Sequence[pgbinary.Encoder] | None) -> AsyncIterator[bytes]:
    """CopyData messages of the rows of every piece (each cast to schema, the one coders
    were chosen for), in binary COPY format when coders are given and as CSV otherwise, a
    batch at a time, each encoded off the event loop: the server never holds more than one
    batch of the encoded rows."""
    if coders is not None:
        yield wire.message(b"d", pgbinary.HEADER)
    async for piece in pieces:
        rows = piece if piece.schema == schema else piece.cast(schema)
        for batch in rows.to_batches(max_chunksize=COPY_BATCH_ROWS):
            if coders is None:
                data = await asyncio.to_thread(to_copy_csv, pa.Table.from_batches([batch]))
            else:
                data = await asyncio.to_thread(pgbinary.to_copy_binary, batch, coders)
            view = memoryview(data)
            yield b"".join(wire.message(b"d", bytes(view[i:i + COPY_CHUNK]))
                           for i in range(0, len(data), COPY_CHUNK))
    if coders is not None:
        yield wire.message(b"d", pgbinary.TRAILER)


async def _one(rows: pa.Table) -> AsyncIterator[pa.Table]:
    yield rows


# Cold scans run here, not in asyncio's default executor: a streamed scan waits in
# ColdRows.put for its COPY, whose batches are encoded in the default executor (asyncio.to_thread);
# scans filling that executor would wait for encoders that could never run.
_SCANS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="fig-scan")


def _retrieved(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()


class Injector(Protocol):
    """What the connection layer offers: run Fig's own messages on the idle backend."""

    async def inject(self, data: bytes, ready_count: int,
                     copy: AsyncIterator[bytes] | None = None) -> list[tuple[int, bytes]]: ...


def data_rows(messages: list[tuple[int, bytes]]) -> list[list[str | None]]:
    """Text values of every DataRow among the messages."""
    rows = []
    for kind, payload in messages:
        if kind != ord("D"):
            continue
        count = wire.INT16.unpack_from(payload)[0]
        pos, values = 2, list[str | None]()
        for _ in range(count):
            length = wire.INT32.unpack_from(payload, pos)[0]
            pos += 4
            if length < 0:
                values.append(None)
            else:
                values.append(payload[pos:pos + length].decode())
                pos += length
        rows.append(values)
    return rows


TRUE_WORDS = frozenset({"on", "true", "yes", "1", "t", "y"})
FALSE_WORDS = frozenset({"off", "false", "no", "0", "f", "n"})


def _boolean(name: str, text: str) -> bool:
    """A boolean setting as Postgres spells them (on/off, true/false, yes/no, 1/0)."""
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise InvalidParameterValue(f'parameter "{name}" requires a Boolean value',
                                hint="Available values: on, off.")


def _first_error(messages: list[tuple[int, bytes]]) -> dict[str, str] | None:
    for kind, payload in messages:
        if kind == ord("E"):
            return wire.parse_fields(payload)
    return None


class BackendError(FigError):
    """An error Postgres raised for one of Fig's own statements, passed on with its fields."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "error"))
        self._fields = fields

    def fields(self) -> dict[str, str]:
        return self._fields


@dataclass
class Prepared:
    """A statement rewritten for the backend, with its cold rows loaded (when run)."""

    sql: str
    rewrite: Rewrite | None
    stats: list[Any] = field(default_factory=list)
    # Wall time of Fig's phases (ms): planning (with the round trips it needs), the cold
    # engine's answer, the copy of its rows into the session.
    plan_ms: float = 0.0
    cold_ms: float = 0.0
    copy_ms: float = 0.0
    keys_ms: float = 0.0  # BEGIN and the semi-join key sets (begin_reduced)
    copy_formats: set[str] = field(default_factory=set)
    # The statement as the client sent it, and whether it runs so, on hot alone (load):
    # because no cold file can hold a row of it, or because hot holds its LIMIT's rows
    # (hot_first, planner/preview.py)
    original: str = ""
    hot_alone: bool = False
    hot_first: bool = False
    # Per cold part (by position), its reducers' key sets, read in the transaction the
    # statement runs in (Federator.begin_reduced): (column, keys)
    keys: dict[int, list[tuple[str, pa.Array]]] = field(default_factory=dict)
    # Per cold part (by position), its Iceberg tables loaded before Fig's own transaction
    # took its snapshot (begin_reduced), and whether Fig already waited for late changes
    pinned: dict[int, dict[str, Any]] = field(default_factory=dict)
    late_waited: bool = False
    # Set when the statement was planned with its Bind's values (Bound): the parameter
    # types Postgres resolved for it, which its Parse then declares (a value the rewrite
    # wrote into the statement leaves no $n behind to resolve)
    parameter_types: list[int] | None = None


@dataclass(frozen=True)
class Bound:
    """The one Bind a prepared statement is planned for: the parameter types its Parse
    declares and the Bind's parameter formats and values (wire.bind_values)."""

    types: list[int]
    values: bytes


# Words of a statement that may write (DML in a CTE, SELECT INTO, locking clauses): such a
# statement is not run in Fig's own REPEATABLE READ transaction, where a write conflict
# fails with 40001 instead of waiting as under READ COMMITTED (a word in a name or a string
# only costs the reducer).
WRITES = re.compile(r"\b(?:insert|update|delete|merge|into|for\s+(?:no\s+key\s+)?"
                    r"(?:update|share|key\s+share))\b", re.IGNORECASE)

# After a hot-first probe of a table runs out of time, its statements skip the probe this
# long (seconds).
HOT_FIRST_BACKOFF_S = 60.0

# TimeZone settings that are UTC at every instant (compared upper-cased).
UTC_ZONES = frozenset({"UTC", "ETC/UTC", "GMT", "ETC/GMT", "UCT", "ETC/UCT", "UNIVERSAL",
                       "ETC/UNIVERSAL", "ZULU", "ETC/ZULU"})


class Federator:
    """Runs one client session's statements that name tiered tables."""

    def __init__(self, cold: ColdService, tiered: TieredCatalog, database: str) -> None:
        self.cold = cold
        self.tiered = tiered
        self.database = database
        self.locked = False
        self.in_block = False
        # The session's statement_timeout (seconds, None when off), read by prelude.
        self.timeout_s: float | None = None
        # The session's TimeZone is UTC (read by prelude; see planner/aggregate.py).
        self.utc = False
        # The session's client_encoding (read by prelude). Fig reads statements and its own
        # answers as UTF-8, so under another encoding it refuses non-ASCII text; binary COPY
        # sends text in the client encoding, so it is used only under UTF-8 (CSV names its
        # encoding itself).
        self.client_encoding = "UTF8"
        # temp table -> its columns' type names (COLUMN_TYPES_SQL)
        self.column_types: dict[str, list[str | None]] = {}
        # temp table -> rows copied into it since it was last truncated (see _emptying)
        self.copied_rows: dict[str, int] = {}
        # The session's transaction_read_only (read by prelude).
        self.read_only = False
        # The statement runs in Fig's own transaction (begin_reduced).
        self.reducing = False
        # In a REPEATABLE READ or SERIALIZABLE transaction block (pinned_for: its start, as
        # prelude read it), the Iceberg tables its first statement over each table read:
        # its later statements read the same cold rows (CDC applying a late change meanwhile
        # must not show in them, as it does not in hot).
        self.pinned_for: str | None = None
        self.pinned: dict[str, dict[str, Any]] = {}
        # The session's default_transaction_isolation (read by prelude).
        self.isolation = "read committed"
        # The session's fig.result_cache (read by prelude): cold tasks may be answered from
        # results kept by earlier statements (cold/result_cache.py).
        self.result_cache = True

    @property
    def utf8(self) -> bool:
        return self.client_encoding.upper() in ("UTF8", "UNICODE")

    def may_apply(self, buffer: bytes | bytearray, start: int, end: int) -> bool:
        """The cheap pre-check on a message's raw bytes, before any decoding."""
        return self.database == self.tiered.database and \
            self.tiered.current.may_touch_bytes(buffer, start, end)

    async def prelude(self, backend: Injector, in_transaction: bool
                      ) -> tuple[TieredSet, str, dt.datetime | None]:
        """Lock the boundaries, then read them, fig.route and fig.as_of in this session.

        Inside a transaction block the lock is the transaction's (an error in the statement
        cannot leave it held); otherwise it is released after the statement.
        """
        lock = "pg_advisory_xact_lock_shared" if in_transaction else "pg_advisory_lock_shared"
        sql = f"SELECT {lock}({BOUNDARY_LOCK}); SELECT * FROM fig._session_state()"
        answers = await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        self.locked = not in_transaction
        self.in_block = in_transaction
        self.reducing = False
        rows = data_rows(answers)
        (route, as_of_text, timeout_ms, zone, self.client_encoding, read_only,
         self.isolation, result_cache, isolation, xact_start) = json.loads(rows[1][0] or "[]")
        repeatable = in_transaction and isolation in ("repeatable read", "serializable")
        if not repeatable or xact_start != self.pinned_for:
            self.pinned_for, self.pinned = (xact_start if repeatable else None), {}
        route = (route or "auto").strip().lower()
        self.timeout_s = int(timeout_ms) / 1000 or None
        self.utc = zone.upper() in UTC_ZONES
        self.read_only = read_only == "on"
        if route not in ("auto", "hot", "cold"):
            raise InvalidParameterValue(
                f'invalid value for parameter "fig.route": "{route}"',
                hint="Available values: auto, hot, cold.")
        self.result_cache = _boolean("fig.result_cache", result_cache or "on")
        as_of = await self._as_of(backend, as_of_text)
        tiered = tiered_set_from_json([row[0] for row in rows[2:] if row[0]])
        return tiered, route, as_of

    async def _as_of(self, backend: Injector, text: str) -> dt.datetime | None:
        if not text.strip():
            return None
        sql = (f"SELECT to_char(CAST({literal(text)} AS timestamptz) AT TIME ZONE 'UTC', "
               "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")
        answers = await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        return dt.datetime.fromisoformat(str(data_rows(answers)[0][0]))

    async def release(self, backend: Injector) -> None:
        if self.locked:
            self.locked = False
            sql = f"SELECT pg_advisory_unlock_shared({BOUNDARY_LOCK})"
            await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1)

    async def plan(self, backend: Injector, sql: str, tiered: TieredSet, route: str,
                   slot: str, writes: bool = False, bound: Bound | None = None) -> Prepared:
        """writes: the caller runs UPDATE/DELETE that reach cold (simple Query); elsewhere
        such statements are refused, never relayed to hot alone. bound: the one Bind the
        statement runs with before it is planned again: comparisons with its parameters
        are evaluated with the Bind's values and pushed like literals (the caller plans the
        statement again at its next Bind)."""
        started = time.perf_counter()
        if not self.utf8 and not sql.isascii():
            raise FeatureNotSupported(
                f"non-ASCII text in a statement over a tiered table under client_encoding "
                f"{self.client_encoding}", hint="SET client_encoding = 'UTF8'")
        plan = _rewrite(sql, tiered, route, None, slot, None, False, self.utc)
        constants = None
        parameter_types = None
        if plan is not None and plan.needs:
            if bound is not None and any(need.parameters for need in plan.needs):
                parameter_types = await self.parameter_types(backend, sql, bound.types)
            if parameter_types is not None and bound is not None:
                constants = await self._evaluate(backend, plan.needs,
                                                 (parameter_types, bound.values))
            else:
                constants = await self._evaluate(
                    backend, [need for need in plan.needs if not need.parameters])
            plan = _rewrite(sql, tiered, route, _frozen(constants), slot, None, self.in_block,
                            self.utc)
        if plan is not None and plan.write is not None and not writes:
            raise FeatureNotSupported(
                f"UPDATE/DELETE of {plan.write.table.qualified} that may reach rows below its "
                "tier boundary is not supported over the extended query protocol",
                hint="send it as a simple query (no parameters), outside a transaction block")
        if plan is not None and plan.describe:
            names = await self._describe(backend, plan_body(sql))
            plan = _rewrite(sql, tiered, route, _frozen(constants), slot, tuple(names),
                            self.in_block, self.utc)
        own = next((part.table for part in plan.parts if part.table.own_late), None) \
            if plan is not None else None
        if own is not None:
            raise FeatureNotSupported(  # as fig._late_hold says it, for the same reason
                f"a statement reading the cold rows of {own.qualified} after its transaction "
                "changed rows of it older than the tier boundary is not supported",
                hint="cold holds them only once the transaction commits: COMMIT first")
        return Prepared(plan.sql if plan else sql, plan, original=sql,
                        plan_ms=(time.perf_counter() - started) * 1000,
                        parameter_types=parameter_types)

    async def parameter_types(self, backend: Injector, sql: str, declared: list[int]
                               ) -> list[int] | None:
        """The parameter types Postgres resolves for the statement as the client sent it
        (ParameterDescription; never run), or None when it cannot say."""
        name = wire.cstring("fig_parameters")
        answers = await backend.inject(
            wire.parse_message("fig_parameters", sql, declared)
            + wire.message(b"D", b"S" + name) + wire.message(b"C", b"S" + name)
            + wire.message(b"S"), 1)
        if _first_error(answers) is not None:
            return None
        found = next((p for k, p in answers if k == ord("t")), None)
        if found is None:
            return None
        count = wire.INT16.unpack_from(found)[0]
        return list(struct.unpack_from(f"!{count}I", found, 2))

    async def _describe(self, backend: Injector, sql: str) -> list[str]:
        """The result column names of a statement, as Postgres describes it (never run)."""
        name = wire.cstring("fig_describe")
        answers = await backend.inject(
            wire.message(b"P", name + wire.cstring(sql) + wire.INT16.pack(0))
            + wire.message(b"D", b"S" + name) + wire.message(b"C", b"S" + name)
            + wire.message(b"S"), 1)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        return next((wire.row_description_names(p) for k, p in answers if k == ord("T")), [])

    async def _evaluate(self, backend: Injector, needs: list[Need],
                        bound: tuple[list[int], bytes] | None = None
                        ) -> dict[str, tuple[str, str]]:
        """Column-free expressions of the statement, computed once by this session's
        Postgres: need key -> (type, value as JSON text) (planner/bounds.py). bound: the
        statement's resolved parameter types and its Bind's values, for needs reading $n."""
        if not needs:
            return {}
        columns = [item for need in needs for item in need.select_items()]
        select = f"SELECT {', '.join(columns)}"
        if bound is None:
            message = wire.message(b"Q", wire.cstring(select))
        else:
            message = wire.run_once(select, *bound)
        answers = await backend.inject(message, 1)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        row = data_rows(answers)[0]
        if not self.utf8 and not all(value is None or value.isascii() for value in row):
            raise FeatureNotSupported(
                f"non-ASCII values of a statement's constants under client_encoding "
                f"{self.client_encoding}", hint="SET client_encoding = 'UTF8'")
        return {need.key: (str(row[2 * i]), str(row[2 * i + 1]))
                for i, need in enumerate(needs) if row[2 * i + 1] is not None}

    def reducible(self, prepared: Sequence[Prepared], idle: bool) -> bool:
        """Does the statement read its semi-join key sets (planner/semi_join.py) in a
        transaction of Fig's own? Only one read statement outside a transaction block, in a
        session that may write (its temp tables are then made inside the transaction): the
        key sets and the statement must see one snapshot, and Fig ends the transaction
        itself, so the client sees the statement as it sent it."""
        if not idle or self.read_only or len(prepared) != 1 or \
                WRITES.search(prepared[0].original):
            return False
        plan = prepared[0].rewrite
        return plan is not None and plan.write is None and not plan.explain and (
            any(part.reducers for part in plan.parts) or self._hot_first(plan))

    def _hot_first(self, plan: Rewrite) -> bool:
        """Whether hot alone is asked first for the statement (planner/preview.py): not for
        a while after a probe of its table ran out of time."""
        if plan.hot_first is None or self.cold.config.cold.hot_first_ms <= 0:
            return False
        until = self.cold.hot_first_off.get(plan.parts[0].table.qualified)
        return until is None or time.monotonic() >= until

    async def begin_reduced(self, backend: Injector, prepared: Prepared) -> None:
        """BEGIN ISOLATION LEVEL REPEATABLE READ and read the key sets, in one round trip:
        the key sets are the transaction's first statement, so they take the snapshot the
        cold rows' copy and the statement itself run in. The caller ends the transaction
        (ROLLBACK on any error). A key set the key read says may not be used (the
        dimension key's type, a collation) is not."""
        started = time.perf_counter()
        try:
            await self._begin_reduced(backend, prepared)
        finally:
            prepared.keys_ms += (time.perf_counter() - started) * 1000

    async def _begin_reduced(self, backend: Injector, prepared: Prepared) -> None:
        plan = prepared.rewrite
        assert plan is not None
        wanted = [(index, reducer) for index, part in enumerate(plan.parts)
                  for reducer in part.reducers]
        # Cold must not be newer than the transaction's snapshot: a late change committed
        # after it, applied by CDC before the scan, would show in cold and not in hot. So
        # late changes seen are waited for, and the Iceberg tables loaded, before BEGIN
        # (not for hot-first alone: hot answers most of those, without cold).
        await self._wait_late(backend, prepared)
        if wanted:
            prepared.pinned = dict(enumerate(await asyncio.to_thread(
                lambda: [self.cold.tables(part) for part in plan.parts])))
        # A session whose default is serializable keeps it (one snapshot there too). The
        # backend waits idle in the transaction while the cold engine runs: a session's
        # idle_in_transaction_session_timeout must not end it.
        begin = "BEGIN" if self.isolation in ("repeatable read", "serializable") else \
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        sql = f"{begin}; SET LOCAL idle_in_transaction_session_timeout = 0; " + \
            "; ".join(reducer.keys_sql for _, reducer in wanted)
        answers = await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1)
        self.in_block = self.reducing = True  # the scratch tables are made inside it
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        for (index, reducer), row in zip(wanted, data_rows(answers), strict=True):
            if row[1] != "t":
                continue  # the key's type or a collation: equal need not be the same value
            read = _integer_keys if reducer.kind == "integer" else _text_keys
            keys = await asyncio.to_thread(read, row[0])
            if keys is not None:
                prepared.keys.setdefault(index, []).append((reducer.column, keys))

    async def load(self, backend: Injector, prepared: Prepared, run_cold: bool,
                   as_of: dt.datetime | None, cancel: threading.Event | None) -> None:
        """Create each cold part's temp table and, when run_cold, fill it from Iceberg.

        When no cold file can hold a row of any part (a SPLIT over recent days, filtered on
        a column other than the tier's time column), the statement runs as it was sent, on
        hot alone: the cold parts add nothing, and Postgres plans the user's own text."""
        plan = prepared.rewrite
        if plan is None:
            return
        # Hot is asked in the snapshot the statement then runs in: Fig's own transaction
        # (begin_reduced), or EXPLAIN ANALYZE's own (its answer is a plan, not rows)
        if run_cold and plan.hot_first and as_of is None and self._hot_first(plan) and (
                self.reducing or (plan.explain and not self.in_block)) and \
                await self._hot_holds(backend, prepared, plan):
            prepared.sql, prepared.hot_alone = plan_body(prepared.original), True
            prepared.hot_first = True
            return
        if run_cold and as_of is None:
            await self._wait_late(backend, prepared)
        if run_cold and (self.pinned_for is not None or (self.reducing and not prepared.pinned)):
            await self._pin(backend, prepared)
        # parts whose scan kept no file (rows: at most an aggregate's one row over nothing),
        # their temp tables not made yet
        empty: list[tuple[ColdPart, pa.Table | None]] = []
        for index, part in enumerate(plan.parts):
            rows, stats, copied = None, None, False
            started = time.perf_counter()
            if run_cold:  # a streamed part is copied while it is scanned: cold_ms holds both
                rows, stats, copied = await self._scan(
                    backend, prepared, part, tuple(prepared.keys.get(index, ())), as_of,
                    cancel, prepared.pinned.get(index))
                prepared.stats.append(stats)
            loaded = time.perf_counter()
            prepared.cold_ms += (loaded - started) * 1000
            if copied:
                continue
            if stats is None or not (stats.files_kept or stats.files_from_metadata):
                empty.append((part, rows))
            else:
                await self._copy(backend, prepared, part, rows)
            prepared.copy_ms += (time.perf_counter() - loaded) * 1000
        if run_cold and plan.parts and len(empty) == len(plan.parts) and \
                plan.route is Route.SPLIT and as_of is None and plan.write is None:
            prepared.sql, prepared.hot_alone = plan_body(prepared.original), True
            return
        started = time.perf_counter()
        for part, rows in empty:
            await self._copy(backend, prepared, part, rows)
        prepared.copy_ms += (time.perf_counter() - started) * 1000

    async def _pin(self, backend: Injector, prepared: Prepared) -> None:
        """Each part's Iceberg tables as the transaction block's first read of them loaded
        them (self.pinned); also in Fig's own transaction (begin_reduced) when it loaded
        none before its snapshot (a hot-first statement hot could not answer)."""
        plan = prepared.rewrite
        assert plan is not None
        for index, part in enumerate(plan.parts):
            tables = self.pinned.get(part.table.qualified)
            if tables is None:
                tables = await asyncio.to_thread(self.cold.tables, part)
                if part.table.oid:
                    await self._as_of_snapshot(backend, part.table.oid)
                self.pinned[part.table.qualified] = tables
            prepared.pinned[index] = tables

    async def _as_of_snapshot(self, backend: Injector, oid: int) -> None:
        """The transaction's snapshot is older than the Iceberg metadata just loaded for its
        first read of the table: fail (40001) when a late change the snapshot does not see
        may be in it (fig._late_before_snapshot)."""
        writers = await self.tiered.late_writers(oid)
        if not writers:
            return
        sql = (f"SELECT fig._late_before_snapshot({oid}, "
               f"{literal('{' + ','.join(writers) + '}')}::xid8[])")
        error = _first_error(await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1))
        if error is not None:
            raise BackendError(error)

    async def _wait_late(self, backend: Injector, prepared: Prepared) -> None:
        """When the session saw a record of a change below a part's boundary that cold may
        not hold yet (cdc/late.py; none under fig.route = 'cold': planner), wait until CDC
        has committed to Iceberg every change committed in hot so far; once."""
        plan = prepared.rewrite
        if prepared.late_waited or plan is None or \
                not any(part.table.late for part in plan.parts):
            return
        started = time.perf_counter()
        await self._await_late(backend, {p.table.oid for p in plan.parts if p.table.late})
        prepared.late_waited = True
        prepared.cold_ms += (time.perf_counter() - started) * 1000

    async def _await_late(self, backend: Injector, oids: set[int]) -> None:
        """fig._wait_cdc for these tables, within the session's statement_timeout, at most
        30 s: CDC past everything committed so far, their cold writes applied; unlike
        fig.sync, not held up by another table's initial copy nor failed by its pause."""
        timeout_ms = min(int(self.timeout_s * 1000), 30_000) if self.timeout_s else 30_000
        rels = "{" + ",".join(str(int(oid)) for oid in sorted(oids)) + "}"
        sql = (f"SELECT fig._wait_cdc('{rels}', 'reading rows changed below the tier "
               f"boundary', interval '{max(timeout_ms, 1)} milliseconds')")
        error = _first_error(await backend.inject(wire.message(b"Q", wire.cstring(sql)), 1))
        if error is not None:
            raise BackendError(error)

    async def _hot_holds(self, backend: Injector, prepared: Prepared, plan: Rewrite) -> bool:
        """Whether the statement run on hot alone returns plan.hot_first rows, asked within
        [cold] hot_first_ms (and the session's statement_timeout). The statement itself runs,
        as a cursor MOVE skips through (no row travels); not a count over it, which Postgres
        plans otherwise (an index-only scan of 1.6 ms where the statement's plan takes 0.03).
        In Fig's own transaction the probe is a savepoint's, rolled back with its cursor and
        its SET LOCAL; a probe over budget, or failing, costs the statement that time and
        nothing else (the statement itself then reports any error of its own)."""
        budget = self.cold.config.cold.hot_first_ms
        if self.timeout_s:
            budget = min(budget, max(1, int(self.timeout_s * 1000)))
        started = time.perf_counter()
        probe = (f"SET LOCAL statement_timeout = {budget}; DECLARE fig_hot_first NO SCROLL "
                 f"CURSOR FOR {plan_body(prepared.original)}\n; "  # after a -- comment
                 "MOVE FORWARD ALL IN fig_hot_first")
        undo = "ROLLBACK TO SAVEPOINT fig_hot_first; RELEASE SAVEPOINT fig_hot_first"
        if self.reducing:
            probe = f"SAVEPOINT fig_hot_first; {probe}; {undo}"
        answers = await backend.inject(wire.message(b"Q", wire.cstring(probe)), 1)
        failure = _first_error(answers)
        if failure is not None and self.reducing:
            error = _first_error(await backend.inject(wire.message(b"Q", wire.cstring(undo)),
                                                      1))
            if error is not None:
                raise BackendError(error)
        prepared.plan_ms += (time.perf_counter() - started) * 1000
        if failure is not None:
            if failure.get("C") == "57014":
                # Out of time (seen: a seq scan through the empty front of a heap that
                # retention emptied, where the statement itself reads cold rows first and is
                # quick): the table's statements read both tiers for a while.
                self.cold.hot_first_off[plan.parts[0].table.qualified] = \
                    time.monotonic() + HOT_FIRST_BACKOFF_S
            return False
        moved = [command_rows(p[:-1]) for k, p in answers
                 if k == ord("C") and p.startswith(b"MOVE ")]
        return bool(moved) and moved[0] >= (plan.hot_first or 0)

    async def _scan(self, backend: Injector, prepared: Prepared, part: ColdPart,
                    keys: tuple[tuple[str, pa.Array], ...], as_of: dt.datetime | None,
                    cancel: threading.Event | None, tables: dict[str, Any] | None = None
                    ) -> tuple[pa.Table | None, Any, bool]:
        """The part's rows and scan stats from the cold engine, and whether they are copied
        already: a part whose plan streams is copied into its temp table while the engine
        still scans, through a ColdRows bounded by [cold] stream_buffer_mb. tables: the
        part's Iceberg tables as loaded earlier (begin_reduced), else loaded now."""
        stream = ColdRows(asyncio.get_running_loop(),
                          self.cold.config.cold.stream_buffer_mb * 1024 * 1024)

        def scan() -> tuple[pa.Table, Any]:
            try:
                result = self.cold.query(part, as_of, cancel, self.timeout_s, keys,
                                         stream.put, self.result_cache, tables)
            except BaseException as exc:
                stream.end(exc)
                raise
            stream.end()
            return result

        job = asyncio.get_running_loop().run_in_executor(_SCANS, scan)
        job.add_done_callback(_retrieved)  # a scan left behind by a failed COPY
        try:
            first = await stream.first()
            if first is None:
                rows, stats = await job
                return rows, stats, False
            await self._copy(backend, prepared, part, first, stream.pieces())
            _, stats = await job
            return None, stats, True
        finally:
            stream.close()  # a scan still running stops at its next piece

    async def _copy(self, backend: Injector, prepared: Prepared, part: ColdPart,
                    rows: pa.Table | None,
                    pieces: AsyncIterator[pa.Table] | None = None) -> None:
        """Make the part's temp table and copy its rows in (binary COPY where it can).
        pieces: all the rows, rows being the first of them (a streamed part)."""
        data = wire.message(b"Q", wire.cstring(await self._scratch(backend, part)))
        if rows is None or rows.num_rows == 0:
            answers = await backend.inject(data, 1)
            error = _first_error(answers)
            if error is not None:
                raise BackendError(error)
            return
        statements = 2
        types = self.column_types.get(part.temp_table)
        if types is None:
            types = await self._column_types(backend, data, part.temp_table)
            data, statements = b"", 1
        coders = pgbinary.encoders(rows.schema, types, text=self.utf8)
        kind = "csv" if coders is None else "binary"
        prepared.copy_formats.add(kind)
        options = "FORMAT csv, ENCODING 'UTF8'" if coders is None else "FORMAT binary"
        data += wire.message(b"Q", wire.cstring(
            f"COPY pg_temp.{part.temp_table} FROM STDIN ({options})"))
        answers = await backend.inject(data, statements, copy_messages(
            pieces or _one(rows), rows.schema, coders))
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        copied = sum(command_rows(p[:-1]) for k, p in answers
                     if k == ord("C") and p.startswith(b"COPY "))
        self.copied_rows[part.temp_table] = self.copied_rows.get(part.temp_table, 0) + copied

    async def _column_types(self, backend: Injector, scratch: bytes, temp: str
                            ) -> list[str | None]:
        """Run the scratch SQL and learn the temp table's column types, in one round trip."""
        answers = await backend.inject(scratch + wire.message(b"Q", wire.cstring(
            COLUMN_TYPES_SQL.format(temp))), 2)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        types = json.loads(str(data_rows(answers)[0][0]))
        self.column_types[temp] = types
        return types

    async def _scratch(self, backend: Injector, part: ColdPart) -> str:
        """SQL that leaves the part's temp table existing and empty, in any transaction state.

        Outside a transaction block it is created (or emptied) in a read-write transaction of
        its own, so a session whose default is read-only (pgjdbc's setReadOnly, SET
        default_transaction_read_only) still works; writing a temp table is allowed in a
        read-only transaction, creating one is not. Inside a block an existing table is
        emptied with DELETE (TRUNCATE is refused in read-only transactions, and fails while
        a portal of the block still reads the table); inside Fig's own transaction around
        one statement (begin_reduced: read-write, no portal open) with TRUNCATE."""
        temp = part.temp_table
        create = f"CREATE TEMP TABLE IF NOT EXISTS {temp} AS {part.shape_sql} WITH NO DATA"
        if not self.in_block:
            return f"BEGIN READ WRITE; {create}; {self._emptying(temp)}; COMMIT"
        if self.reducing:  # Fig's own read-write transaction (begin_reduced)
            return f"{create}; {self._emptying(temp)}"
        answers = await backend.inject(wire.message(b"Q", wire.cstring(
            f"SELECT to_regclass('pg_temp.{temp}') IS NOT NULL, "
            "current_setting('transaction_read_only')")), 1)
        error = _first_error(answers)
        if error is not None:
            raise BackendError(error)
        exists, read_only = data_rows(answers)[0]
        if exists == "t":
            return f"DELETE FROM pg_temp.{temp}"
        if read_only == "on":
            raise FeatureNotSupported(
                f"reading {part.table.qualified} in this shape for the first time in this "
                "session inside a read-only transaction: Fig needs a temp table for its cold "
                "rows, and a read-only transaction cannot create one",
                hint="run the same query once outside the read-only transaction block (it "
                "then works inside), or make the transaction read-write")
        return create

    def _emptying(self, temp: str) -> str:
        """TRUNCATE once the table has had many rows since the last, else DELETE. A
        TRUNCATE gives the table a new file, a catalog change whose commit waits for a WAL
        flush (1.9 ms of a short statement, against 0.05 ms for a DELETE on a temp table,
        which writes no WAL); the dead rows a DELETE leaves are bounded by the threshold."""
        if self.copied_rows.get(temp, 0) < TRUNCATE_AFTER_ROWS:
            return f"DELETE FROM pg_temp.{temp}"
        self.copied_rows[temp] = 0
        return f"TRUNCATE pg_temp.{temp}"

    def explain_lines(self, prepared: Prepared, as_of: dt.datetime | None,
                      prelude_ms: float) -> list[str]:
        plan = prepared.rewrite
        assert plan is not None
        lines = [f"Fig route: {plan.route.value}"]
        for part in plan.parts:
            lines.append(f"Cold part of {part.table.qualified}"
                         f"{' (partial aggregates)' if part.aggregated else ''}: {part.cold_sql}")
            if part.distributed:
                lines.append("  Joined and aggregated in each tier's own branch, combined by "
                             "an outer aggregate")
            lines.extend(f"  Semi-join: rows whose {reducer.column} the dimension's filtered "
                         f"rows hold, when the statement runs alone outside a transaction "
                         f"block (not under EXPLAIN): {reducer.keys_sql}"
                         for reducer in part.reducers)
            lines.extend("  " + line for line in self.cold.explain(part, plan.analyze, as_of,
                                                                  self.result_cache))
        if plan.analyze:
            metadata = sum(s.plan_ms for s in prepared.stats)
            lines.append(f"Fig time: prelude {prelude_ms:.1f} ms, planning "
                         f"{prepared.plan_ms:.1f} ms, cold {prepared.cold_ms:.1f} ms (Iceberg "
                         f"metadata and pruning {metadata:.1f} ms), copy into the session "
                         f"{prepared.copy_ms:.1f} ms{_formats(prepared.copy_formats)}")
        if prepared.hot_first:
            lines.append(f"Hot alone holds {plan.hot_first} rows of the statement, any of "
                         "which answer it (LIMIT without ORDER BY): it runs as sent, on hot "
                         "alone")
            lines.append("Hot part (PostgreSQL):")
        elif prepared.hot_alone:
            lines.append("No cold file can hold a matching row: the statement runs as sent, "
                         "on hot alone")
            lines.append("Hot part (PostgreSQL):")
        else:
            lines.append("Hot part and merge (PostgreSQL):")
        return lines


@functools.lru_cache(maxsize=512)
def _rewrite(sql: str, tiered: TieredSet, route: str,
             constants: tuple[tuple[str, tuple[str, str]], ...] | None, slot: str,
             names: tuple[str, ...] | None, same_clock: bool, utc: bool) -> Rewrite | None:
    """rewrite(), remembered: the plan is a function of these arguments alone (the constants
    are the values the session's Postgres gave this time), and nothing changes a plan once
    made. A dashboard's repeated statement then skips sqlglot (3 ms of a 21 ms query)."""
    return rewrite(sql, tiered, route, dict(constants) if constants is not None else None,
                   slot, list(names) if names is not None else None, same_clock, utc)


def _frozen(constants: dict[str, tuple[str, str]] | None
            ) -> tuple[tuple[str, tuple[str, str]], ...] | None:
    return tuple(sorted(constants.items())) if constants is not None else None


def _integer_keys(text: str | None) -> pa.Array | None:
    """Comma-separated integer keys (string_agg leaves NULL keys out, which join nothing;
    NULL: none; the key read checked the column is int2/int4/int8) as an int64 array; None
    when a value is not an integer."""
    if not text:
        return pa.array([], pa.int64())
    try:
        return pc.split_pattern(pa.array([text]), ",").flatten().cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _text_keys(text: str | None) -> pa.Array | None:
    """A JSON array of text keys (NULL: none) as a string array; None when a value is not
    a string. NULL keys join nothing."""
    values = json.loads(text) if text else []
    if not all(value is None or isinstance(value, str) for value in values):
        return None
    return pa.array([value for value in values if value is not None], pa.string())


def _formats(kinds: set[str]) -> str:
    return f" ({', '.join(sorted(kinds))})" if kinds else ""
