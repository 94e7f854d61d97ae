"""Compare query results as multisets (or sequences) of rows, NaN- and float-tolerant."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pyarrow as pa


def normal(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return "NaN" if math.isnan(number) else round(number, 6)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(normal(v) for v in row.values()) for row in _pylist(table)]


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    names = [f"c{i}" for i in range(table.num_columns)]
    return table.rename_columns(names).to_pylist()


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, type(v).__name__, str(v)) for v in row)


def same_rows(got: pa.Table, want: pa.Table) -> bool:
    return sorted(rows(got), key=_sort_key) == sorted(rows(want), key=_sort_key)


def close_rows(got: pa.Table, want: pa.Table, rel: float = 1e-6) -> bool:
    a, b = sorted(rows(got), key=_sort_key), sorted(rows(want), key=_sort_key)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not math.isclose(u, v, rel_tol=rel, abs_tol=1e-4):
                    return False
            elif u != v:
                return False
    return True
