"""`python -m benchmarks.storage [--rows N --days D]`: the cold engine's overhead on an S3
endpoint and on a Ray cluster, against a local folder and the local process pool.

The same events (benchmarks.datagen, one file per day) are written to a local warehouse and to
a bucket of moto's S3 server on loopback; each cold shape runs on every (storage, executor)
pair in one run: warm-up, then the median of 5, with the requests and bytes the workers
fetched (EXPLAIN ANALYZE's "Storage reads"). Ray here is a two-node cluster on this machine,
so the figures measure overhead, not speed-up; moto is a Python server, far slower per
request than R2 or S3, so S3 times are an upper bound. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pyiceberg.catalog.sql import SqlCatalog

from benchmarks.datagen import _create_events, events_for_day
from benchmarks.workloads import Params, classic_queries
from fig_server.cold import ColdEngine
from fig_server.cold.ray_executor import RayExecutor
from tests import ray_cluster, s3

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = 5


def build(catalog: SqlCatalog, days: int, rows_per_day: int) -> Any:
    table = _create_events(catalog)
    first = dt.date(2025, 9, 30) - dt.timedelta(days=days - 1)
    next_id = 1
    for index in range(days):
        data = events_for_day(7, first + dt.timedelta(days=index), rows_per_day, next_id)
        next_id += rows_per_day
        table.append(data)
    return table


def measure(engine: ColdEngine, table: Any, sql: str) -> tuple[float, int, int]:
    engine.query(sql, {"events": table})  # warm-up: footers, open files, actors
    times, requests, fetched = [], 0, 0
    for _ in range(RUNS):
        started = time.perf_counter()
        result = engine.query(sql, {"events": table})
        times.append((time.perf_counter() - started) * 1000)
        requests, fetched = result.stats.requests, result.stats.bytes_fetched
    return statistics.median(times), requests, fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25_000, help="rows per day")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fig-bench-storage-"))
    local = SqlCatalog("local", uri=f"sqlite:///{root}/local.db",
                       warehouse=f"file://{root}/warehouse")
    settings = s3.new_warehouse()
    remote = SqlCatalog("s3", uri=f"sqlite:///{root}/s3.db", warehouse=settings["warehouse"],
                        **{"s3.endpoint": settings["s3_endpoint"],
                           "s3.region": settings["s3_region"],
                           "s3.access-key-id": settings["s3_access_key_id"],
                           "s3.secret-access-key": settings["s3_secret_access_key"]})
    tables = {"local folder": build(local, args.days, args.rows),
              "S3 (moto)": build(remote, args.days, args.rows)}
    params = Params(last_day=dt.date(2025, 9, 30), boundary=dt.datetime(2025, 9, 21, tzinfo=dt.UTC),
                    example_day=dt.date(2025, 9, 25),
                    needle_user=1 + (7 * 2_654_435_761) % 1_000_000, needle_id=args.rows,
                    rows_per_day=args.rows)
    queries = [q for q in classic_queries(params) if not q.uses_dimension]
    executors = {
        "local pool": lambda: ColdEngine(workers=2, eager=True),
        "Ray, 2 nodes": lambda: ColdEngine(
            executor=RayExecutor(ray_cluster.address(), ray_cluster.NODES), eager=True),
    }
    rows: list[tuple[str, str, str, float, int, int]] = []
    for executor_name, make in executors.items():
        with make() as engine:
            for storage, table in tables.items():
                for query in queries:
                    ms, requests, fetched = measure(engine, table, query.sql)
                    rows.append((query.name, storage, executor_name, ms, requests, fetched))
                    print(f"{query.name:10} {storage:13} {executor_name:13} {ms:9.1f} ms "
                          f"{requests:6} requests {fetched:12} bytes", flush=True)
    write(rows, args)


def write(rows: list[tuple[str, str, str, float, int, int]], args: argparse.Namespace) -> None:
    base = {(q, "local folder", "local pool"): ms for q, st, ex, ms, _, _ in rows
            if st == "local folder" and ex == "local pool"}
    lines = [f"# Cold storage and executor overhead ({dt.date.today().isoformat()})", "",
             f"{args.days} days x {args.rows} events (one Parquet file per day), median of "
             f"{RUNS} after a warm-up; `python -m benchmarks.storage --days {args.days} "
             f"--rows {args.rows}`. Ray: a two-node cluster on this 2-core machine (overhead, "
             "not speed-up); S3: moto's Python server on loopback (slower per request than "
             "R2 or S3). Requests and bytes: what the workers fetched outside DataFusion's own "
             "reader (local files are read by DataFusion directly and count none).", "",
             "| shape | storage | executor | ms | x local | requests | bytes fetched |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for query, storage, executor, ms, requests, fetched in rows:
        ratio = ms / base[(query, "local folder", "local pool")]
        lines.append(f"| {query} | {storage} | {executor} | {ms:.1f} | {ratio:.2f} | "
                     f"{requests} | {fetched} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{dt.date.today().isoformat()}-storage.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
