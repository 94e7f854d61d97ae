"""The systems that answer the cold queries: Fig (over pgwire, or its cold engine in-process)
and the peers a user would pick instead (DuckDB, DataFusion, Postgres holding every row).

Each system says why it cannot run (skip_reason), runs a query returning its rows, and
measures what it read in a separate, untimed run (bytes_read), so that profiling never
slows the timed runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from benchmarks.datagen import local_path
from benchmarks.workloads import Query


@dataclass
class Reading:
    """What one (untimed) run of a query read, and Fig's pruning counts when known."""

    bytes_read: int | None = None
    note: str = ""
    pruning: dict[str, Any] = field(default_factory=dict)


class System:
    """A system under test. Subclasses fill in name, kind and the four hooks."""

    name = ""
    short = ""
    is_fig = False

    def skip_reason(self) -> str | None:
        return None

    def query_skip_reason(self, query: Query) -> str | None:
        return None

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def reading(self, query: Query) -> Reading:
        return Reading(note="not measured")

    def reset_peak(self) -> None:
        """Forget the server's peak memory so far (systems with a server process of their
        own that the benchmark watches)."""

    def peak_mb(self) -> float | None:
        """The server's peak resident memory since reset_peak, when watched."""
        return None

    def close(self) -> None:
        return None


def normalize(rows: list[tuple[Any, ...]], ordered: bool = False) -> list[tuple[str, ...]]:
    """Rows as comparable text whatever the driver: decimals/floats to 2 places, UTC times;
    sorted (a multiset) unless the rows' order is part of the answer."""
    def cell(value: Any) -> str:
        if isinstance(value, (Decimal, float)):
            return f"{float(value):.2f}"
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).isoformat()
        return str(value)
    texts = [tuple(cell(v) for v in row) for row in rows]
    return texts if ordered else sorted(texts)


def _arrow_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [_python_values(column) for column in table.columns]
    return list(zip(*columns, strict=True)) if columns else []


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """A column as Python values. UTC timestamps are converted without their time zone and
    given it back, twice as fast as pyarrow's per-value conversion, which would otherwise
    dominate a large result's time (every session is in UTC: workloads.py)."""
    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz in ("UTC", "+00:00"):
        naive = column.cast(pa.timestamp(kind.unit)).to_pylist()
        return [None if v is None else v.replace(tzinfo=dt.UTC) for v in naive]
    return column.to_pylist()


_SIZE = re.compile(r"bytes_scanned=([\d.]+)\s*([KMGT]?)")
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class DuckDBSystem(System):
    name = "DuckDB read_parquet"
    short = "duckdb"

    def __init__(self, files: list[str], dimensions: dict[str, pa.Table]) -> None:
        import duckdb
        self.con = duckdb.connect()
        self.con.execute(f"SET threads = {os.cpu_count() or 1}")
        self.con.execute("SET TimeZone = 'UTC'")
        paths = ", ".join("'" + local_path(f).replace("'", "''") + "'" for f in files)
        # hive_partitioning off: the folder names are Iceberg's, not columns of the table.
        self.con.execute("CREATE VIEW events AS SELECT * FROM read_parquet("
                         f"[{paths}], hive_partitioning = false)")
        for name, table in dimensions.items():
            self.con.register(f"{name}_arrow", table)
            self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
            self.con.unregister(f"{name}_arrow")

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        return self.con.execute(query.file_sql).fetchall()

    def reading(self, query: Query) -> Reading:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile.json"
            self.con.execute("PRAGMA enable_profiling = 'json'")
            self.con.execute(f"PRAGMA profiling_output = '{out}'")
            self.con.execute("SET tracked_metrics = ['*']")
            try:
                self.con.execute(query.file_sql).fetchall()
            finally:
                self.con.execute("PRAGMA disable_profiling")
            profile = json.loads(out.read_text())
        total = profile.get("io", {}).get("total_bytes_read")
        return Reading(int(total) if total is not None else None, "profiler io.total_bytes_read")

    def close(self) -> None:
        self.con.close()


class DataFusionSystem(System):
    name = "DataFusion register_parquet"
    short = "datafusion"

    def __init__(self, files: list[str], link_dir: Path,
                 dimensions: dict[str, pa.Table]) -> None:
        import datafusion
        # One listing table over a folder of links to exactly the table's current files.
        link_dir.mkdir(parents=True, exist_ok=True)
        for old in link_dir.iterdir():
            old.unlink()
        for index, uri in enumerate(files):
            (link_dir / f"{index:06d}.parquet").symlink_to(local_path(uri))
        config = (datafusion.SessionConfig()
                  .with_target_partitions(os.cpu_count() or 1)
                  .set("datafusion.execution.parquet.pushdown_filters", "true")
                  .set("datafusion.execution.time_zone", "+00:00"))
        self.ctx = datafusion.SessionContext(config)
        self.ctx.register_parquet("events", str(link_dir) + "/")
        for name, table in dimensions.items():
            self.ctx.register_record_batches(name, [table.to_batches()])

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        return _arrow_rows(self.ctx.sql(query.file_sql).to_arrow_table())

    def reading(self, query: Query) -> Reading:
        plan = (self.ctx.sql("EXPLAIN ANALYZE " + query.file_sql)
                .to_arrow_table().to_pylist())
        text = "\n".join(str(row.get("plan", "")) for row in plan)
        sizes = [float(n) * _UNITS[u] for n, u in _SIZE.findall(text)]
        if not sizes:
            return Reading(None, "no bytes_scanned in EXPLAIN ANALYZE")
        return Reading(int(sum(sizes)), "EXPLAIN ANALYZE bytes_scanned")


class PostgresSystem(System):
    name = "Postgres, all rows, indexed"
    short = "postgres"

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET TimeZone = 'UTC'")

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        return self.conn.execute(query.sql, query.params or None).fetchall()

    def reading(self, query: Query) -> Reading:
        row = self.conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                                + query.inline_sql).fetchone()
        plan = (row[0] if row else [{}])[0].get("Plan", {})
        blocks = (plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
                  + plan.get("Temp Read Blocks", 0))
        # Buffer accesses, not distinct pages: an index scan may count one page many times.
        return Reading(int(blocks) * 8192, "EXPLAIN BUFFERS shared+temp accesses x 8 KiB")

    def close(self) -> None:
        self.conn.close()


def find_cold_engine() -> tuple[type | None, str]:
    """Fig's ColdEngine class when the cold engine has landed, else why not."""
    errors = []
    for module_name in ("fig_server.cold", "fig_server.cold.engine"):
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # any import failure means "not available", and why
            errors.append(f"import {module_name}: {type(error).__name__}: {error}")
            continue
        engine = getattr(module, "ColdEngine", None)
        if engine is not None:
            return engine, ""
        errors.append(f"{module_name} has no ColdEngine")
    return None, "; ".join(errors)


class FigColdInProcess(System):
    """Fig's cold engine called directly: pruning, work units, workers; no pgwire, no planner."""

    name = "Fig cold engine (in-process)"
    short = "fig-inproc"
    is_fig = True

    def __init__(self, engine_class: type, events: Any) -> None:
        self.engine = engine_class(os.cpu_count() or 1)
        self.tables = {"events": events}
        self.last_stats: Any = None

    def query_skip_reason(self, query: Query) -> str | None:
        if query.uses_dimension:
            return "the in-process engine reads Iceberg tables only; the hot join needs the planner"
        return None

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        result = self.engine.query(query.inline_sql, tables=self.tables)
        self.last_stats = result.stats
        return _arrow_rows(result.table)

    def reading(self, query: Query) -> Reading:
        self.run(query)
        stats = self.last_stats
        names = ("manifests_kept", "manifests_total", "files_kept", "files_total",
                 "row_groups_kept", "row_groups_total", "bytes_total", "bytes_read",
                 "units_planned", "units_run", "stopped_early")
        pruning = {name: getattr(stats, name) for name in names if hasattr(stats, name)}
        read = getattr(stats, "bytes_read", None)
        return Reading(int(read) if read is not None else None, "ColdResult.stats.bytes_read",
                       pruning)

    def close(self) -> None:
        for method in ("close", "shutdown"):
            if hasattr(self.engine, method):
                getattr(self.engine, method)()
                return


_EXPLAIN_COUNTS = {
    "manifests": re.compile(r"Manifests: (\d+) of (\d+)"),
    "files": re.compile(r"Files: (\d+) of (\d+)"),
    "row_groups": re.compile(r"Row groups: (\d+) of (\d+)"),
    "bytes": re.compile(r"Bytes read: (\d+) of (\d+)"),
    "units": re.compile(r"Work units run: (\d+) of (\d+)"),
}


def explain_pruning(text: str) -> dict[str, Any]:
    """Fig's EXPLAIN ANALYZE pruning counts, summed over the cold scans it shows."""
    pruning: dict[str, Any] = {}
    for name, pattern in _EXPLAIN_COUNTS.items():
        pairs = [(int(a), int(b)) for a, b in pattern.findall(text)]
        if pairs:
            kept, total = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
            if name == "bytes":
                pruning["bytes_read"], pruning["bytes_total"] = kept, total
            elif name == "units":
                pruning["units_run"], pruning["units_planned"] = kept, total
            else:
                pruning[f"{name}_kept"], pruning[f"{name}_total"] = kept, total
    pruning["stopped_early"] = bool(re.search(r"Stopped early: yes", text))
    routes = re.findall(r"Fig route: (\w+)", text)
    if routes:
        pruning["route"] = routes[0]
    return pruning


class FigPgwire(System):
    """Fig as a user sees it: psycopg over pgwire, the planner routing to a tier."""

    is_fig = True

    def __init__(self, dsn: str, route: str = "cold", server_pid: int | None = None,
                 result_cache: bool = True) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET TimeZone = 'UTC'")
        self.conn.execute("SELECT set_config('fig.route', %s, false)", (route,))
        self.route = route
        self.name = f"Fig over pgwire (route {route})"
        self.short = f"fig-{route}"
        if not result_cache:  # every run reads its files: the engine's speed, not the cache's
            self.conn.execute("SET fig.result_cache = off")
            self.name = f"Fig over pgwire (route {route}, result cache off)"
            self.short = f"fig-{route}-uncached"
        self.server_pid = server_pid  # `fig serve`, whose peak memory is reported

    def reset_peak(self) -> None:
        if self.server_pid is not None:
            with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
                Path(f"/proc/{self.server_pid}/clear_refs").write_text("5")

    def peak_mb(self) -> float | None:
        if self.server_pid is None:
            return None
        try:
            status = Path(f"/proc/{self.server_pid}/status").read_text()
        except OSError:
            return None
        line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), None)
        return None if line is None else int(line.split()[1]) / 1024

    def run(self, query: Query) -> list[tuple[Any, ...]]:
        return self.conn.execute(query.sql, query.params or None).fetchall()

    def reading(self, query: Query) -> Reading:
        rows = self.conn.execute("EXPLAIN ANALYZE " + query.inline_sql).fetchall()
        text = "\n".join(str(row[0]) for row in rows)
        pruning = explain_pruning(text)
        return Reading(pruning.get("bytes_read"), "EXPLAIN ANALYZE Bytes read", pruning)

    def close(self) -> None:
        self.conn.close()


def probe_fig_pgwire(dsn: str, example: Query) -> str | None:
    """None when Fig answers a cold query over pgwire, else the reason it cannot (yet)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET fig.route = 'cold'")
            conn.execute(example.sql).fetchall()
            tiered = conn.execute("SELECT count(*) FROM fig.tables").fetchone()
    except psycopg.Error as error:
        state = getattr(error, "sqlstate", None) or "?"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"cold route not available over pgwire ({state}: {first[:160]})"
    if not tiered or not tiered[0]:
        return "no tiered table in fig.tables: the query was answered by hot Postgres"
    return None
