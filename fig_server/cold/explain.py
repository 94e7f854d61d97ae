"""EXPLAIN [ANALYZE] text for a cold query: route, cold part, pruning per level, execution."""

from __future__ import annotations

from pyiceberg.expressions import AlwaysTrue

from fig_server.cold.pruner import ScanSpec
from fig_server.cold.query import QueryPlan
from fig_server.cold.units import ScanStats


def explain_lines(plan: QueryPlan, scans: list[ScanSpec], stats: ScanStats,
                  analyze: bool) -> list[str]:
    lines = ["Route: COLD"]
    for part, scan in zip(plan.parts, scans, strict=True):
        snapshot = scan.snapshot.snapshot_id if scan.snapshot is not None else "none"
        lines.append(f"Cold Scan on {scan.name} (snapshot {snapshot}, plan {plan.kind})")
        if not isinstance(scan.row_filter, AlwaysTrue):
            lines.append(f"  Pruning filter: {scan.row_filter}")
        lines.append(f"  Columns: {', '.join(f.name for f in scan.fields) or '(none)'}")
        lines.append(f"  Worker SQL: {part.worker_sql}")
        if scan.order is not None:
            direction = "DESC" if scan.order.desc else "ASC"
            lines.append(f"  Early termination: ORDER BY {scan.order.field.name} {direction} "
                         f"LIMIT {scan.order.limit} (column bounds of files and row groups)")
    lines.append(f"  Manifests: {stats.manifests_kept} of {stats.manifests_total} survived")
    lines.append(f"  Files: {stats.files_kept} of {stats.files_total} survived")
    if stats.files_from_metadata:
        lines.append(f"  Counted from manifests (not read): {stats.files_from_metadata} files")
    lines.append(f"  Row groups: {stats.row_groups_kept} of {stats.row_groups_total} survived "
                 "(in files that survived)")
    lines.append(f"  Estimated bytes: {stats.bytes_estimated} of {stats.bytes_total} "
                 f"({_percent(stats.bytes_estimated, stats.bytes_total)})")
    lines.append(f"Coordinator: {plan.final_sql}")
    if analyze:
        lines.append(f"Work units run: {stats.units_run} of {stats.units_planned} planned")
        if stats.units_probed:
            lines.append(f"Late materialization: {stats.units_skipped} of "
                         f"{stats.units_probed} row-group units had no row passing the filter "
                         "(only its columns read)")
        if stats.units_cached:
            lines.append(f"Result cache: {stats.units_cached} of {stats.units_run} units "
                         "answered from results kept by earlier statements (not read)")
        lines.append(f"Bytes read: {stats.bytes_read} of {stats.bytes_total} "
                     f"({_percent(stats.bytes_read, stats.bytes_total)})")
        if stats.requests:
            lines.append(f"Storage reads: {stats.requests} requests, "
                         f"{stats.bytes_fetched} bytes fetched")
        if stats.stopped_early:
            lines.append(f"Stopped early: yes, at {stats.stopped_after_ms:.1f} ms")
        else:
            lines.append("Stopped early: no")
        lines.append(f"Planning time: {stats.plan_ms:.1f} ms")
        lines.append(f"Execution time: {stats.exec_ms:.1f} ms")
    else:
        lines.append(f"Planning time: {stats.plan_ms:.1f} ms")
    return lines


def _percent(part: int, total: int) -> str:
    return f"{100.0 * part / total:.2f}%" if total else "n/a"
