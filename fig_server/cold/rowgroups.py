"""Parquet row-group statistics seen as Iceberg metrics, so pyiceberg's evaluator prunes them."""

from __future__ import annotations

import math
from typing import Any

from pyiceberg.conversions import to_bytes
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    PrimitiveType,
    StringType,
    TimestampType,
    TimestamptzType,
)

from fig_server.cold.metadata import Footer
from fig_server.cold.topn import domain_value

_BOUNDED = (BooleanType, IntegerType, LongType, FloatType, DoubleType, DecimalType, StringType,
            DateType, TimestampType, TimestamptzType)


def row_group_bounds(footer: Footer, index: int, schema: Schema,
                     field_id: int) -> tuple[Any, Any, int | None, int]:
    """Domain-valued (lower, upper, null count, value count) of one field in one row group."""
    row_group = footer.metadata.row_group(index)
    rows = int(row_group.num_rows)
    name = footer.names_by_field_id.get(field_id)
    if name is None:
        return None, None, rows, rows
    leaf = footer.leaf_by_name.get(name)
    if leaf is None:
        return None, None, None, rows
    stats = row_group.column(leaf).statistics
    if stats is None:
        return None, None, None, rows
    nulls = int(stats.null_count) if stats.has_null_count else None
    ftype = schema.find_field(field_id).field_type
    if not stats.has_min_max or not isinstance(ftype, _BOUNDED):
        return None, None, nulls, rows
    lower, upper = domain_value(stats.min, ftype), domain_value(stats.max, ftype)
    if getattr(stats, "is_max_value_exact", True) is False:
        upper = None
    return lower, upper, nulls, rows


def row_group_as_data_file(footer: Footer, index: int, schema: Schema,
                           field_ids: set[int]) -> DataFile:
    """A DataFile whose metrics are one row group's statistics for the given fields."""
    rows = int(footer.metadata.row_group(index).num_rows)
    lowers: dict[int, bytes] = {}
    uppers: dict[int, bytes] = {}
    nulls: dict[int, int] = {}
    values: dict[int, int] = {}
    for field_id in field_ids:
        ftype = schema.find_field(field_id).field_type
        if not isinstance(ftype, PrimitiveType):
            continue
        lower, upper, null_count, value_count = row_group_bounds(footer, index, schema, field_id)
        values[field_id] = value_count
        if null_count is not None:
            nulls[field_id] = null_count
        if lower is not None and upper is not None:
            lowers[field_id] = to_bytes(ftype, _iceberg_value(lower, ftype))
            uppers[field_id] = to_bytes(ftype, _iceberg_value(upper, ftype))
    return DataFile.from_args(
        record_count=rows, value_counts=values, null_value_counts=nulls,
        nan_value_counts={}, lower_bounds=lowers, upper_bounds=uppers)


def _iceberg_value(value: Any, ftype: PrimitiveType) -> Any:
    if isinstance(ftype, FloatType | DoubleType):
        return value[1] if value[0] == 0 else math.nan
    return value
