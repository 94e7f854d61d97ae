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
    digest: list[tuple[str, ...]] = field(default_factory=list, repr=False)

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
                rows.append([query, m.system, "skipped", "", "", "", "", "", m.skipped])
                continue
            ratio = "" if fig is None or m.is_fig else f"{fig.median_ms / m.median_ms:.2f}x"
            agree = {True: "yes", False: "NO", None: "-"}[m.agrees]
            rows.append([query, m.system, _ms(m.median_ms), _spread(m.runs_ms), ratio,
                         _bytes(m.bytes_read), str(m.rows), agree, _pruning(m.pruning)])
    return rows


COLD_HEADER = ["query", "system", "median ms", "min-max ms", "Fig/peer", "bytes read", "rows",
               "same rows", "Fig pruning"]
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
        if fig and direct and direct.tps:
            lines.append(f"pgbench {script} -M extended, {clients} clients: Fig "
                         f"{fig.tps:.0f} tps = {100 * fig.tps / direct.tps:.0f}% of direct TCP "
                         f"({direct.tps:.0f}); p50 {fig.p50_ms:.3f} vs {direct.p50_ms:.3f} ms")
    return lines


CDC_TITLES = {
    "ceiling": "pgoutput decode ceiling (same rows, 10k-row transactions)",
    "ingest": "sustained ingest through Fig's CDC (10k-row transactions, until fig.sync())",
    "lag": "lag at a fixed rate (one-row transactions)",
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
        print("\nCold queries\n" + text_table(COLD_HEADER, cold_rows(report)))
        for line in cold_summary(report):
            print(line)
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
                  "statistics; DuckDB: profiler io.total_bytes_read; DataFusion: EXPLAIN "
                  "ANALYZE bytes_scanned; Postgres: EXPLAIN BUFFERS shared+temp buffer accesses x "
                  "8 KiB, so a page visited twice counts twice). "
                  "Fig/peer divides Fig's median (over pgwire when it ran, else the in-process "
                  "engine) by the peer's: < 1 means Fig is faster. For Fig over pgwire, bytes "
                  "are its cold scans' (EXPLAIN ANALYZE), not the hot part of a SPLIT. "
                  "\"same rows\" compares every system's "
                  "result with Postgres's (or, without Postgres, the first system that ran).", ""]
        parts.append(markdown_table(COLD_HEADER, cold_rows(report)))
        parts += [""] + [f"- {line}" for line in cold_summary(report)]
        parts += ["", "Queries:", ""]
        parts += [f"- `{name}`: `{sql}`" for name, sql in report.queries.items()]
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
    ax.set_xticks(range(len(queries)), queries)
    if log:
        ax.set_yscale("log")
        ax.margins(y=0.15)
    ax.grid(axis="y", which="major", alpha=0.3)
    handles = [matplotlib.patches.Patch(color=colors[s], label=s) for s in systems]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08),
              ncol=min(len(systems), 4), frameon=False)


def write_charts(report: RunReport, folder: Path, stem: str) -> list[Path]:
    charts = []
    if report.cold:
        fig, ax = plt.subplots(figsize=(11, 5))
        _grouped_bars(ax, report, lambda m: m.median_ms,
                      lambda h: "" if math.isnan(h) else _ms(h), log=True)
        ax.set_ylabel("median latency, ms (log scale)")
        ax.set_title(f"Cold queries: latency per system ({report.header.get('data', '')})")
        fig.tight_layout()
        charts.append(folder / f"{stem}-cold-latency.png")
        fig.savefig(charts[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(11, 5))
        _grouped_bars(ax, report, lambda m: m.bytes_read,
                      lambda h: "" if math.isnan(h) else _bytes(int(h)), log=True)
        ax.set_ylabel("bytes read (log scale)")
        ax.set_title("Cold queries: bytes read per system (Postgres: buffer accesses x 8 KiB)")
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
