"""Initial copy of a table's existing rows into Iceberg, consistent with the change stream.

The copy reads one REPEATABLE READ snapshot S. Streamed transactions whose xid is visible in
S are already in the copy and are skipped (`CopySnapshot.contains`); all others are applied.
This is exact (no LSN race): visibility is decided by the same snapshot that did the copy.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.abc import Buffer
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import (
    AlwaysTrue,
    BooleanExpression,
    GreaterThanOrEqual,
    IsNull,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.types import DateType, TimestampType

from fig_server.cdc.applier import TableApplier, column_spec
from fig_server.cdc.changes import Collapsed
from fig_server.errors import DataException
from fig_server.storage.tables import (
    COPY_DONE,
    COPY_LSN,
    COPY_SNAPSHOT,
    LSN,
    create_table,
    lsn_to_str,
    transaction,
)
from fig_server.storage.typemap import COLUMNS_SQL, PgColumn, text_to_arrow

log = logging.getLogger(__name__)
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class CopySnapshot:
    """A pg_current_snapshot() value: xmin:xmax:xip,... (64-bit xids)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> CopySnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def contains(self, xid32: int) -> bool:
        """Whether the committed transaction with this 32-bit xid is visible in the snapshot:
        it began before xmax and was not running then. The full xid is the nearest one below
        xmax; a 32-bit xid at or past xmax's is newer than the snapshot (it began after)."""
        behind = ((self.xmax & 0xFFFFFFFF) - xid32) % (1 << 32)
        if behind == 0 or behind >= 1 << 31:
            return False
        return self.xmax - behind not in self.xip


def describe_columns(conn: psycopg.Connection, relid: int) -> list[PgColumn]:
    return [PgColumn(*row) for row in conn.execute(COLUMNS_SQL, (relid,)).fetchall()]


def primary_key(conn: psycopg.Connection, relid: int) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY "
        "AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n", (relid,)).fetchall()
    return [row[0] for row in rows]


class _CopyReader(io.RawIOBase):
    """A file object over the chunks of a COPY TO STDOUT, for pyarrow's CSV reader."""

    def __init__(self, chunks: Iterator[Buffer]) -> None:
        self.chunks = chunks
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = bytes(chunk)
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


def _csv_batches(copy: psycopg.Copy, names: list[str]) -> Iterator[pa.RecordBatch]:
    stream = io.BufferedReader(_CopyReader(iter(copy)), buffer_size=1 << 20)
    if not stream.peek(1):
        return  # an empty table (pyarrow refuses an empty CSV)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, block_size=8 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
            null_values=[""], quoted_strings_can_be_null=False))
    yield from reader


def _to_iceberg_arrow(table: Table, batch: pa.RecordBatch) -> pa.Table:
    fields = table.schema().fields
    arrays = []
    for f in fields:
        try:
            arrays.append(text_to_arrow(batch.column(f.name), f.field_type))
        except DataException as exc:
            raise DataException(f'column "{f.name}": {exc.message}') from exc
    return pa.Table.from_arrays(arrays, names=[f.name for f in fields]).cast(
        schema_to_pyarrow(table.schema()))


def _evolved(table: Table, columns: list[PgColumn], key: list[str], time_column: str) -> Table:
    """The kept Iceberg table with its schema evolved to the table's current columns."""
    specs = [column_spec(column.name, column, column.attnum) for column in columns]
    applier = TableApplier(table, key, time_column)
    applier.evolve(applier.plan_evolution(specs))  # Unexpressible: history cannot be kept
    table.refresh()
    return table


def first_kept_value(boundary: dt.datetime, time_type: object) -> dt.date | dt.datetime:
    """The smallest time value, in the time column's own type, that is not below the tier
    boundary: retention compares date and timestamp columns with it in UTC."""
    utc = boundary.astimezone(dt.UTC)
    if isinstance(time_type, DateType):
        midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
        return utc.date() + dt.timedelta(days=0 if utc == midnight else 1)
    if isinstance(time_type, TimestampType):
        return utc.replace(tzinfo=None)
    return utc


def _replaced(conn: psycopg.Connection, table: Table, identifier: tuple[str, str],
              key: list[str], time_column: str, boundary: dt.datetime
              ) -> tuple[BooleanExpression, Collapsed]:
    """What the copy replaces in a kept Iceberg table, read in the copy's snapshot: hot holds
    every row at or above the boundary (or with no time), and is right about the rows below
    it that it still holds (inserted after retention ran): those rows, and the keys of the
    rows below it. The rest of cold stays."""
    first = first_kept_value(boundary, table.schema().find_field(time_column).field_type)
    time_ref = Reference(time_column)
    select = ", ".join(f"{sql.Identifier(k).as_string(conn)}::text" for k in key)
    below = conn.execute(
        f"SELECT {select} FROM ONLY {sql.Identifier(*identifier).as_string(conn)} "
        f"WHERE {sql.Identifier(time_column).as_string(conn)} < %s", (first,)).fetchall()
    return (Or(GreaterThanOrEqual(term=time_ref, value=literal(first)), IsNull(term=time_ref)),
            Collapsed(delete_keys=[tuple(row) for row in below]))


def copy_table(conn: psycopg.Connection, catalog: Catalog, identifier: tuple[str, str],
               relid: int, time_column: str, start_lsn: int, progress: Progress,
               batch_rows: int = 500_000, keep_below: dt.datetime | None = None) -> Table:
    """(Re)create the Iceberg table and fill it from one snapshot; returns the table.

    The final commit records the snapshot, the WAL insert position at the snapshot and
    fig.lsn = start_lsn (every transaction the stream delivered before the copy).

    With `keep_below` (re-tiering a table whose rows older than that tier boundary exist only
    in cold), the Iceberg table and its history are kept: the copy replaces only what hot
    holds (see _replaced). Raises Unexpressible when its columns changed in a way Iceberg
    cannot evolve to.
    """
    columns = describe_columns(conn, relid)
    key = primary_key(conn, relid)
    if keep_below is None:
        table = create_table(catalog, identifier, columns, key, time_column)
    else:
        table = _evolved(catalog.load_table(identifier), columns, key, time_column)
    replaced: BooleanExpression = AlwaysTrue()
    kept_keys = Collapsed()
    names = [c.name for c in columns]
    started, copied, first = time.monotonic(), 0, True
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(
            "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text, "
            "greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s", (relid,)).fetchone()
        assert row is not None
        snap, insert_lsn, total = row
        if keep_below is not None:
            replaced, kept_keys = _replaced(conn, table, identifier, key, time_column,
                                            keep_below)
        select = ", ".join(sql.Identifier(n).as_string(conn) for n in names)
        target = (f"COPY (SELECT {select} FROM "
                  f"{sql.Identifier(*identifier).as_string(conn)}) "
                  "TO STDOUT (FORMAT csv)")
        pending: list[pa.Table] = []
        pending_rows = 0

        def commit(final: bool) -> None:
            nonlocal first, pending, pending_rows
            props = {COPY_DONE: "true" if final else "false"}
            if final:
                props.update({LSN: lsn_to_str(start_lsn), COPY_SNAPSHOT: snap,
                              COPY_LSN: insert_lsn})
            with transaction(table) as tx:
                if first:
                    if kept_keys.delete_keys:
                        TableApplier(table, key, time_column).delete_keys(tx, kept_keys, props)
                    tx.delete(replaced)
                if pending:
                    tx.append(pa.concat_tables(pending), snapshot_properties=props)
                tx.set_properties(props)
            first, pending, pending_rows = False, [], 0

        with conn.cursor().copy(target) as copy:
            for batch in _csv_batches(copy, names):
                pending.append(_to_iceberg_arrow(table, batch))
                pending_rows += batch.num_rows
                copied += batch.num_rows
                if pending_rows >= batch_rows:
                    commit(final=False)
                    rate = copied / max(time.monotonic() - started, 1e-6)
                    progress(copied, max(total, copied), rate)
                    log.info("copy %s: %d of ~%d rows, %.0f rows/s", ".".join(identifier),
                             copied, total, rate)
        commit(final=True)
    rate = copied / max(time.monotonic() - started, 1e-6)
    progress(copied, copied, rate)
    log.info("copied %s: %d rows at %.0f rows/s (snapshot %s at %s)", ".".join(identifier),
             copied, rate, snap, insert_lsn)
    table.refresh()
    return table
