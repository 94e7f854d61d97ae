"""`python -m benchmarks.run --scale quick|full`: Fig and its peers on the same data, one run.

Prints a table and writes benchmarks/results/<date>.md plus PNG charts. Systems that cannot
run yet (a Fig stage not landed, a missing library) are listed with the reason, never guessed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import psycopg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.bare_relay import BareRelay
from benchmarks.datagen import (
    LAST_DAY,
    SCALES,
    DataSet,
    Scale,
    countries_table,
    current_data_files,
    ensure_iceberg,
    local_path,
    users_table,
)
from benchmarks.fig_process import REPO, FigProcess, free_port, start_fig
from benchmarks.report import ColdMeasure, RunReport, print_report, write_charts, write_markdown
from benchmarks.systems import (
    DataFusionSystem,
    DuckDBSystem,
    FigColdInProcess,
    FigPgwire,
    PostgresSystem,
    System,
    find_cold_engine,
    normalize,
    probe_fig_pgwire,
)
from benchmarks.workloads import (
    ORDERED,
    ROW_COUNT,
    Params,
    Query,
    cold_queries,
    split_queries,
    star_queries,
)

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("cold", "hot", "cdc")
POSTGRES_PEER_MAX_ROWS = 20_000_000
SLOW_WARMUP_S = 2.0
HOT_REPEATS = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--rows", type=int, help="override the scale's row count")
    parser.add_argument("--days", type=int, help="override the scale's day count")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--layout", choices=("auto", "generator", "fig"), default="auto",
                        help="fig: load hot Postgres and tier it through Fig's CDC, retention "
                             "and compaction (Fig's own layout; needed for pgwire and split "
                             "queries); generator: write Iceberg directly; auto: fig when "
                             "fig_server.cdc can tier tables, else generator")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cold query")
    parser.add_argument("--shapes", default="",
                        help="comma-separated shape names to run (default: all), e.g. "
                             "gb-dbt-cte,star-cohort")
    parser.add_argument("--hot-seconds", type=int, help="seconds per pgbench run")
    return parser.parse_args(argv)


def chosen_scale(args: argparse.Namespace) -> Scale:
    scale = SCALES[args.scale]
    if args.rows or args.days:
        scale = replace(scale, name=f"{scale.name}-reduced", rows=args.rows or scale.rows,
                        days=args.days or scale.days)
    return scale


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_header(scale: Scale, seed: int, runs: int) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{p} {_version(p)}" for p in
                         ("duckdb", "datafusion", "pyiceberg", "pyarrow", "psycopg"))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB RAM, "
                   f"load average at start {load}",
        "commit": commit or "unknown",
        "scale": f"{scale.name}: {scale.rows:,} rows over {scale.days} days, seed {seed}",
        "runs": f"{runs} timed cold runs per query after 1 warm-up (3 when the warm-up "
                f"took over {SLOW_WARMUP_S:.0f} s)",
        "versions": versions + f", python {platform.python_version()}",
    }


def needle_user(files: list[tuple[str, int, int]]) -> int:
    """A user that exists but is rare: the smallest id seen exactly once in the first file."""
    column = pq.read_table(local_path(files[0][0]), columns=["user_id"])["user_id"]
    counts = pc.value_counts(column).to_pylist()
    once = [item["values"] for item in counts if item["counts"] == 1]
    return int(min(once) if once else counts[0]["values"])


def shape_params(data: DataSet, files: list[tuple[str, int, int]]) -> Params:
    from benchmarks.figload import tier_boundary
    return Params(last_day=LAST_DAY, boundary=tier_boundary(data),
                  example_day=data.example_day(),
                  needle_user=needle_user(files), needle_id=max(1, data.scale.rows // 4),
                  rows_per_day=max(1, data.scale.rows // data.scale.days))


def cold_systems(fig: FigProcess, data: DataSet, files: list[str], example: Query,
                 report: RunReport, with_postgres: bool) -> list[System]:
    """Every system that can run, Fig first (route auto, then route cold, each set in its
    session, then route cold with the result cache off); the others go to report.skipped
    with why."""
    systems: list[System] = []
    reason = probe_fig_pgwire(fig.dsn(), example)
    if reason is None:
        systems += [FigPgwire(fig.dsn(), route="auto", server_pid=fig.process.pid),
                    FigPgwire(fig.dsn(), route="cold", server_pid=fig.process.pid),
                    FigPgwire(fig.dsn(), route="cold", server_pid=fig.process.pid,
                              result_cache=False)]
    else:
        report.skipped.append(("Fig over pgwire (routes auto and cold)", reason))
    engine_class, why = find_cold_engine()
    if engine_class is not None:
        try:
            systems.append(FigColdInProcess(engine_class, data.events()))
        except Exception as error:  # report whatever stops the engine from starting
            report.skipped.append(("Fig cold engine (in-process)", f"{type(error).__name__}: "
                                   f"{error}"))
    else:
        report.skipped.append(("Fig cold engine (in-process)", why))
    dimensions = {"countries": countries_table(), "users": users_table(data.seed)}
    for name, make in (("DuckDB", lambda: DuckDBSystem(files, dimensions)),
                       ("DataFusion", lambda: DataFusionSystem(files, data.root / "df-files",
                                                               dimensions))):
        try:
            systems.append(make())
        except ImportError as error:
            report.skipped.append((name, f"not importable: {error}"))
    if with_postgres:
        systems.append(PostgresSystem(fig.hot_dsn("peer")))
    return systems


def measure(system: System, query: Query, runs: int) -> ColdMeasure:
    result = ColdMeasure(query.name, system.name, system.is_fig, short=system.short)
    skip = system.query_skip_reason(query)
    if skip:
        result.skipped = skip
        return result
    try:
        system.reset_peak()
        started = time.perf_counter()
        rows = system.run(query)  # warm-up, not counted
        warmup_s = time.perf_counter() - started
        for _ in range(min(runs, 3) if warmup_s > SLOW_WARMUP_S else runs):
            started = time.perf_counter()
            rows = system.run(query)
            result.runs_ms.append((time.perf_counter() - started) * 1000)
        result.peak_mb = system.peak_mb()
        reading = system.reading(query)
    except Exception as error:  # a failing system is reported, the run goes on
        text = str(error).strip().splitlines()
        result.skipped = f"failed: {type(error).__name__}: {(text or [''])[0][:200]}"
        result.runs_ms = []
        return result
    result.rows = len(rows)
    result.bytes_read, result.bytes_note, result.pruning = (
        reading.bytes_read, reading.note, reading.pruning)
    result.digest = normalize(rows, ordered=query.compare == ORDERED)
    return result


def run_cold(fig: FigProcess, data: DataSet, runs: int, report: RunReport,
             shapes: set[str]) -> None:
    from benchmarks.pgload import ensure_postgres_peer, load_countries, load_users
    if data.layout == "fig":
        from benchmarks.figload import ensure_fig_layout
        info = ensure_fig_layout(fig, data)
        layout = ("tiered with fig.tier_table while empty, rows then COPY'd into hot Postgres "
                  "(one transaction per day) and streamed to Iceberg by Fig's CDC, retired from "
                  "hot by fig.run_retention up to the tier boundary, compacted by fig.compact: "
                  f"Fig's own layout; build {info}")
    else:
        info = ensure_iceberg(data)
        layout = ("partitioned by day(ts), appended one day at a time sorted by ts (pyiceberg, "
                  "zstd, row groups <= 131,072 rows) by the generator, imitating the layout of "
                  "Fig's CDC and compaction")
    print(f"  events table built in {info.get('seconds')} s (cached for later runs)")
    events = data.events()
    files = current_data_files(events)
    table_bytes = sum(size for _, size, _ in files)
    report.header["data"] = (f"{sum(n for _, _, n in files):,} events, {len(files)} data files, "
                             f"{table_bytes / 1e6:.0f} MB in Iceberg")
    report.header["layout"] = f"Iceberg catalog `fig` in Fig's data dir, public.events {layout}"
    load_countries(fig.hot_dsn())
    load_users(fig.hot_dsn(), data.seed)
    with_postgres = data.scale.rows <= POSTGRES_PEER_MAX_ROWS
    if with_postgres:
        seconds = ensure_postgres_peer(fig.hot_dsn(), fig.hot_dsn("peer"), data)
        if seconds:
            print(f"  postgres peer loaded and indexed in {seconds:.0f} s (cached)")
        load_users(fig.hot_dsn("peer"), data.seed)
    else:
        report.skipped.append(("Postgres, all rows", f"{data.scale.rows:,} rows exceed the "
                               f"{POSTGRES_PEER_MAX_ROWS:,} loaded within the time budget"))
    params = shape_params(data, files)
    queries = [*cold_queries(params), *star_queries(params)]
    systems = cold_systems(fig, data, [f for f, _, _ in files], queries[0], report,
                           with_postgres)
    try:
        for query in queries:
            if not shapes or query.name in shapes:
                run_shape(query, systems, runs, report)
        if data.layout == "fig":
            run_split(fig, data, systems, runs, report, shapes)
    finally:
        for system in systems:
            system.close()


def run_shape(query: Query, systems: list[System], runs: int, report: RunReport) -> None:
    """One shape on every system, its answers compared; the one place a shape is run."""
    report.add_query(query)
    measures = []
    for system in systems:
        print(f"  {query.name}: {system.name}", flush=True)
        measures.append(measure(system, query, runs))
    _check_agreement(query, measures)
    report.cold.extend(measures)


def _check_agreement(query: Query, measures: list[ColdMeasure]) -> None:
    """Compare every system's rows with Postgres's (the oracle), else with the first that ran:
    in order, as multisets, or (LIMIT without ORDER BY) by row count only, as the shape says.
    A disagreement is printed at once, with both answers, and kept for the report."""
    ran = [m for m in measures if not m.skipped]
    reference = next((m for m in ran if m.short == "postgres"), ran[0] if ran else None)
    if reference is None:
        return
    for m in ran:
        if query.compare == ROW_COUNT:
            m.agrees = m.rows == reference.rows
        else:
            m.agrees = m.digest == reference.digest
        if not m.agrees:
            m.mismatch = _describe_mismatch(query, m, reference)
            print(f"  !!! DISAGREEMENT on {query.name}: {m.system} vs {reference.system}\n"
                  f"{m.mismatch}", flush=True)
    for m in ran:
        m.digest = []


def _describe_mismatch(query: Query, got: ColdMeasure, reference: ColdMeasure) -> str:
    """Row counts and the first rows that differ, enough to reproduce and report the bug."""
    lines = [f"    SQL: {query.sql}"]
    if query.peer_sql:
        lines.append(f"    DuckDB and DataFusion's SQL: {query.peer_sql}")
    lines.append(f"    {got.rows} rows vs {reference.rows} rows ({query.compare} comparison)")
    if query.compare != ROW_COUNT:
        differ = [i for i, (a, b) in enumerate(zip(got.digest, reference.digest, strict=False))
                  if a != b]
        at = differ[0] if differ else min(len(got.digest), len(reference.digest))
        lines += [f"    first difference at row {at}:",
                  f"      {got.system}: {got.digest[at:at + 3]}",
                  f"      {reference.system}: {reference.digest[at:at + 3]}"]
    return "\n".join(lines)


def run_split(fig: FigProcess, data: DataSet, systems: list[System], runs: int,
              report: RunReport, shapes: set[str]) -> None:
    """A daily aggregate spanning the tier boundary, through Fig's planner (route auto), with
    its cold and hot parts alone, against Postgres holding every row."""
    from benchmarks.figload import tier_boundary
    peer = next((s for s in systems if isinstance(s, PostgresSystem)), None)
    if not any(isinstance(s, FigPgwire) for s in systems) or peer is None:
        report.skipped.append(("split queries", "need Fig over pgwire and the Postgres peer"))
        return
    boundary = tier_boundary(data)
    hot_days = (data.scale.days + 1) // 2
    start = boundary - dt.timedelta(days=max(1, hot_days // 2))
    auto = [s for s in systems if isinstance(s, FigPgwire) and s.route == "auto"]
    for query in split_queries(start, boundary):
        if not shapes or query.name in shapes:
            run_shape(query, [*auto, peer], runs, report)


def run_hot(fig: FigProcess, scale: Scale, seconds: int | None, report: RunReport) -> None:
    """pgbench and a psycopg loop through Fig, a bare uvloop relay and direct to Postgres."""
    relay = BareRelay(free_port(), "127.0.0.1", fig.hot_port)
    try:
        _run_hot(fig, scale, seconds, report, relay)
    finally:
        relay.stop()


def _run_hot(fig: FigProcess, scale: Scale, seconds: int | None, report: RunReport,
             relay: BareRelay) -> None:
    from benchmarks.hotpath import (
        SCRIPTS,
        PgbenchResult,
        find_pgbench,
        median_result,
        pgbench_init,
        run_loop,
        run_pgbench,
    )
    from fig_server.hot.embedded import find_bin_dir
    pgbench = find_pgbench(find_bin_dir(""))
    pgbench_scale = {"tiny": 1, "full": 50}.get(scale.name.split("-")[0], 10)
    seconds = seconds or {"tiny": 2, "full": 10}.get(scale.name.split("-")[0], 4)
    targets = {"fig": fig.dsn("pgbench"), "bare-relay": relay.dsn("pgbench"),
               "direct-tcp": fig.hot_tcp_dsn("pgbench")}
    if pgbench is None:
        report.skipped.append(("pgbench", "pgbench not found on PATH or in pg_config --bindir"))
    else:
        print(f"  pgbench -i -s {pgbench_scale}", flush=True)
        pgbench_init(pgbench, fig.hot_dsn(), fig.hot_dsn("pgbench"), pgbench_scale)
        report.header["hot data"] = (
            f"pgbench scale {pgbench_scale} ({pgbench_scale * 100_000:,} accounts); per "
            f"script and client count, {HOT_REPEATS} runs of {seconds} s alternating Fig and "
            "direct after a 2 s warm-up of each; the run with the median tps gives p50/p99")
        for script in SCRIPTS:
            for clients in (1, 16, 64):
                print(f"  pgbench {script} -c {clients}", flush=True)
                runs: dict[str, list[PgbenchResult]] = {target: [] for target in targets}
                for target, dsn in targets.items():
                    run_pgbench(pgbench, dsn, target, clients, 2, script)  # warm-up
                for _ in range(HOT_REPEATS):
                    for target, dsn in targets.items():
                        runs[target].append(
                            run_pgbench(pgbench, dsn, target, clients, seconds, script))
                report.pgbench.extend(median_result(r) for r in runs.values())
    queries = 1000 if scale.name.startswith("tiny") else 5000
    for target, dsn in targets.items():
        print(f"  psycopg loop {target}", flush=True)
        report.loops.append(run_loop(dsn, target, queries, pgbench_scale * 100_000))


def build_fig_layout(fig: FigProcess, data: DataSet,
                     report: RunReport) -> tuple[FigProcess, DataSet]:
    """Build (or reuse) Fig's own layout; when Fig cannot, say why and switch to the
    generator's layout on a fresh Fig, so the run still compares every system it can."""
    from benchmarks.figload import LayoutError, ensure_fig_layout
    print("building the events table through Fig (first run only)", flush=True)
    try:
        ensure_fig_layout(fig, data)
        return fig, data
    except (LayoutError, psycopg.Error) as error:
        report.skipped.append(("Fig's own layout (hot + fig.tier_table + compaction)",
                               f"failed, used the generator's layout instead: {error}"))
        print(f"  failed ({error}); falling back to the generator's layout", flush=True)
    fig.stop()
    data = DataSet(data.scale, data.seed, "generator")
    ensure_iceberg(data)
    return start_fig(data.fig_data_dir), data


def choose_layout(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    return "fig" if importlib.util.find_spec("fig_server.cdc.service") else "generator"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - set(WORKLOADS)
    if unknown:
        print(f"unknown workloads: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    scale = chosen_scale(args)
    data = DataSet(scale, args.seed, choose_layout(args.layout))
    report = RunReport(header=machine_header(scale, args.seed, args.runs))
    data.root.mkdir(parents=True, exist_ok=True)
    data.root.chmod(0o755)
    if "cold" in only and data.layout == "generator":
        print("preparing data", flush=True)
        ensure_iceberg(data)
    print("starting fig serve", flush=True)
    fig = start_fig(data.fig_data_dir)
    started, start_load = time.perf_counter(), os.getloadavg()[0]
    try:
        if "cold" in only and data.layout == "fig":
            fig, data = build_fig_layout(fig, data, report)
        if "cold" in only:
            print("cold workloads", flush=True)
            run_cold(fig, data, args.runs, report,
                     {s.strip() for s in args.shapes.split(",") if s.strip()})
        if "hot" in only:
            print("hot path", flush=True)
            run_hot(fig, scale, args.hot_seconds, report)
        if "cdc" in only:
            from benchmarks.cdc import run_cdc
            print("cdc", flush=True)
            run_cdc(fig, scale, report)
    finally:
        fig.stop()
    report.header["duration"] = f"{time.perf_counter() - started:.0f} s of workloads"
    report.header["machine"] += ", at end " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cores = os.cpu_count() or 1
    # The run itself keeps about `cores` busy; beyond twice that, others were running too.
    if start_load > cores or os.getloadavg()[1] > 2 * cores:
        report.header["warning"] = (
            "other jobs saturated the machine during this run (load average above the core "
            "count): absolute timings are inflated and noisy; compare systems within a query")
    print()
    print_report(report)
    write_results(report, "" if only == set(WORKLOADS) else "-".join(sorted(only)))
    return 0


def write_results(report: RunReport, subset: str) -> None:
    """results/<date>.md for a full run; a run of some workloads only gets its own name."""
    RESULTS.mkdir(exist_ok=True)
    stem = dt.date.today().isoformat() + (f"-{subset}" if subset else "")
    charts = write_charts(report, RESULTS, stem)
    markdown = RESULTS / f"{stem}.md"
    write_markdown(report, markdown, charts)
    raw = {"header": report.header, "queries": report.queries, "peer_sql": report.peer_sql,
           "star": report.star,
           "cold": [asdict(m) for m in report.cold],
           "pgbench": [asdict(r) for r in report.pgbench],
           "loops": [asdict(r) for r in report.loops], "cdc": report.cdc,
           "skipped": report.skipped}
    (RESULTS / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"\nwrote {markdown.relative_to(REPO)} and {len(charts)} charts")


if __name__ == "__main__":
    sys.exit(main())
