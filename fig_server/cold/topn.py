"""Early termination for ORDER BY <column> LIMIT n: sort keys of values and of unit bounds."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import total_ordering
from typing import Any

from pyiceberg.types import (
    DateType,
    DoubleType,
    FloatType,
    IcebergType,
    NestedField,
    TimestampType,
    TimestamptzType,
)
from pyiceberg.utils.datetime import date_to_days, datetime_to_micros

MUST_RUN: tuple[Any, ...] = (-1,)


@dataclass(frozen=True)
class OrderKey:
    """The first ORDER BY key when it is a plain column; strict when more keys follow."""

    field: NestedField
    desc: bool
    nulls_first: bool
    limit: int
    strict: bool


@total_ordering
class _Reversed:
    """Wraps a value so that it sorts in reverse (DESC)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __hash__(self) -> int:
        return hash(self.value)


def domain_value(value: Any, ftype: IcebergType) -> Any:
    """A value (from rows, Parquet stats or Iceberg bounds) in one comparable domain."""
    if value is None:
        return None
    if isinstance(ftype, FloatType | DoubleType):
        value = float(value)
        return (1, 0.0) if math.isnan(value) else (0, value)
    if isinstance(ftype, DateType) and isinstance(value, dt.date):
        return date_to_days(value)
    if isinstance(ftype, TimestampType | TimestamptzType) and isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return datetime_to_micros(value)
    if isinstance(value, Decimal):
        return value
    return value


def sort_key(value: Any, key: OrderKey) -> tuple[Any, ...]:
    """Where a domain value sorts in the query's order: smaller is earlier."""
    if value is None:
        return (0,) if key.nulls_first else (2,)
    return (1, _Reversed(value) if key.desc else value)


def best_key(lower: Any, upper: Any, null_count: int | None, value_count: int | None,
             nan_count: int | None, key: OrderKey) -> tuple[Any, ...]:
    """The earliest sort key any row of a unit could have, from its bounds."""
    may_have_nulls = null_count is None or null_count > 0
    if key.nulls_first and may_have_nulls:
        return MUST_RUN
    if null_count is not None and value_count is not None and null_count >= value_count:
        return sort_key(None, key)
    bound = upper if key.desc else lower
    if bound is None:
        return MUST_RUN
    is_float = isinstance(key.field.field_type, FloatType | DoubleType)
    if is_float and (bound[0] == 1 or (key.desc and nan_count != 0)):
        return MUST_RUN
    return sort_key(bound, key)


def cannot_beat(best: tuple[Any, ...], threshold: tuple[Any, ...] | None, key: OrderKey) -> bool:
    """True when no row of a unit with this best key can enter a full top-n heap."""
    if threshold is None or best == MUST_RUN:
        return False
    return best > threshold if key.strict else best >= threshold
