"""`fig status`: the dashboard's health summary of a running fig serve, as text for a terminal."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 10.0


def endpoint_url(data_dir: Path, url: str | None) -> str:
    """The endpoint named, or the one the fig serve of data_dir wrote to its server.json."""
    if url:
        return url if url.endswith("/") else url + "/"
    state_file = data_dir / "server.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise LookupError(f"no fig serve is running on {data_dir} (no {state_file})") from None
    found = state.get("metrics_url")
    if not found:
        raise LookupError(f"the fig serve on {data_dir} has no metrics endpoint "
                          "([metrics] enabled = false, or its port was taken)")
    return str(found)


def fetch_health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/health", timeout=TIMEOUT_S) as response:
        document: dict[str, Any] = json.load(response)
    return document


def print_status(data_dir: Path, url: str | None, as_json: bool = False) -> int:
    try:
        base = endpoint_url(data_dir, url)
        health = fetch_health(base)
    except (LookupError, OSError, urllib.error.URLError, ValueError) as exc:
        print(f"fig status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(health, indent=2) if as_json else render(health, base))
    return 0


def render(health: dict[str, Any], url: str) -> str:
    s = health["summary"]
    lines = [
        f"Fig Platform Health ({url}, last {_duration(s['window_s'])})",
        f"  Hot storage:        {_pct(s['hot_fast_pct'])} of {s['hot_statements']} statements "
        f"in < 50 ms (p50 {_num(s['hot_p50_ms'])} ms, p95 {_num(s['hot_p95_ms'])} ms, "
        f"p99 {_num(s['hot_p99_ms'])} ms)",
        f"  CDC lag:            {_num(s['cdc_lag_s'])} s, {_num(s['cdc_lag_bytes'])} bytes"
        f"{'' if s['cdc_slot_active'] else ' (slot inactive)'}",
        f"  Cold query avg:     {_num(s['cold_avg_s'])} s over {s['cold_statements']} statements",
        f"  Pruning efficiency: {_pct(s['pruned_pct'])} (bytes skipped)",
        f"  Active workers:     {s['workers_busy']} / {s['workers']}",
        f"  Cost (today):       ${s['cost_today_usd']:.4f}",
        f"  Connections:        {s['connections']}",
    ]
    if s.get("paused_tables"):
        lines.append(f"  Paused tables:      {s['paused_tables']}")
    if s.get("cdc_error"):
        lines.append(f"  Last CDC error:     {s['cdc_error']}")
    if health.get("error"):
        lines.append(f"  Error:              {health['error']}")
    if health["tables"]:
        lines += ["", "Tiered tables:",
                  f"  {'table':<28} {'state':<9} {'boundary':<26} {'hot rows':>10} "
                  f"{'cold rows':>11} {'files':>6} {'cold bytes':>12}"]
        for t in health["tables"]:
            lines.append(f"  {t['table_name']:<28} {t['state']:<9} "
                         f"{str(t['tier_boundary'])[:25]:<26} {_num(t['hot_rows']):>10} "
                         f"{_num(t['cold_rows']):>11} {_num(t['cold_files']):>6} "
                         f"{_num(t['cold_bytes']):>12}")
    if health["slowest"]:
        lines += ["", "Slowest statements of the last hour:"]
        for q in health["slowest"]:
            text = " ".join(str(q["statement"]).split())
            lines.append(f"  {q['duration_ms']:>10.1f} ms  {q['route']:<6} "
                         f"files {q['files_kept']}/{q['files_total']}  "
                         f"row groups {q['row_groups_kept']}/{q['row_groups_total']}  "
                         f"{text[:70]}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
