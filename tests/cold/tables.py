"""Builders of Iceberg tables with awkward layouts: many files and snapshots, schema and
partition evolution, NULL-heavy columns, NaN, long strings (truncated bounds)."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import LongType

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PREFIX = "a-long-common-prefix-"  # longer than 16 chars: manifest bounds get truncated


def _schema(with_extra: bool, label: str) -> pa.Schema:
    fields = [("id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("d", pa.date32()),
              ("i", pa.int32()), ("f", pa.float64()), (label, pa.string()),
              ("dec", pa.decimal128(10, 2)), ("b", pa.bool_())]
    if with_extra:
        fields.append(("extra", pa.int64()))
    return pa.schema(fields)


@dataclass
class Layout:
    table: Table
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (snapshot id, ms)


@contextmanager
def duckdb_holding(layout: Layout) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB in TimeZone UTC holding every row of the layout's table as `events`: the
    oracle a cold scan's answer is compared with."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", layout.table.scan().to_arrow())
        yield con
    finally:
        con.close()


def _batch(rng: random.Random, start: int, count: int, sort: bool, with_extra: bool,
           label: str) -> pa.Table:
    ids = list(range(start, start + count))
    if not sort:
        rng.shuffle(ids)
    rows: dict[str, list[Any]] = {name: [] for name in _schema(with_extra, label).names}
    day0 = rng.randrange(0, 20)
    for n in ids:
        ts = BASE + dt.timedelta(days=day0, seconds=n * 37)
        rows["id"].append(n)
        rows["ts"].append(ts)
        rows["d"].append((ts + dt.timedelta(days=rng.randrange(-2, 3))).date())
        rows["i"].append(None if rng.random() < 0.7 else rng.randrange(-50, 50))
        roll = rng.random()
        rows["f"].append(math.nan if roll < 0.1 else None if roll < 0.2 else
                         round(rng.uniform(-100, 100), 3))
        rows[label].append(f"{PREFIX}{n:06d}")
        rows["dec"].append(None if rng.random() < 0.1 else
                           Decimal(rng.randrange(-100000, 100000)).scaleb(-2))
        rows["b"].append(None if rng.random() < 0.2 else rng.random() < 0.5)
        if with_extra:
            rows["extra"].append(None if rng.random() < 0.3 else rng.randrange(0, 1000))
    return pa.table(rows, schema=_schema(with_extra, label))


def build_events(catalog: SqlCatalog, name: str, seed: int, appends: int = 24,
                 max_rows: int = 120) -> Layout:
    """An events table evolving as it grows: unpartitioned, then day(ts) partitioned, then
    identity(b) too; a column added, a column renamed; small row groups."""
    rng = random.Random(seed)
    table = catalog.create_table(
        f"public.{name}", schema=_schema(False, "s"),
        properties={"write.parquet.row-group-limit": "25"})
    layout = Layout(table)
    next_id, with_extra, label = 0, False, "s"
    for step in range(appends):
        if step == appends // 4:
            with table.update_spec() as spec:
                spec.add_field("ts", DayTransform(), "ts_day")
        if step == appends // 2:
            with table.update_schema() as update:
                update.add_column("extra", LongType())
            with_extra = True
        if step == (2 * appends) // 3:
            with table.update_schema() as update:
                update.rename_column("s", "label")
            label = "label"
            with table.update_spec() as spec:
                spec.add_field("b", IdentityTransform(), "b_part")
        count = rng.randrange(1, max_rows)
        table.append(_batch(rng, next_id, count, rng.random() < 0.7, with_extra, label))
        next_id += count
        snapshot = table.current_snapshot()
        assert snapshot is not None
        layout.snapshots.append((snapshot.snapshot_id, snapshot.timestamp_ms))
    if label == "s":
        with table.update_schema() as update:
            update.rename_column("s", "label")
    return layout
