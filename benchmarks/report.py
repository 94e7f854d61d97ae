"""Turn one run's measurements into a printed table, a Markdown report and PNG charts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.hotpath import LoopResult, PgbenchResult
from benchmarks.workloads import ROW_COUNT, Query


@dataclass
class ColdMeasure:
    """One system on one query: timed runs (ms), what it read, whether its rows agree."""

    query: str
    system: str
    is_fig: bool
    runs_ms: list[float] = field(default_factory=list)
    rows: int = 0
    bytes_read: int | None = None
    bytes_note: str = ""
    pruning: dict[str, Any] = field(default_factory=dict)
    agrees: bool | None = None
    skipped: str = ""
    short: str = ""
    mismatch: str = ""  # how the rows differ from the reference's, when they do
    digest: list[tuple[str, ...]] = field(default_factory=list, repr=False)
    # The server's peak resident memory over the shape's runs (Fig over pgwire: `fig serve`).
    peak_mb: float | None = None

    @property
    def median_ms(self) -> float:
        if not self.runs_ms:
            return math.nan
        ordered = sorted(self.runs_ms)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class RunReport:
    """Everything one `python -m benchmarks.run` measured, and what it could not."""

    header: dict[str, str]
    cold: list[ColdMeasure] = field(default_factory=list)
    pgbench: list[PgbenchResult] = field(default_factory=list)
    loops: list[LoopResult] = field(default_factory=list)
    cdc: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    queries: dict[str, str] = field(default_factory=dict)
    peer_sql: dict[str, str] = field(default_factory=dict)  # DuckDB and DataFusion's spelling
    star: list[str] = field(default_factory=list)  # the star-schema shapes
    row_count_only: list[str] = field(default_factory=list)  # LIMIT without ORDER BY

    def add_query(self, query: Query) -> None:
        self.queries[query.name] = query.sql
        if query.peer_sql:
            self.peer_sql[query.name] = query.peer_sql
        if query.star:
            self.star.append(query.name)
        if query.compare == ROW_COUNT:
            self.row_count_only.append(query.name)


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def _spread(runs: list[float]) -> str:
    return f"{_ms(min(runs))}-{_ms(max(runs))}" if runs else "-"


def _pruning(p: dict[str, Any]) -> str:
    if "files_total" not in p:
        return f"route {p['route']}" if "route" in p else ""
    text = "" if "route" not in p else f"route {p['route']}: "
    text += (f"files {p['files_kept']}/{p['files_total']}, "
            f"row groups {p.get('row_groups_kept', '?')}/{p.get('row_groups_total', '?')}")
    if p.get("bytes_total"):
        text += f", read {100 * (p.get('bytes_read') or 0) / p['bytes_total']:.2f}% of bytes"
    if p.get("stopped_early"):
        text += ", stopped early"
    return text


def cold_rows(report: RunReport) -> list[list[str]]:
    """Table rows: query, system, median, spread, Fig/peer ratio, bytes, rows, agree, pruning."""
    rows = []
    for query in report.queries:
        measures = [m for m in report.cold if m.query == query]
        fig = next((m for m in measures if m.is_fig and m.runs_ms), None)
        for m in measures:
            if m.skipped:
                rows.append([query, m.system, "skipped", "", "", "", "", "", "", m.skipped])
                continue
            ratio = "" if fig is None or m.is_fig else f"{fig.median_ms / m.median_ms:.2f}x"
            agree = {True: "yes", False: "NO", None: "-"}[m.agrees]
            peak = "" if m.peak_mb is None else f"{m.peak_mb:,.0f}"
            rows.append([query, m.system, _ms(m.median_ms), _spread(m.runs_ms), ratio,
                         _bytes(m.bytes_read), str(m.rows), agree, peak, _pruning(m.pruning)])
    return rows


COLD_HEADER = ["query", "system", "median ms", "min-max ms", "Fig/peer", "bytes read", "rows",
               "same rows", "server peak MB", "Fig pruning"]
PGBENCH_HEADER = ["script", "target", "clients", "median tps", "tps min-max", "p50 ms",
                  "p99 ms", "transactions"]
LOOP_HEADER = ["target", "queries", "p50 ms", "p99 ms", "mean ms"]


def pgbench_rows(report: RunReport) -> list[list[str]]:
    return [[r.script, r.target, str(r.clients), f"{r.tps:.0f}",
             f"{min(r.tps_runs, default=r.tps):.0f}-{max(r.tps_runs, default=r.tps):.0f}",
             f"{r.p50_ms:.3f}",
             f"{r.p99_ms:.3f}", str(r.transactions)] for r in report.pgbench]


def loop_rows(report: RunReport) -> list[list[str]]:
    return [[r.target, str(r.queries), f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.mean_ms:.3f}"]
            for r in report.loops]


def _find(report: RunReport, query: str, fig: bool, prefix: str = "") -> ColdMeasure | None:
    return next((m for m in report.cold if m.query == query and m.is_fig == fig and m.runs_ms
                 and m.system.startswith(prefix)), None)


SHAPE_SYSTEMS = (("fig-auto", "Fig auto"), ("fig-cold", "Fig cold"),
                 ("fig-cold-uncached", "Fig cold uncached"),
                 ("fig-inproc", "Fig engine"), ("duckdb", "DuckDB"),
                 ("datafusion", "DataFusion"), ("postgres", "Postgres"))
RATIOS = (("fig-auto", "duckdb"), ("fig-cold", "duckdb"), ("fig-cold-uncached", "duckdb"),
          ("fig-auto", "postgres"))
_LABEL = dict(SHAPE_SYSTEMS)


def _timed(report: RunReport, query: str) -> dict[str, ColdMeasure]:
    return {m.short: m for m in report.cold if m.query == query}


def _ratio(measures: dict[str, ColdMeasure], fig: str, peer: str) -> float:
    a, b = measures.get(fig), measures.get(peer)
    if a is None or b is None or not a.runs_ms or not b.runs_ms:
        return math.nan
    return a.median_ms / b.median_ms


def shape_header() -> list[str]:
    return (["shape"] + [f"{label} ms" for _, label in SHAPE_SYSTEMS]
            + [f"{_LABEL[f]}/{_LABEL[p]}" for f, p in RATIOS] + ["answers"])


def shape_rows(report: RunReport) -> list[list[str]]:
    """One row per shape: each system's median, Fig's ratios, and whether all answers agree."""
    rows = []
    for query in report.queries:
        measures = _timed(report, query)
        cells = [query + (" *" if query in report.star else "")]
        for short, _ in SHAPE_SYSTEMS:
            m = measures.get(short)
            cells.append("" if m is None else ("skip" if m.skipped else _ms(m.median_ms)))
        for fig, peer in RATIOS:
            ratio = _ratio(measures, fig, peer)
            cells.append("" if math.isnan(ratio) else f"{ratio:.2f}x")
        wrong = [_LABEL.get(m.short, m.system) for m in measures.values() if m.agrees is False]
        if wrong:
            cells.append("DISAGREE: " + ", ".join(wrong))
        else:
            cells.append("agree (row count)" if query in report.row_count_only else "agree")
        rows.append(cells)
    return rows


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def ratio_summary(report: RunReport) -> list[str]:
    """Geometric means of Fig/DuckDB over every shape both ran, and of Fig/Postgres over the
    star shapes, for each route; then the count of disagreements."""
    lines = []
    groups = (("duckdb", list(report.queries), "shapes"),
              ("postgres", report.star, "star shapes"))
    for peer, names, what in groups:
        for fig in ("fig-auto", "fig-cold", "fig-cold-uncached"):
            ratios = [r for r in (_ratio(_timed(report, q), fig, peer) for q in names)
                      if not math.isnan(r)]
            if ratios:
                lines.append(f"Geometric mean over {len(ratios)} {what}: {_LABEL[fig]} / "
                             f"{_LABEL[peer]} = {geometric_mean(ratios):.2f}x")
    wrong = [m for m in report.cold if m.agrees is False]
    compared = {m.query for m in report.cold if m.agrees is not None}
    if wrong:
        lines.append(f"!!! {len(wrong)} answers DISAGREE with the reference, on "
                     f"{len({m.query for m in wrong})} of {len(compared)} shapes (see below)")
    else:
        lines.append(f"Every answer agrees with the reference on all {len(compared)} shapes")
    return lines


def disagreements(report: RunReport) -> list[str]:
    return [f"{m.query}: {m.system}\n{m.mismatch}" for m in report.cold if m.agrees is False]


def cold_summary(report: RunReport) -> list[str]:
    """The figures issue 4 asks for: bytes skipped and ratios against DuckDB."""
    lines = []
    fig, duck = _find(report, "example", True), _find(report, "example", False, "DuckDB")
    if fig is not None:
        p = fig.pruning
        if p.get("bytes_total"):
            skipped = 100 * (1 - (p.get("bytes_read") or 0) / p["bytes_total"])
            lines.append(f"Example query: {fig.system} skipped {skipped:.2f}% of the table's "
                         f"bytes (target >= 99%)")
        if duck is not None:
            lines.append(f"Example query: {fig.system} / DuckDB = "
                         f"{fig.median_ms / duck.median_ms:.2f}x (target <= 0.5x)")
    fig, duck = _find(report, "groupby", True), _find(report, "groupby", False, "DuckDB")
    if fig is not None and duck is not None:
        lines.append(f"Full GROUP BY: {fig.system} / DuckDB = "
                     f"{fig.median_ms / duck.median_ms:.2f}x (target <= 1.5x)")
    return lines


def hot_summary(report: RunReport) -> list[str]:
    """The two figures issue 2 asks for: added p50 latency, and 16-client throughput share."""
    lines = []
    loops = {r.target: r for r in report.loops}
    if "fig" in loops and "direct-tcp" in loops:
        added = loops["fig"].p50_ms - loops["direct-tcp"].p50_ms
        lines.append(f"Added p50 latency through Fig (psycopg loop, PK SELECT): {added:.3f} ms")
    bench = {(r.script, r.target, r.clients): r for r in report.pgbench}
    for script, clients in sorted({(r.script, r.clients) for r in report.pgbench}):
        fig = bench.get((script, "fig", clients))
        direct = bench.get((script, "direct-tcp", clients))
        relay = bench.get((script, "bare-relay", clients))
        if fig and direct and direct.tps:
            versus_relay = (f"{100 * fig.tps / relay.tps:.0f}% of a bare uvloop relay "
                            f"({relay.tps:.0f}), " if relay and relay.tps else "")
            lines.append(f"pgbench {script} -M extended, {clients} clients: Fig "
                         f"{fig.tps:.0f} tps = {versus_relay}"
                         f"{100 * fig.tps / direct.tps:.0f}% of direct TCP "
                         f"({direct.tps:.0f}); p50 {fig.p50_ms:.3f} vs {direct.p50_ms:.3f} ms")
    return lines


CDC_TITLES = {
    "ceiling": "pgoutput decode ceiling (same rows, 10k-row transactions)",
    "ingest": "sustained ingest through Fig's CDC (10k-row transactions, until fig.sync())",
    "lag": "lag at a fixed rate (one-row transactions)",
    "retention": "retention throughput (rows moved out of hot by fig.run_retention)",
}


def cdc_lines(report: RunReport) -> list[str]:
    lines = []
    for key, value in report.cdc.items():
        if isinstance(value, dict):
            details = ", ".join(f"{k} = {v:,}" if isinstance(v, int) else f"{k} = {v}"
                                for k, v in value.items())
            lines.append(f"{CDC_TITLES.get(key, key)}: {details}")
        else:
            lines.append(f"{key}: {value}")
    return lines


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def print_report(report: RunReport) -> None:
    for key, value in report.header.items():
        print(f"{key}: {value}")
    if report.cold:
        print("\nCold, federated and star (*) shapes: median ms per system, Fig's ratios "
              "(< 1: Fig faster); per-system bytes and pruning in the Markdown report\n"
              + text_table(shape_header(), shape_rows(report)))
        for line in [*ratio_summary(report), *cold_summary(report)]:
            print(line)
        for text in disagreements(report):
            print("\n!!! DISAGREEMENT " + text)
    if report.pgbench:
        print("\nHot path: pgbench\n" + text_table(PGBENCH_HEADER, pgbench_rows(report)))
    if report.loops:
        print("\nHot path: psycopg loop\n" + text_table(LOOP_HEADER, loop_rows(report)))
    for line in hot_summary(report):
        print(line)
    if report.cdc:
        print("\nCDC")
        for line in cdc_lines(report):
            print(f"  {line}")
    if report.skipped:
        print("\nSkipped")
        for what, why in report.skipped:
            print(f"  {what}: {why}")


def write_markdown(report: RunReport, path: Path, charts: list[Path]) -> None:
    parts = [f"# Fig benchmarks, {report.header.get('date', '')}", ""]
    parts += [f"- **{key}**: {value}" for key, value in report.header.items()]
    if report.cold:
        parts += ["", "## Cold queries", "",
                  "Median of the timed runs after one untimed warm-up; bytes read come from a "
                  "separate, untimed run with each system's own instrumentation (Fig: its scan "
                  "statistics; DuckDB: profiler io.total_bytes_read; DataFusion: EXPLAIN ANALYZE "
                  "bytes_scanned; Postgres: EXPLAIN BUFFERS shared+temp buffer accesses x 8 KiB, "
                  "so a page visited twice counts twice). Fig over pgwire runs each shape three "
                  "times, in a session with fig.route = 'auto' (Fig's planner picks hot, cold or "
                  "both), one with fig.route = 'cold', and one with fig.route = 'cold' and "
                  "fig.result_cache = off (every run reads its files: the columns 'Fig cold "
                  "uncached' compare engines; the others show what a dashboard re-running a "
                  "statement sees, its cold tasks answered from results the warm-up kept); every "
                  "session is in TimeZone UTC. Ratios divide Fig's median by the peer's: < 1 "
                  "means Fig is faster; the per-system table's Fig/peer uses the first Fig that "
                  "ran (route auto over pgwire when it ran). For Fig over pgwire, bytes are its "
                  "cold scans' (EXPLAIN ANALYZE), not the hot part of a SPLIT. Answers are "
                  "compared with Postgres's (or, without Postgres, the first system that ran): "
                  "row by row in order where ORDER BY is a total order, as multisets otherwise, "
                  "and by row count alone for LIMIT without ORDER BY.", ""]
        parts += [markdown_table(shape_header(), shape_rows(report)), ""]
        parts += [f"- {line}" for line in [*ratio_summary(report), *cold_summary(report)]]
        if disagreements(report):
            parts += ["", "### Disagreements", ""]
            parts += [f"```\n{text}\n```" for text in disagreements(report)]
        parts += ["", "### Per system", "", markdown_table(COLD_HEADER, cold_rows(report))]
        parts += ["", "Queries (* star schema; DuckDB and DataFusion get the peer spelling "
                  "where one is given, the same question without Metabase's schema-qualified "
                  "names):", ""]
        for name, sql in report.queries.items():
            parts.append(f"- `{name}`{' *' if name in report.star else ''}: `{sql}`")
            if name in report.peer_sql:
                parts.append(f"  - peers: `{report.peer_sql[name]}`")
    if report.pgbench or report.loops:
        parts += ["", "## Hot path", ""]
        if report.pgbench:
            parts += [markdown_table(PGBENCH_HEADER, pgbench_rows(report)), ""]
        if report.loops:
            parts += [markdown_table(LOOP_HEADER, loop_rows(report)), ""]
        parts += [f"- {line}" for line in hot_summary(report)]
    if report.cdc:
        parts += ["", "## CDC", ""]
        parts += [f"- {line}" for line in cdc_lines(report)]
    if report.skipped:
        parts += ["", "## Not measured in this run", ""]
        parts += [f"- **{what}**: {why}" for what, why in report.skipped]
    if charts:
        parts += ["", "## Charts", ""]
        parts += [f"![{chart.stem}]({chart.name})" for chart in charts]
    path.write_text("\n".join(parts) + "\n")


def _grouped_bars(ax: Any, report: RunReport, value: Any, label: Any, log: bool) -> None:
    """One group per query holding only the systems that took part in it; a colour per
    system across groups; skipped systems marked in grey."""
    queries = list(report.queries)
    systems = list(dict.fromkeys(m.system for m in report.cold))
    colors = {system: plt.get_cmap("tab10")(index) for index, system in enumerate(systems)}
    width = 0.8 / max(1, max(len({m.system for m in report.cold if m.query == q})
                             for q in queries))
    for position, query in enumerate(queries):
        present = [m for m in report.cold if m.query == query]
        for index, m in enumerate(present):
            x = position + (index - (len(present) - 1) / 2) * width
            number = None if m.skipped else value(m)
            if number is None or (isinstance(number, float) and math.isnan(number)):
                ax.annotate("skipped" if m.skipped else "n/a", (x, 0),
                            xycoords=("data", "axes fraction"), xytext=(0, 4),
                            textcoords="offset points", rotation=90, ha="center",
                            va="bottom", fontsize=7, color="grey")
                continue
            bars = ax.bar([x], [number], width, color=colors[m.system])
            ax.bar_label(bars, labels=[label(number)], fontsize=6, padding=1, rotation=90)
    ax.set_xticks(range(len(queries)), queries, rotation=60, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.margins(y=0.15)
    ax.grid(axis="y", which="major", alpha=0.3)
    handles = [matplotlib.patches.Patch(color=colors[s], label=s) for s in systems]
    # Above the plot: below it, the legend would cover the rotated shape names.
    ax.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=min(len(systems), 6), frameon=False)


def write_charts(report: RunReport, folder: Path, stem: str) -> list[Path]:
    charts = []
    if report.cold:
        fig, ax = plt.subplots(figsize=(max(11.0, 0.6 * len(report.queries)), 6))
        _grouped_bars(ax, report, lambda m: m.median_ms,
                      lambda h: "" if math.isnan(h) else _ms(h), log=True)
        ax.set_ylabel("median latency, ms (log scale)")
        ax.set_title(f"Cold queries: latency per system ({report.header.get('data', '')})", pad=28)
        fig.tight_layout()
        charts.append(folder / f"{stem}-cold-latency.png")
        fig.savefig(charts[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(max(11.0, 0.6 * len(report.queries)), 6))
        _grouped_bars(ax, report, lambda m: m.bytes_read,
                      lambda h: "" if math.isnan(h) else _bytes(int(h)), log=True)
        ax.set_ylabel("bytes read (log scale)")
        ax.set_title("Cold queries: bytes read per system (Postgres: buffer accesses x 8 KiB)",
                     pad=28)
        fig.tight_layout()
        charts.append(folder / f"{stem}-cold-bytes.png")
        fig.savefig(charts[-1], dpi=110)
        plt.close(fig)
    if report.pgbench:
        charts.append(_hot_chart(report, folder / f"{stem}-pgbench.png"))
    return charts


def _hot_chart(report: RunReport, path: Path) -> Path:
    scripts = list(dict.fromkeys(r.script for r in report.pgbench))
    fig, axes = plt.subplots(len(scripts), 2, figsize=(11, 3.8 * len(scripts)), squeeze=False)
    for (left, right), script in zip(axes, scripts, strict=True):
        for index, target in enumerate(dict.fromkeys(r.target for r in report.pgbench)):
            runs = sorted((r for r in report.pgbench if r.target == target and r.script == script),
                          key=lambda r: r.clients)
            clients, color = [r.clients for r in runs], f"C{index}"
            left.plot(clients, [r.tps for r in runs], marker="o", color=color, label=target)
            right.plot(clients, [r.p50_ms for r in runs], marker="o", color=color,
                       label=f"{target} p50")
            right.plot(clients, [r.p99_ms for r in runs], marker="x", linestyle="--",
                       color=color, label=f"{target} p99")
        left.set(xscale="log", xlabel="clients", ylabel="transactions/s", ylim=(0, None),
                 title=f"pgbench {script} -M extended: throughput")
        right.set(xscale="log", yscale="log", xlabel="clients", ylabel="latency, ms",
                  title=f"pgbench {script}: latency")
        for ax in (left, right):
            ax.set_xticks([1, 16, 64], ["1", "16", "64"])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
