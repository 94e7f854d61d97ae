"""Deterministic events data: an Iceberg table laid out as Fig writes it, plus a hot dimension.

The events table follows the example of shared/reference/fig-platform-architecture.md: one
row per HTTP request with ts, day, status (~95% 200, 4% 404, 1% 500), user_id, country, amount
and payload. It is appended to an Iceberg SQL catalog day by day, each day sorted by ts (the
layout CDC plus compaction produces), partitioned by day(ts), with row groups small enough to
prune. Every value is a function of (seed, day), so a scale and a seed name one data set,
cached under benchmarks/data/.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

DATA_ROOT = Path(__file__).resolve().parent / "data"
NAMESPACE = "public"
EVENTS = "events"
LAST_DAY = dt.date(2025, 9, 30)
ROW_GROUP_ROWS = 131_072
VERSION = 2  # bump whenever generated values or the schema change: it keys the cache
USERS = 1_000_000


@dataclass(frozen=True)
class Scale:
    """How much data: rows spread evenly over days ending at LAST_DAY."""

    name: str
    rows: int
    days: int

    @property
    def first_day(self) -> dt.date:
        return LAST_DAY - dt.timedelta(days=self.days - 1)

    def rows_on(self, index: int) -> int:
        base, extra = divmod(self.rows, self.days)
        return base + (1 if index < extra else 0)


SCALES = {
    "tiny": Scale("tiny", 200_000, 10),
    "quick": Scale("quick", 10_000_000, 60),
    "full": Scale("full", 100_000_000, 365),
}

# (code, name, region, weight): the hot-only dimension table and the traffic mix.
COUNTRIES: tuple[tuple[str, str, str, int], ...] = (
    ("US", "United States", "Americas", 30), ("BR", "Brazil", "Americas", 6),
    ("CA", "Canada", "Americas", 4), ("MX", "Mexico", "Americas", 3),
    ("AR", "Argentina", "Americas", 2), ("CL", "Chile", "Americas", 1),
    ("CO", "Colombia", "Americas", 1), ("GB", "United Kingdom", "Europe", 7),
    ("DE", "Germany", "Europe", 7), ("FR", "France", "Europe", 5),
    ("ES", "Spain", "Europe", 3), ("IT", "Italy", "Europe", 3),
    ("NL", "Netherlands", "Europe", 2), ("SE", "Sweden", "Europe", 1),
    ("PL", "Poland", "Europe", 2), ("PT", "Portugal", "Europe", 1),
    ("IN", "India", "Asia", 6), ("JP", "Japan", "Asia", 4),
    ("CN", "China", "Asia", 3), ("KR", "South Korea", "Asia", 2),
    ("ID", "Indonesia", "Asia", 2), ("SG", "Singapore", "Asia", 1),
    ("AU", "Australia", "Oceania", 2), ("NZ", "New Zealand", "Oceania", 1),
    ("ZA", "South Africa", "Africa", 1), ("NG", "Nigeria", "Africa", 1),
    ("EG", "Egypt", "Africa", 1), ("KE", "Kenya", "Africa", 1),
)
PATHS = ("/", "/login", "/logout", "/cart", "/checkout", "/search", "/api/v1/items",
         "/api/v1/orders", "/api/v1/users/me", "/static/app.js", "/static/app.css",
         "/images/logo.png", "/help", "/pricing", "/blog", "/account/settings")
AGENTS = ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5)",
          "curl/8.5.0", "python-requests/2.32.3", "okhttp/4.12.0", "Go-http-client/2.0")

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=False),
    NestedField(2, "ts", TimestamptzType(), required=False),
    NestedField(3, "day", DateType(), required=False),
    NestedField(4, "status", IntegerType(), required=False),
    NestedField(5, "user_id", LongType(), required=False),
    NestedField(6, "country", StringType(), required=False),
    NestedField(7, "amount", DecimalType(12, 2), required=False),
    NestedField(8, "payload", StringType(), required=False),
)
ARROW_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("day", pa.date32()),
    ("status", pa.int32()),
    ("user_id", pa.int64()),
    ("country", pa.string()),
    ("amount", pa.decimal128(12, 2)),
    ("payload", pa.string()),
])
PG_EVENTS_DDL = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    ts timestamptz NOT NULL,
    day date NOT NULL,
    status integer NOT NULL,
    user_id bigint NOT NULL,
    country text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    payload text NOT NULL
)"""
PG_COUNTRIES_DDL = """
CREATE TABLE {name} (code text PRIMARY KEY, name text NOT NULL, region text NOT NULL)"""
PG_USERS_DDL = """
CREATE TABLE {name} (
    user_id bigint PRIMARY KEY,
    plan text NOT NULL,
    segment text NOT NULL,
    signup_day date NOT NULL
)"""
# (plan, weight, share of its users that are businesses): the users dimension's mix.
PLANS: tuple[tuple[str, int, float], ...] = (
    ("free", 70, 0.02), ("pro", 20, 0.3), ("team", 7, 0.9), ("enterprise", 3, 1.0))
FIRST_SIGNUP = dt.date(2023, 1, 1)


def _payload_pool() -> pa.Array:
    """A few thousand distinct request descriptions, as logs repeat themselves."""
    items = [json.dumps({"method": method, "path": path, "ua": agent, "v": version})
             for method in ("GET", "POST", "PUT", "DELETE")
             for path in PATHS for agent in AGENTS for version in range(4)]
    return pa.array(items, pa.string())


_PAYLOADS = _payload_pool()
_COUNTRY_CODES = pa.array([code for code, *_ in COUNTRIES], pa.string())
_COUNTRY_P = np.array([weight for *_, weight in COUNTRIES], dtype=np.float64)
_COUNTRY_P /= _COUNTRY_P.sum()


def _decimal_from_cents(cents: np.ndarray) -> pa.Array:
    """decimal128(12, 2) values from int64 cents, built from their 128-bit two's complement."""
    words = np.empty((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = np.where(cents < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(cents),
                                 [None, pa.py_buffer(words.tobytes())])


def events_for_day(seed: int, day: dt.date, rows: int, first_id: int = 1) -> pa.Table:
    """One day of events, sorted by ts, ids from first_id; the same arguments always give the
    same rows."""
    rng = np.random.default_rng([seed, day.toordinal()])
    start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 10**6
    ts = np.sort(rng.integers(0, 86_400 * 10**6, rows, dtype=np.int64)) + start_us
    status = np.full(rows, 200, dtype=np.int32)
    draw = rng.random(rows)
    status[draw < 0.05] = 404
    status[draw < 0.01] = 500
    # Heavy-tailed user activity: a few users make many requests.
    user_id = np.minimum(rng.zipf(1.3, rows), USERS).astype(np.int64)
    user_id = (user_id * 2_654_435_761 + rng.integers(0, 7, rows)) % USERS + 1
    country = _COUNTRY_CODES.take(pa.array(rng.choice(len(COUNTRIES), rows, p=_COUNTRY_P)))
    cents = np.round(rng.lognormal(7.0, 1.2, rows)).astype(np.int64)
    payload = _PAYLOADS.take(pa.array(rng.integers(0, len(_PAYLOADS), rows)))
    return pa.Table.from_arrays([
        pa.array(np.arange(first_id, first_id + rows, dtype=np.int64)),
        pa.array(ts, pa.timestamp("us", tz="UTC")),
        pa.array(np.full(rows, (day - dt.date(1970, 1, 1)).days, dtype=np.int32), pa.date32()),
        pa.array(status),
        pa.array(user_id),
        country,
        _decimal_from_cents(cents),
        payload,
    ], schema=ARROW_SCHEMA)


def iter_days(scale: Scale, seed: int) -> Iterator[tuple[dt.date, pa.Table]]:
    first_id = 1
    for index in range(scale.days):
        day = scale.first_day + dt.timedelta(days=index)
        rows = scale.rows_on(index)
        yield day, events_for_day(seed, day, rows, first_id)
        first_id += rows


def countries_table() -> pa.Table:
    codes, names, regions, _ = zip(*COUNTRIES, strict=True)
    return pa.table({"code": list(codes), "name": list(names), "region": list(regions)})


@functools.cache
def users_table(seed: int) -> pa.Table:
    """The hot-only dimension `users`: one row per possible user_id, the same for a seed."""
    rng = np.random.default_rng([seed, USERS])
    weights = np.array([weight for _, weight, _ in PLANS], dtype=np.float64)
    plan = rng.choice(len(PLANS), USERS, p=weights / weights.sum())
    business = rng.random(USERS) < np.array([share for *_, share in PLANS])[plan]
    signup_days = (LAST_DAY - FIRST_SIGNUP).days + 1
    signup = rng.integers(0, signup_days, USERS) + (FIRST_SIGNUP - dt.date(1970, 1, 1)).days
    return pa.table({
        "user_id": pa.array(np.arange(1, USERS + 1, dtype=np.int64)),
        "plan": pa.array([name for name, *_ in PLANS]).take(pa.array(plan)),
        "segment": pa.array(np.where(business, "business", "consumer")),
        "signup_day": pa.array(signup.astype(np.int32), pa.date32()),
    })


@dataclass(frozen=True)
class DataSet:
    """Where one (scale, seed) data set lives: Fig's data dir holds the Iceberg catalog."""

    scale: Scale
    seed: int
    layout: str = "generator"

    @property
    def root(self) -> Path:
        name = f"{self.scale.name}-{self.scale.rows}-{self.scale.days}-s{self.seed}-v{VERSION}"
        return DATA_ROOT / (name if self.layout == "generator" else f"{name}-{self.layout}")

    @property
    def fig_data_dir(self) -> Path:
        return self.root / "fig"

    @property
    def catalog_path(self) -> Path:
        return self.fig_data_dir / "iceberg" / "catalog.db"

    @property
    def warehouse(self) -> Path:
        return self.fig_data_dir / "iceberg" / "warehouse"

    @property
    def marker(self) -> Path:
        return self.root / "iceberg.json"

    def catalog(self) -> Catalog:
        self.warehouse.mkdir(parents=True, exist_ok=True)
        return SqlCatalog("fig", uri=f"sqlite:///{self.catalog_path}",
                          warehouse=f"file://{self.warehouse}")

    def events(self) -> Table:
        return self.catalog().load_table((NAMESPACE, EVENTS))

    def example_day(self) -> dt.date:
        """The day the architecture doc's example query asks for, when the data covers it."""
        wanted = dt.date(2025, 9, 25)
        return wanted if wanted >= self.scale.first_day else LAST_DAY


def _create_events(catalog: Catalog) -> Table:
    catalog.create_namespace_if_not_exists(NAMESPACE)
    ts_id = SCHEMA.find_field("ts").field_id
    return catalog.create_table(
        (NAMESPACE, EVENTS), schema=SCHEMA,
        partition_spec=PartitionSpec(PartitionField(ts_id, 1000, DayTransform(), "ts_day")),
        sort_order=SortOrder(SortField(ts_id, IdentityTransform())),
        properties={"write.parquet.row-group-limit": str(ROW_GROUP_ROWS),
                    "write.parquet.compression-codec": "zstd"},
    )


def ensure_iceberg(data: DataSet, log: bool = True) -> dict[str, object]:
    """Write the events table once per (scale, seed); later calls read the cached marker."""
    if data.marker.exists():
        return dict(json.loads(data.marker.read_text()))
    data.root.mkdir(parents=True, exist_ok=True)
    data.root.chmod(0o755)
    data.fig_data_dir.mkdir(exist_ok=True)
    data.fig_data_dir.chmod(0o755)
    catalog = data.catalog()
    if catalog.table_exists((NAMESPACE, EVENTS)):  # a run interrupted half way
        catalog.purge_table((NAMESPACE, EVENTS))
    table = _create_events(catalog)
    started = time.perf_counter()
    for index, (day, rows) in enumerate(iter_days(data.scale, data.seed)):
        table.append(rows, snapshot_properties={"fig.bench.day": day.isoformat()})
        if log and (index % 10 == 9 or index == data.scale.days - 1):
            print(f"  iceberg: {index + 1}/{data.scale.days} days written", flush=True)
    info = {**asdict(data.scale), "seed": data.seed,
            "seconds": round(time.perf_counter() - started, 1)}
    data.marker.write_text(json.dumps(info))
    return info


def current_data_files(table: Table) -> list[tuple[str, int, int]]:
    """(path, bytes, rows) of every live data file, read from the manifests (never folders)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    files = []
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            data_file = entry.data_file
            files.append((data_file.file_path, data_file.file_size_in_bytes,
                          data_file.record_count))
    return sorted(files)


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")
