"""CDC: sustained ingest through fig.tier_table + fig.sync, and replication lag at a fixed rate."""

from __future__ import annotations

from typing import Any

import psycopg

from benchmarks.datagen import Scale
from benchmarks.fig_process import FigProcess
from benchmarks.report import RunReport


def probe_cdc(fig: FigProcess) -> str | None:
    """None when Fig's SQL control surface for CDC exists, else why CDC cannot be measured."""
    try:
        with psycopg.connect(fig.dsn(), autocommit=True) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'fig' AND p.proname IN ('tier_table', 'sync')").fetchone()
    except psycopg.Error as error:
        return f"probe failed: {error}"
    if not found or found[0] < 2:
        return "fig.tier_table / fig.sync are not installed by fig serve yet (fig_server.cdc)"
    return None


def run_cdc(fig: FigProcess, scale: Scale, report: RunReport) -> None:
    reason = probe_cdc(fig)
    if reason is not None:
        report.skipped.append(("CDC ingest and lag", reason))
        return
    report.cdc.update(measure_cdc(fig, scale))


def measure_cdc(fig: FigProcess, scale: Scale) -> dict[str, Any]:
    raise NotImplementedError
