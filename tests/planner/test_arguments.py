"""Aggregate arguments (planner/arguments.py) evaluated by DataFusion as the cold part runs
them, against what Postgres gives the same CASE."""

from __future__ import annotations

import datetime as dt

import datafusion
import pyarrow as pa
import sqlglot
from sqlglot import exp

from fig_server.planner.arguments import argument
from fig_server.planner.tiers import TieredTable

KINDS = TieredTable("public", "kinds", "ts", dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                    (("ts", "timestamp with time zone"), ("t", "text"),
                     ("d", "double precision"), ("n", "numeric(12,2)")))


def _argument(sql: str) -> tuple[str, str]:
    tree = sqlglot.parse_one(f"select {sql} from kinds", read="postgres")
    aggregate = next(tree.find_all(exp.AggFunc))
    found = argument(aggregate, tree.find(exp.Table), KINDS)
    assert found is not None, sql
    return found.sql, found.kind


def _datafusion(sql: str, rows: dict[str, pa.Array]) -> list[object]:
    ctx = datafusion.SessionContext()
    ctx.register_record_batches("kinds", [[pa.RecordBatch.from_pydict(rows)]])
    return [row["v"] for row in ctx.sql(f"SELECT SUM({sql}) AS v FROM kinds")
            .to_arrow_table().to_pylist()]


def test_a_decimal_literal_beside_doubles_is_a_double() -> None:
    """Postgres types CASE double/numeric as double; DataFusion made it a decimal and failed
    on NaN (found by the generated oracle, seed 105)."""
    sql, kind = _argument("sum(case when t is not null then d else 1.5 end)")
    assert kind == "double precision"
    rows = {"t": pa.array(["a", None, "b"]), "d": pa.array([float("nan"), 7.0, 2.25])}
    [total] = _datafusion(sql, rows)
    assert isinstance(total, float) and total != total  # NaN, as Postgres sums it


def test_a_decimal_literal_beside_numerics_stays_exact() -> None:
    sql, kind = _argument("sum(case when t is not null then n else 0.5 end)")
    assert kind == "numeric"
    from decimal import Decimal
    rows = {"t": pa.array(["a", None]), "n": pa.array([Decimal("1.25"), Decimal("3.00")],
                                                      pa.decimal128(12, 2))}
    assert _datafusion(sql, rows) == [Decimal("1.75")]
