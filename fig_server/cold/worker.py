"""What runs in a worker: read a task's files (DataFusion's own Parquet reader when the files
fit the table's current schema, pyarrow otherwise), run the task's SQL, return Arrow IPC.
Each worker builds its SessionContext once."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datafusion import DataFrame, RuntimeEnvBuilder, SessionConfig, SessionContext

from fig_server.cold.errors import classify_datafusion_error
from fig_server.cold.metadata import Lru
from fig_server.cold.units import TaskOutput, UnitTask, WorkUnit
from fig_server.errors import FigError, IoError
from fig_server.storage.objects import OPEN_FILES, Fetched

UNIT_TABLE = "__unit"
FILES_TABLE = "__fig_files"  # the files under a view of the rows semi-join keys keep
KEYS_TABLE = "__fig_keys"  # + index: one semi-join key set
ROW_MARKER = "__fig_row"
UNIT_INDEX = "__fig_unit"  # which unit of a task a probed row came from

# Memory (MiB) DataFusion may use per worker ([cold] memory_limit_mb); set in the server's
# environment before workers start, so forkserver children inherit it. 0 or unset: unlimited.
MEMORY_LIMIT_ENV = "FIG_COLD_MEMORY_LIMIT_MB"

_local = threading.local()
_settings: dict[str, str] = {}


def initialize(scratch: str | None = None) -> None:
    """Pool initializer: one SessionContext per worker (per thread for thread pools)."""
    if scratch is not None:
        _settings["scratch"] = scratch
    _context()


def serve(conn: Connection, scratch: str) -> None:
    """Worker process main loop: tasks in over the pipe, (ok, IPC bytes or error) out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    _settings["scratch"] = os.path.join(scratch, str(os.getpid()))
    os.makedirs(_settings["scratch"], exist_ok=True)
    _context()
    answer_tasks(conn, answer)


def answer(task: UnitTask) -> tuple[bool, Any]:
    """Run a task: (True, TaskOutput), or (False, the error with its SQLSTATE)."""
    try:
        return True, run_task(task)
    except FigError as exc:
        return False, exc
    except Exception as exc:  # every failure is answered, as an error with a SQLSTATE
        return False, classify_datafusion_error(exc)


def answer_tasks(conn: Connection, run: Callable[[UnitTask], tuple[bool, Any]]) -> None:
    """Tasks in over the pipe until None or a closed pipe, each one's run(task) out."""
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        outcome = run(task)
        try:
            conn.send(outcome)
        except (OSError, ValueError):
            return


def _context() -> SessionContext:
    ctx: SessionContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        config = (SessionConfig().with_target_partitions(1)
                  .set("datafusion.execution.parquet.pushdown_filters", "true")
                  .set("datafusion.execution.parquet.reorder_filters", "true"))
        ctx = SessionContext(config, _runtime())
        _local.ctx = ctx
    return ctx


def _runtime() -> RuntimeEnvBuilder | None:
    """A bounded memory pool without spilling when a limit is set: going over it fails the
    query (Resources exhausted, classified as 53200) instead of filling disk."""
    limit_mb = int(os.environ.get(MEMORY_LIMIT_ENV) or 0)
    if limit_mb <= 0:
        return None
    return (RuntimeEnvBuilder().with_disk_manager_disabled()
            .with_greedy_memory_pool(limit_mb * 1024 * 1024))


# Files never change in place: a worker reads each footer once.
_footers = Lru(4096)
# Units of one task read concurrently (remote reads wait on the network, not the CPU).
READ_THREADS = 8
_readers: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()


def read_units(units: list[WorkUnit], properties: tuple[tuple[str, str], ...]
               ) -> tuple[list[pa.Table], Fetched]:
    """Each unit's rows, read concurrently when there are several, and what was fetched."""
    global _readers
    fetches = [Fetched() for _ in units]
    if len(units) == 1:
        return [read_unit(units[0], properties, fetches[0])], fetches[0]
    with _readers_lock:
        if _readers is None:
            _readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fig-read")
    tables = list(_readers.map(lambda pair: read_unit(pair[0], properties, pair[1]),
                               zip(units, fetches, strict=True)))
    total = Fetched()
    for fetched in fetches:
        total.add(fetched)
    return tables, total


def read_unit(unit: WorkUnit, properties: tuple[tuple[str, str], ...],
              fetched: Fetched) -> pa.Table:
    """The unit's rows with the table's current column names and types (NULL if absent).

    The file stays open in this worker and its footer is read once; the needed column
    chunks of the unit's row groups are fetched with as few ranged reads as pyarrow's
    coalescing makes (pre_buffer).
    """
    wanted = [c.file_name for c in unit.columns if c.file_name is not None]
    try:
        source = OPEN_FILES.open(dict(properties), unit.path, fetched)
        footer = _footers.get_or_load(unit.path, lambda: pq.read_metadata(source))
        parquet = pq.ParquetFile(source, metadata=footer, pre_buffer=True)
        data = parquet.read_row_groups(list(unit.row_groups), columns=wanted,
                                       use_threads=False)
    except OSError as exc:  # storage unreachable, file missing, or a failed request
        raise IoError(f"could not read cold file {unit.path}: {_first_line(exc)}") from exc
    return shape(data, unit)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def shape(data: pa.Table, unit: WorkUnit) -> pa.Table:
    """Rename by field id, cast promoted types, fill columns the file lacks with NULL."""
    arrays, names = [], []
    for column in unit.columns:
        if column.file_name is None:
            array: pa.ChunkedArray | pa.Array = pa.nulls(data.num_rows, column.type)
        else:
            array = data.column(column.file_name)
            if isinstance(array.type, pa.BaseExtensionType):
                array = pa.chunked_array([c.storage for c in array.chunks],
                                         array.type.storage_type)
            if array.type != column.type:
                array = array.cast(column.type)
        arrays.append(array)
        names.append(column.name)
    if not arrays:
        arrays, names = [pa.nulls(data.num_rows, pa.bool_())], [ROW_MARKER]
    return pa.table(arrays, names=names)


def run_sql(table: pa.Table, sql: str) -> pa.Table:
    """Run SQL over one in-memory table named __unit."""
    ctx = _context()
    if not table.num_columns:
        table = pa.table([pa.nulls(table.num_rows, pa.bool_())], names=[ROW_MARKER])
    _drop_unit_table(ctx)
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    ctx.register_record_batches(UNIT_TABLE, [batches])
    try:
        return _plain_strings(ctx.sql(sql).to_arrow_table())
    except Exception as exc:  # DataFusion raises plain Exception subclasses
        raise classify_datafusion_error(exc) from exc
    finally:
        _drop_unit_table(ctx)


def native_path(path: str) -> str | None:
    """The local file a URI names, when DataFusion can open it itself."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if "://" not in path and os.path.isabs(path):
        return path
    return None


def run_native(units: tuple[WorkUnit, ...], sql: str,
               keys: tuple[tuple[str, pa.Array], ...] = ()) -> tuple[pa.Table, int]:
    """Run SQL over whole files read by DataFusion: one listing table over links to them;
    with semi-join key sets, a view of its rows whose columns hold their keys (as
    `semi_join` keeps them: NULL holds none, a column the files lack filters nothing).
    Returns the result and the rows the key sets dropped.

    The table schema is the query's columns with their current types; DataFusion maps file
    columns by name, casts, and fills absent ones with NULL (the pruner only marks a unit
    native when names in the file agree with the table's). Row-group pruning is its own.
    The folder of links is kept per set of files: DataFusion caches footers by path, and the
    same query plans the same batches again. Key sets as semi-joins in DataFusion rather
    than pyarrow's is_in over the read rows: DataFusion then reads the files itself (0.73-0.88
    s instead of 1.0-1.3 s for the star benchmark's 60 files, one thread).
    """
    ctx = _context()
    schema = pa.schema([pa.field(c.name, _viewed(c.type)) for c in units[0].columns])
    present = [(column, values) for column, values in keys if column in schema.names]
    _drop_unit_table(ctx)
    ctx.register_listing_table(FILES_TABLE if present else UNIT_TABLE, _links(units),
                               file_extension=".parquet", schema=schema)
    try:
        if present:
            kept = []
            for index, (column, values) in enumerate(present):
                ctx.register_record_batches(f"{KEYS_TABLE}{index}", [[pa.record_batch(
                    [values], names=["k"])]])
                kept.append(f"CAST({_quoted(column)} AS {KEY_TYPES[values.type]}) IN "
                            f"(SELECT k FROM {KEYS_TABLE}{index})")
            ctx.register_view(UNIT_TABLE, ctx.sql(
                f"SELECT * FROM {FILES_TABLE} WHERE {' AND '.join(kept)}"))
        frame = ctx.sql(sql)
        result = _plain_strings(frame.to_arrow_table())
        reduced = sum(u.num_rows for u in units) - _semi_joined_rows(frame) if present else 0
        return result, reduced
    except Exception as exc:  # DataFusion raises plain Exception subclasses
        raise classify_datafusion_error(exc) from exc
    finally:
        _drop_unit_table(ctx)
        for name in [FILES_TABLE, *(f"{KEYS_TABLE}{i}" for i in range(len(present)))]:
            if ctx.table_exist(name):
                ctx.deregister_table(name)


def _viewed(arrow_type: pa.DataType) -> pa.DataType:
    """Strings and binaries as views, as DataFusion's Parquet reader makes them by default:
    a listing table declaring plain strings made it convert every value, and grouping by a
    text column ran 1.4x slower (sum-case: 118 vs 85 ms over the benchmark's files). Results
    come back as plain strings (_plain_strings)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.string_view()
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pa.binary_view()
    return arrow_type


# SQL types of the key sets' Arrow types (the planner's integer and text keys).
KEY_TYPES = {pa.int64(): "BIGINT", pa.string(): "VARCHAR"}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _semi_joined_rows(frame: DataFrame) -> int:
    """Rows out of the outermost semi-join of an executed plan (the key sets' view): the
    rows kept by every key set, after the statement's filters DataFusion pushed below it."""
    for description, metrics in frame.execution_plan().collect_metrics():
        if description.startswith("HashJoinExec") and "Semi" in description:
            return int(metrics.output_rows or 0)
    raise AssertionError("no semi-join in the plan of a keyed unit")


_MAX_LINK_FOLDERS = 512


def _links(units: tuple[WorkUnit, ...]) -> str:
    """A folder holding links to exactly these files, made once per worker thread (LRU)."""
    folders: OrderedDict[str, str] | None = getattr(_local, "links", None)
    if folders is None:
        folders = _local.links = OrderedDict()
    paths = [native_path(u.path) for u in units]
    key = hashlib.sha1("\n".join(p or "" for p in paths).encode()).hexdigest()
    if key in folders:
        folders.move_to_end(key)
        return folders[key]
    scratch = _settings.get("scratch") or tempfile.gettempdir()
    root = os.path.join(scratch, f"t{threading.get_ident()}")
    folder = os.path.join(root, key)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for index, path in enumerate(paths):
        assert path is not None
        os.symlink(path, os.path.join(folder, f"{index:06d}.parquet"))
    folders[key] = folder
    while len(folders) > _MAX_LINK_FOLDERS:
        _, old = folders.popitem(last=False)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def run_task(task: UnitTask) -> TaskOutput:
    """Worker entry point: the task's units in, Arrow IPC stream bytes out."""
    # whole local files go to DataFusion (with key sets as semi-joins), the rest is read here
    def whole(unit: WorkUnit) -> bool:
        return unit.native and native_path(unit.path) is not None

    native = tuple(u for u in task.units if whole(u))
    other = [u for u in task.units if not whole(u)]
    results = []
    reduced = 0
    if native:
        result, reduced = run_native(native, task.sql, task.keys)
        results.append(result)
    fetched = Fetched()
    probed = skipped = 0
    if other:
        kept = other
        if task.probe is not None and not {c.name for c in other[0].columns} <= \
                task.probe.columns:
            kept, fetched = _passing(other, task)
            probed, skipped = len(other), len(other) - len(kept)
        if kept:
            tables, read = read_units(kept, task.io_properties)
            fetched.add(read)
            data = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        else:  # no row passes: the SQL over no rows (an aggregate still answers one row)
            data = pa.table([pa.array([], c.type) for c in other[0].columns],
                            names=[c.name for c in other[0].columns])
        if task.keys:
            data, dropped = semi_join(data, task.keys)
            reduced += dropped
        results.append(run_sql(data, task.sql))
    result = results[0] if len(results) == 1 else pa.concat_tables(
        results, promote_options="permissive")
    return TaskOutput(to_ipc(result), fetched.requests, fetched.bytes, probed, skipped,
                      reduced)


def semi_join(data: pa.Table, keys: tuple[tuple[str, pa.Array], ...]) -> tuple[pa.Table, int]:
    """The rows whose columns each hold one of their keys (NULL holds none), and how many
    were dropped. A column the rows do not have filters nothing."""
    mask = None
    for column, values in keys:
        if column not in data.column_names:
            continue
        found = pc.is_in(data.column(column).cast(values.type), value_set=values)
        mask = found if mask is None else pc.and_(mask, found)
    if mask is None:
        return data, 0
    kept = data.filter(mask)
    return kept, data.num_rows - kept.num_rows


def _passing(units: list[WorkUnit], task: UnitTask) -> tuple[list[WorkUnit], Fetched]:
    """The units in which some row passes the task's filter, found by reading only the
    columns the filter reads (a needle's user_id, not every column of 180 row groups)."""
    assert task.probe is not None
    narrow = [dataclasses.replace(u, columns=tuple(
        c for c in u.columns if c.name in task.probe.columns)) for u in units]
    tables, fetched = read_units(narrow, task.io_properties)
    # one query over every unit's filter columns, each row marked with its unit
    marked = pa.concat_tables([table.append_column(UNIT_INDEX, pa.array(
        np.full(table.num_rows, index, dtype=np.int32))) for index, table in enumerate(tables)])
    found = set(run_sql(marked, task.probe.sql).column(0).to_pylist())
    return [unit for index, unit in enumerate(units) if index in found], fetched


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


def _drop_unit_table(ctx: SessionContext) -> None:
    if ctx.table_exist(UNIT_TABLE):
        ctx.deregister_table(UNIT_TABLE)


def _plain_strings(table: pa.Table) -> pa.Table:
    """View strings (DataFusion's Parquet reader) as plain strings, so results concatenate."""
    if not any(pa.types.is_string_view(t) or pa.types.is_binary_view(t)
               for t in table.schema.types):
        return table
    fields = [pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else
                       pa.binary() if pa.types.is_binary_view(f.type) else f.type, f.nullable)
              for f in table.schema]
    return table.cast(pa.schema(fields))
