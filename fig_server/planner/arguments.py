"""Aggregate arguments both tiers compute alike: a column of the table, a number, a CASE whose
conditions pushdown proves exact, and `agg(x) FILTER (WHERE p)` read as
`agg(CASE WHEN p THEN x END)` (the same rows reach the aggregate: a condition that is false
or NULL gives NULL, which every aggregate but count(*) skips).

A CASE's Postgres type follows Postgres's resolution for the numbers it mixes (smallint <
integer < bigint < numeric < double precision). A numeric value carries its own display
scale in Postgres (`1` has none, `0.0` one digit, a numeric(12,2) column two), and sum()
keeps the largest it saw, so `sum(CASE WHEN p THEN 1 ELSE 0.0 END)` (Metabase's count-where)
prints `7` over rows that all matched and `7.0` otherwise. DataFusion's decimals have one
scale per column; when the branches' scales differ, each row's scale is a partial of its
own (`Argument.scale`) and the final sum is rounded to the largest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from fig_server.planner.parts import quote
from fig_server.planner.pushdown import (
    INTEGER_TEXT,
    NUMERIC,
    exact_condition,
    number_literal,
    unqualified,
)
from fig_server.planner.tiers import TieredTable

DECIMAL_TEXT = re.compile(r"^-?\d{1,15}\.(\d{0,15})$")
INT4 = 2**31
# Number kinds in the order Postgres's CASE resolution prefers the later one.
RANKS = ("smallint", "integer", "bigint", "numeric", "double precision")


@dataclass(frozen=True)
class Argument:
    """sql: the value in SQL Postgres and DataFusion compute alike; kind: its Postgres type;
    column: the table's column when the argument is one; scale: SQL of each row's numeric
    display scale when rows differ (NULL where the value is NULL)."""

    sql: str
    kind: str
    column: str | None = None
    scale: str | None = None


@dataclass(frozen=True)
class _Branch:
    sql: str
    kind: str | None  # None: NULL
    scale: int | None  # numeric display scale, when the value is a number with one
    number: str | None = None  # a number literal's text
    column: bool = False  # a column of the table (may be NULL); else a literal

    def typed(self, kind: str) -> str:
        """The branch's SQL in a CASE of this type: a decimal literal or a numeric column
        beside doubles is a double, as Postgres makes it (DataFusion would make the doubles
        decimals, and fail on NaN)."""
        if kind == "double precision" and self.number is not None and self.kind == "numeric":
            return f"CAST({self.number} AS DOUBLE PRECISION)"
        if kind == "double precision" and self.column and (self.kind or "").startswith("numeric"):
            return f"CAST({self.sql} AS DOUBLE PRECISION)"
        return self.sql


def argument(aggregate: exp.AggFunc, ref: exp.Table, table: TieredTable) -> Argument | None:
    """The aggregate's argument (with its FILTER folded in), or None when DataFusion might
    compute it differently from Postgres."""
    value = aggregate.this
    if isinstance(value, exp.Star):
        value = exp.Literal.number(1)  # count(*): count of rows
    if isinstance(aggregate.parent, exp.Filter):
        where = aggregate.parent.expression
        value = exp.Case(ifs=[exp.If(this=where.this.copy(), true=value.copy())])
    while isinstance(value, exp.Paren):
        value = value.this
    if isinstance(value, exp.Case):
        return _case(value, ref, table)
    branch = _branch(value, ref, table)
    if branch is None or branch.kind is None:
        return None
    column = value.name if isinstance(value, exp.Column) else None
    return Argument(branch.sql, branch.kind, column)


def _case(case: exp.Case, ref: exp.Table, table: TieredTable) -> Argument | None:
    subject = case.this
    conditions: list[str] = []
    branches: list[_Branch] = []
    for when in case.args.get("ifs") or []:
        condition = when.this if subject is None else exp.EQ(
            this=subject.copy(), expression=when.this.copy())
        branch = _branch(when.args["true"], ref, table)
        if branch is None or not exact_condition(condition, ref, table):
            return None
        conditions.append(unqualified(condition))
        branches.append(branch)
    default = _branch(case.args.get("default") or exp.Null(), ref, table)
    if default is None or not branches:
        return None
    kinds = [b.kind for b in [*branches, default] if b.kind is not None]
    kind = _common_kind(kinds)
    if kind is None:
        return None
    whens = " ".join(f"WHEN {c} THEN {b.typed(kind)}"
                     for c, b in zip(conditions, branches, strict=True))
    sql = f"CASE {whens} ELSE {default.typed(kind)} END"
    scales = {b.scale for b in [*branches, default] if b.kind is not None}
    scale = None
    if kind == "numeric" and len(scales) > 1:
        row_scales = " ".join(f"WHEN {c} THEN {_scale(b)}"
                              for c, b in zip(conditions, branches, strict=True))
        scale = f"CASE {row_scales} ELSE {_scale(default)} END"
    return Argument(sql, kind, None, scale)


def _scale(branch: _Branch) -> str:
    """The display scale of the branch's value, NULL where the value is NULL: only a column
    branch can be (not the whole CASE evaluated again: Metabase's count-where over the
    benchmark's 5M cold rows took 258 ms with it, against 168 for the statement alone)."""
    if branch.kind is None:
        return "NULL"
    if branch.column:
        return f"CASE WHEN {branch.sql} IS NULL THEN NULL ELSE {branch.scale or 0} END"
    return str(branch.scale or 0)


def _common_kind(kinds: list[str]) -> str | None:
    """The type Postgres gives a CASE of these branch types, when they are all numbers (or
    all one type); None otherwise. A lone numeric(p,s) keeps its type modifier."""
    if not kinds:
        return None  # every branch NULL: Postgres types it text
    if len(set(kinds)) == 1 and kinds[0] not in ("real",):
        return kinds[0]
    ranked = ["numeric" if NUMERIC.match(k) else k for k in kinds]
    if any(k not in RANKS for k in ranked):
        return None
    return max(ranked, key=RANKS.index)


def _branch(node: exp.Expression, ref: exp.Table, table: TieredTable) -> _Branch | None:
    """One value of a CASE: NULL, a column of the table, or a number literal."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Null):
        return _Branch("NULL", None, None)
    if isinstance(node, exp.Column):
        if node.name not in table.column_names or (
                node.table and node.table not in (ref.alias_or_name, table.name)):
            return None
        kind = table.column_type(node.name)
        numeric = NUMERIC.match(kind)
        scale = int(numeric.group(2)) if numeric else 0 if kind in RANKS[:3] else None
        return _Branch(quote(node.name), kind, scale, column=True)
    text = number_literal(node)
    if text is None:
        return None
    if INTEGER_TEXT.match(text):
        kind = "integer" if -INT4 <= int(text) < INT4 else "bigint"
        return _Branch(text, kind, 0)
    decimal = DECIMAL_TEXT.match(text)
    if decimal is None:
        return None  # 1e2 and the like: Postgres reads numeric, DataFusion a double
    scale = len(decimal.group(1))
    # DataFusion reads 0.5 as a double: the cast keeps it an exact decimal in both tiers.
    return _Branch(f"CAST({text} AS NUMERIC(38, {scale}))", "numeric", scale, text)
