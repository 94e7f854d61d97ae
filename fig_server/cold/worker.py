"""What runs in a worker: read one unit's row groups and columns, run DataFusion over them,
return Arrow IPC. Each worker builds its SessionContext once."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionConfig, SessionContext
from pyiceberg.io import FileIO, load_file_io

from fig_server.cold.errors import classify_datafusion_error
from fig_server.cold.units import UnitTask, WorkUnit

UNIT_TABLE = "__unit"
ROW_MARKER = "__fig_row"

_local = threading.local()


def initialize() -> None:
    """Pool initializer: one SessionContext per worker (per thread for thread pools)."""
    _context()


def _context() -> SessionContext:
    ctx: SessionContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        config = SessionConfig().with_target_partitions(1)
        ctx = SessionContext(config)
        _local.ctx = ctx
        _local.io = {}
    return ctx


def _file_io(properties: tuple[tuple[str, str], ...], path: str) -> FileIO:
    cache: dict[tuple[tuple[str, str], ...], FileIO] = _local.io
    if properties not in cache:
        cache[properties] = load_file_io(dict(properties), path)
    return cache[properties]


def read_unit(unit: WorkUnit, io: FileIO) -> pa.Table:
    """The unit's rows with the table's current column names and types (NULL if absent)."""
    wanted = [c.file_name for c in unit.columns if c.file_name is not None]
    with io.new_input(unit.path).open() as stream:
        parquet = pq.ParquetFile(stream)
        data = parquet.read_row_groups(list(unit.row_groups), columns=wanted,
                                       use_threads=False)
    return shape(data, unit)


def shape(data: pa.Table, unit: WorkUnit) -> pa.Table:
    """Rename by field id, cast promoted types, fill columns the file lacks with NULL."""
    arrays, names = [], []
    for column in unit.columns:
        if column.file_name is None:
            array: pa.ChunkedArray | pa.Array = pa.nulls(data.num_rows, column.type)
        else:
            array = data.column(column.file_name)
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
    name = UNIT_TABLE
    if not table.num_columns:
        table = pa.table([pa.nulls(table.num_rows, pa.bool_())], names=[ROW_MARKER])
    if ctx.table_exist(name):
        ctx.deregister_table(name)
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    ctx.register_record_batches(name, [batches])
    try:
        return ctx.sql(sql).to_arrow_table()
    except Exception as exc:  # DataFusion raises plain Exception subclasses
        raise classify_datafusion_error(exc) from exc
    finally:
        ctx.deregister_table(name)


def run_unit(task: UnitTask) -> bytes:
    """Worker entry point: one unit in, Arrow IPC stream bytes out."""
    table = read_unit(task.unit, _file_io(task.io_properties, task.unit.path))
    result = run_sql(table, task.sql)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.schema) as writer:
        writer.write_table(result)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()
