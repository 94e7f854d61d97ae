"""Postgres column types to Iceberg and Arrow types, and Postgres text values to Arrow arrays.

Every mapping is faithful or refused: `iceberg_type` raises FeatureNotSupported for a type
whose values Iceberg cannot hold exactly (unconstrained numeric, intervals, ranges, ...).
Values arrive as Postgres text output (pgoutput protocol v1 and COPY text), with the session
set to TimeZone=UTC and DateStyle=ISO; `text_to_arrow` converts a column of them at once.
"""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from fig_server.errors import DataException, FeatureNotSupported

# Base types (pg_type.typname) that map to one Iceberg primitive.
PRIMITIVES: dict[str, IcebergType] = {
    "int2": IntegerType(), "int4": IntegerType(), "int8": LongType(),
    "float4": FloatType(), "float8": DoubleType(),
    "text": StringType(), "varchar": StringType(), "bpchar": StringType(), "name": StringType(),
    "json": StringType(), "jsonb": StringType(), "bool": BooleanType(),
    "date": DateType(), "time": TimeType(), "timestamp": TimestampType(),
    "timestamptz": TimestamptzType(), "uuid": UUIDType(), "bytea": BinaryType(),
}
MAX_DECIMAL_PRECISION = 38

# The catalog query that describes a table's columns as PgColumn rows.
COLUMNS_SQL = """
SELECT a.attnum, a.attname, t.typname, t.typtype, a.atttypmod,
       coalesce(e.typname, ''), coalesce(e.typtype, ''), a.attnotnull
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class PgColumn:
    """One column as the Postgres catalog describes it."""

    attnum: int
    name: str
    type_name: str
    typtype: str
    typmod: int
    elem_name: str = ""
    elem_typtype: str = ""
    not_null: bool = False

    @property
    def is_array(self) -> bool:
        return bool(self.elem_name)

    def element(self) -> PgColumn:
        return PgColumn(self.attnum, self.name, self.elem_name, self.elem_typtype, self.typmod)


def _scalar_type(type_name: str, typtype: str, typmod: int, column: str) -> IcebergType:
    if typtype == "e":
        return StringType()
    if type_name == "numeric":
        if typmod < 4:
            raise FeatureNotSupported(
                f'column "{column}" is numeric without precision: Iceberg needs a fixed '
                "precision and scale", hint="declare it numeric(p,s) with p <= 38")
        precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
        if precision > MAX_DECIMAL_PRECISION:
            raise FeatureNotSupported(f'column "{column}" has precision {precision} > 38')
        return DecimalType(precision, scale)
    if typtype == "b" and type_name in PRIMITIVES:
        return PRIMITIVES[type_name]
    raise FeatureNotSupported(
        f'column "{column}" has type {type_name}, which has no faithful Iceberg mapping')


def iceberg_type(column: PgColumn, element_id: int = 1) -> IcebergType:
    """The Iceberg type of a column, or FeatureNotSupported."""
    if column.is_array:
        element = _scalar_type(column.elem_name, column.elem_typtype, column.typmod, column.name)
        return ListType(element_id=element_id, element_type=element, element_required=False)
    return _scalar_type(column.type_name, column.typtype, column.typmod, column.name)


def _bool(value: str) -> bool:
    return value == "t"


def _time(value: str) -> int:
    parsed = datetime.time.fromisoformat(value)
    return ((parsed.hour * 60 + parsed.minute) * 60 + parsed.second) * 1_000_000 \
        + parsed.microsecond


def _uuid(value: str) -> bytes:
    return uuid.UUID(value).bytes


def _bytea(value: str) -> bytes:
    if not value.startswith("\\x"):
        raise DataException("bytea value not in hex format (set bytea_output = hex)")
    return bytes.fromhex(value[2:])


# Per Iceberg type: a function of one text value and the Arrow type it produces, for the
# types pyarrow's cast does not parse the way Postgres prints them.
PY_PARSERS: dict[type, tuple[Callable[[str], object], pa.DataType]] = {
    BooleanType: (_bool, pa.bool_()),
    TimeType: (_time, pa.int64()),
    UUIDType: (_uuid, pa.binary(16)),
    BinaryType: (_bytea, pa.large_binary()),
}


def arrow_type(ice: IcebergType) -> pa.DataType:
    """The Arrow type pyiceberg writes for an Iceberg type."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    return schema_to_pyarrow(Schema(NestedField(1, "x", ice, required=False))).field(0).type


def _scalars_to_arrow(values: Sequence[str | None] | pa.Array, ice: IcebergType) -> pa.Array:
    parser = PY_PARSERS.get(type(ice))
    if parser is not None:
        if isinstance(values, pa.Array):
            values = values.to_pylist()
        func, storage = parser
        parsed = []
        for value in values:
            try:
                parsed.append(None if value is None else func(value))
            except ValueError as exc:  # time '24:00', a malformed uuid
                raise DataException(f"value {value!r} cannot be stored as Iceberg {ice}: "
                                    f"{exc}") from exc
        array = pa.array(parsed, storage)
        if isinstance(ice, TimeType):
            return array.cast(pa.time64("us"))
        if isinstance(ice, UUIDType):
            return pa.ExtensionArray.from_storage(pa.uuid(), array)
        return array
    strings = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    try:
        return pc.cast(strings, arrow_type(ice))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataException(f"value cannot be stored as Iceberg {ice}: {exc}") from exc


def parse_array_literal(text: str) -> list[str | None]:
    """The elements of a one-dimensional Postgres array literal such as {1,NULL,"a,b"}."""
    if not (text.startswith("{") and text.endswith("}")):
        raise DataException(f"array literal with bounds is not supported: {text[:40]}")
    body, i = text[1:-1], 0
    out: list[str | None] = []
    if not body:
        return []
    while i <= len(body):
        if i < len(body) and body[i] == "{":
            raise DataException("multi-dimensional arrays are not supported in the cold tier")
        if i < len(body) and body[i] == '"':
            chars, i = [], i + 1
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            out.append("".join(chars))
            i += 2
            continue
        end = body.find(",", i)
        end = len(body) if end < 0 else end
        token = body[i:end]
        out.append(None if token == "NULL" else token)
        i = end + 1
    return out


def text_to_arrow(values: Sequence[str | None] | pa.Array, ice: IcebergType) -> pa.Array:
    """An Arrow array of one column's Postgres text values (None = NULL)."""
    if not isinstance(ice, ListType):
        return _scalars_to_arrow(values, ice)
    if isinstance(values, pa.Array):
        values = values.to_pylist()
    offsets, flat, mask = [0], [], []
    for value in values:
        mask.append(value is None)
        if value is not None:
            flat.extend(parse_array_literal(value))
        offsets.append(len(flat))
    elements = _scalars_to_arrow(flat, ice.element_type)
    list_type = arrow_type(ice)
    return pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), elements, type=list_type, mask=pa.array(mask))


# -- Arrow to Postgres text, for COPY ... FROM STDIN (FORMAT csv) ---------------------------

def _pg_array(values: list[Any] | None) -> str | None:
    if values is None:
        return None
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        else:
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            items.append(f'"{text}"')
    return "{" + ",".join(items) + "}"


def _csv_ready(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column Arrow's CSV writer prints the way Postgres's COPY reads it."""
    if isinstance(column.type, pa.BaseExtensionType):  # arrow.uuid and friends: their storage
        column = pa.chunked_array([c.storage for c in column.chunks], column.type.storage_type)
    kind = column.type
    if pa.types.is_fixed_size_binary(kind) and kind.byte_width == 16:
        return pa.array([None if v is None else str(uuid.UUID(bytes=v))
                         for v in column.to_pylist()], pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or \
            pa.types.is_fixed_size_binary(kind):
        return pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()],
                        pa.string())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.array([_pg_array(v) for v in column.to_pylist()], pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "t", "f")
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        # Arrow's CSV writer converts zoned values one at a time, 20x slower than printing
        # the UTC wall time (what the zoned value stores) and marking it Z.
        wall = pc.cast(column.cast(pa.timestamp(kind.unit)), pa.string())
        return pc.binary_join_element_wise(wall, "Z", "")
    return column


def to_copy_csv(table: pa.Table) -> bytes:
    """The rows as CSV for `COPY ... FROM STDIN (FORMAT csv)`: empty unquoted field = NULL."""
    if table.num_rows == 0:
        return b""
    columns = [_csv_ready(table.column(i)) for i in range(table.num_columns)]
    ready = pa.table(columns, names=[f"c{i}" for i in range(table.num_columns)])
    out = io.BytesIO()
    pacsv.write_csv(ready, out, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()
