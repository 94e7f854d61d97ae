"""Hot path: primary-key lookups through Fig and direct to Postgres over TCP.

pgbench (`-M extended`) gives throughput and per-transaction latency at several client
counts for two scripts: the built-in select-only one (`-S`, a primary-key lookup) and a short
range scan of 100 consecutive accounts; a psycopg loop gives the latency a Python application
sees for one prepared primary-key SELECT.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.pgload import ensure_database

PGBENCH_DB = "pgbench"


RANGE_SCRIPT = """\\set aid random(1, 100000 * :scale - 100)
SELECT sum(abalance), count(*) FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 99;
"""
SCRIPTS = {"pk": "primary-key lookup (pgbench -S)", "range": "range scan of 100 accounts"}


@dataclass
class PgbenchResult:
    target: str
    clients: int
    script: str
    tps: float
    p50_ms: float
    p99_ms: float
    transactions: int
    tps_runs: tuple[float, ...] = ()


@dataclass
class LoopResult:
    target: str
    queries: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def find_pgbench(bin_dir: Path | None) -> str | None:
    if bin_dir is not None and (bin_dir / "pgbench").exists():
        return str(bin_dir / "pgbench")
    return shutil.which("pgbench")


def pgbench_init(pgbench: str, admin_dsn: str, dsn: str, scale: int) -> None:
    """A scratch database with pgbench's tables, created once (scale s = s * 100k accounts)."""
    ensure_database(admin_dsn, PGBENCH_DB)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('pgbench_accounts') IS NOT NULL").fetchone()
        if row and row[0]:
            count = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()
            if count and count[0] == scale:
                return
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale), dsn], check=True,
                   capture_output=True, text=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_pgbench(pgbench: str, dsn: str, target: str, clients: int, seconds: int,
                script: str = "pk") -> PgbenchResult:
    """One timed pgbench run; latencies from its per-transaction log."""
    threads = max(1, min(clients, 2))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "log"
        if script == "pk":
            workload = ["-S"]
        else:
            (Path(tmp) / "range.sql").write_text(RANGE_SCRIPT)
            workload = ["-f", str(Path(tmp) / "range.sql")]
        out = subprocess.run(
            [pgbench, *workload, "-M", "extended", "-n", "-c", str(clients), "-j", str(threads),
             "-T", str(seconds), "-l", f"--log-prefix={prefix}", dsn],
            capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-500:]}")
        latencies_us: list[float] = []
        for log in Path(tmp).glob("log.*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies_us.append(float(parts[2]))
    tps_match = [line for line in out.stdout.splitlines() if line.startswith("tps")]
    # No tps line: no transaction finished within the run (clients still connecting).
    tps = float(tps_match[0].split("=")[1].split()[0]) if tps_match else 0.0
    return PgbenchResult(target, clients, script, tps, percentile(latencies_us, 0.5) / 1000,
                         percentile(latencies_us, 0.99) / 1000, len(latencies_us))


def run_loop(dsn: str, target: str, queries: int, accounts: int, seed: int = 7) -> LoopResult:
    """Prepared primary-key SELECTs one after another from a single psycopg connection."""
    rng = random.Random(seed)
    keys = [rng.randint(1, accounts) for _ in range(queries + queries // 5)]
    timings: list[float] = []
    statement = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        cur = conn.cursor()
        for index, key in enumerate(keys):
            started = time.perf_counter()
            cur.execute(statement, (key,))
            cur.fetchone()
            if index >= queries // 5:  # the first fifth warms up and is not counted
                timings.append((time.perf_counter() - started) * 1000)
    return LoopResult(target, len(timings), percentile(timings, 0.5),
                      percentile(timings, 0.99), statistics.fmean(timings))


def median_result(runs: list[PgbenchResult]) -> PgbenchResult:
    """The run with the median throughput, carrying every run's tps for the spread."""
    ordered = sorted(runs, key=lambda r: r.tps)
    middle = ordered[len(ordered) // 2]
    return PgbenchResult(middle.target, middle.clients, middle.script, middle.tps,
                         middle.p50_ms, middle.p99_ms, sum(r.transactions for r in runs),
                         tuple(round(r.tps) for r in runs))
