"""The generated differential oracle: random statements over tiered tables after retention
answer exactly like their never-tiered twins, or are refused with 0A000.

CI: 1,000 statements of one seed (each under one route, alternating auto and cold; TimeZones
and protocols rotating). FIG_LONG=1: 20,000 over five seeds, each under both routes.
Reproduce by hand: python -m tests.federation.oracle_run --seed N --count M --route both

Then with a late change (a row written below the boundary, or deleted again) to both tiered
tables and their twins before every statement, route auto: 125 statements in CI, 2,000 with
FIG_LONG=1. By hand: ... --route auto --workers 1 --late
"""

from __future__ import annotations

import os

import pytest

from tests.federation.oracle_fixture import build_generated_oracle
from tests.federation.oracle_run import Oracle

LONG = os.environ.get("FIG_LONG") == "1"
SEEDS = (11, 12, 13, 14, 15) if LONG else (11,)
# FIG_ORACLE_COUNT: a smaller budget, for the pass on an S3 endpoint and a Ray cluster
COUNT = 4000 if LONG else int(os.environ.get("FIG_ORACLE_COUNT") or 1000)
LATE_COUNT = 2000 if LONG else max(COUNT // 8, 20)


@pytest.mark.timeout(6 * 3600 if LONG else 900)
def test_generated_statements_answer_like_the_twin() -> None:
    data = build_generated_oracle()
    oracle = Oracle(data, "both" if LONG else "alternate", workers=3)
    try:
        for seed in SEEDS:
            oracle.run_seed(seed, COUNT)
    finally:
        oracle.close()
        data.fig.stop()
    summary = oracle.summary
    assert summary.statements == COUNT * len(SEEDS)
    assert summary.failures == 0, summary.report(show=1)


@pytest.mark.timeout(4 * 3600 if LONG else 900)
def test_generated_statements_after_late_writes_answer_like_the_twin() -> None:
    """Every statement runs right after a late change CDC has not applied yet (cdc/late.py)."""
    data = build_generated_oracle()
    oracle = Oracle(data, "auto", workers=1, late=True)
    try:
        oracle.run_seed(SEEDS[-1] + 10, LATE_COUNT)
    finally:
        oracle.close()
        data.fig.stop()
    summary = oracle.summary
    assert summary.statements == LATE_COUNT
    assert summary.failures == 0, summary.report(show=1)
