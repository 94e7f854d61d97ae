"""Bounds: column-free expressions compared with a tiered table's columns, evaluated once.

Postgres evaluates each such expression in the client's own session (its TimeZone, DateStyle,
search_path), and the value replaces the expression in the statement itself, so the cold
part, the hot part and the merge all compare with the same value: `ts < now() - interval '7
days'` becomes `ts < CAST('2025-03-01 10:00:00+00:00' AS TIMESTAMPTZ)` everywhere.

An untyped string literal compared with a column takes the column's type (Postgres resolves
`ts > '2025-01-01'` in the session's TimeZone), so it is evaluated as that type. Any other
expression keeps its own type: `status = 200 + 0.5` stays a comparison with numeric 200.5.
Only values whose text round-trips exactly are substituted; others stay as written (the
conjunct is then not pushed, Postgres evaluates it).

A parameter (`user_id = $1`, how drivers send values) is such an expression too: the session
evaluates it with the values of the statement's Bind (Need.parameters), when there is one
Bind to plan for; otherwise it stays as written.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlglot import exp

from fig_server.planner.tiers import TieredTable

COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)

# Functions whose value is fixed for the statement (stable or immutable): evaluating them
# once gives what Postgres computes per row. Anything else (random(), clock_timestamp(),
# nextval(), user functions) is never evaluated ahead.
STABLE = (
    exp.Literal, exp.Cast, exp.Interval, exp.CurrentTimestamp, exp.CurrentDate, exp.Add,
    exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg, exp.Var, exp.DataType, exp.DataTypeParam,
    exp.Identifier, exp.TimestampTrunc, exp.DateTrunc, exp.Boolean, exp.Parameter,
)
STABLE_NAMES = {"now", "make_date", "make_timestamp", "make_timestamptz", "make_interval",
                "to_timestamp", "to_date", "date_trunc", "transaction_timestamp"}

# Types whose to_json text is exact and becomes a literal of the same value.
SUBSTITUTABLE = {"smallint", "integer", "bigint", "numeric", "date",
                 "timestamp without time zone", "timestamp with time zone", "text",
                 "character varying", "boolean"}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")
ISO_TIMESTAMPTZ = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}(:\d{2}){0,2}$")


@dataclass(frozen=True)
class Need:
    """One expression to evaluate: its SQL, and the column type it takes (untyped literals)
    or None (it keeps its own type)."""

    text: str
    as_type: str | None
    parameters: bool = False  # reads $n: evaluated only with a Bind's values

    @property
    def key(self) -> str:
        return f"{self.as_type or ''}:{self.text}"

    def select_items(self) -> list[str]:
        """The two columns of the evaluation query: the value's type and its JSON text."""
        if self.as_type is not None:
            return [f"'{self.as_type}'", f"to_json(CAST({self.text} AS {self.as_type}))::text"]
        return [f"pg_typeof(({self.text}))::text", f"to_json(({self.text}))::text"]


# Marks a substituted value computed from the clock: the statement's own now() is later.
MOVING = "fig_moving"
# On a moving value of type date: the check that the statement's own evaluation still gives
# it (a date changes only at midnight). The rewrite puts it in the reference's replacement
# as a one-time filter of each branch, so a statement that runs on the next day fails (40001)
# instead of comparing with a day its cold rows were not read for.
GUARD = "fig_guard"
GUARD_FUNCTION = "fig._bounds_hold"
CLOCK = (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime)


def moves(node: exp.Expression) -> bool:
    """The expression reads the clock (now(), current_date): it only grows over time."""
    return any(isinstance(n, CLOCK) or (isinstance(n, exp.Anonymous) and n.name.lower() in (
        "now", "transaction_timestamp")) for n in node.walk())


def moving(node: exp.Expression) -> bool:
    return any(n.meta.get(MOVING) for n in node.walk())


def unguarded_moving(node: exp.Expression) -> bool:
    """A moving value whose change the statement could not detect (not a guarded date)."""
    return any(n.meta.get(MOVING) and not n.meta.get(GUARD) for n in node.walk())


def guards(node: exp.Expression) -> list[str]:
    """The guard conditions of the moving dates in the node."""
    return [n.meta[GUARD] for n in node.walk() if n.meta.get(GUARD)]


def guard_sql(conditions: list[str]) -> str:
    """One-time filter SQL: true while every guarded date is unchanged, else an error."""
    return f"{GUARD_FUNCTION}({' AND '.join(sorted(set(conditions)))})"


def stable(node: exp.Expression) -> bool:
    """A column-free expression Postgres computes the same way for every row."""
    for inner in node.walk():
        if isinstance(inner, exp.Anonymous):
            if inner.name.lower() not in STABLE_NAMES:
                return False
        elif not isinstance(inner, STABLE):
            return False
    return True


def _owned_column(node: exp.Expression, ref: exp.Table, table: TieredTable) -> str | None:
    """The tiered table's column this node names through this reference, if any."""
    if not isinstance(node, exp.Column) or node.name not in table.column_names:
        return None
    if node.table and node.table not in (ref.alias_or_name, table.name):
        return None
    return node.name


def comparands(where: exp.Expression | None, ref: exp.Table, table: TieredTable
               ) -> Iterator[tuple[exp.Expression, str]]:
    """(column-free comparand, column type) of every top-level WHERE conjunct comparing one
    of the table's columns with something that needs the session to evaluate it."""
    if where is None:
        return
    condition = where.this
    conjuncts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    for conjunct in conjuncts:
        column: exp.Expression | None = None
        others: list[exp.Expression] = []
        if isinstance(conjunct, exp.Between):
            column, others = conjunct.this, [conjunct.args["low"], conjunct.args["high"]]
        elif isinstance(conjunct, exp.In) and not conjunct.args.get("query"):
            column, others = conjunct.this, list(conjunct.expressions)
        elif isinstance(conjunct, COMPARISONS):
            column, others = conjunct.this, [conjunct.expression]
            if _owned_column(column, ref, table) is None:
                column, others = conjunct.expression, [conjunct.this]
        name = _owned_column(column, ref, table) if column is not None else None
        if name is None:
            continue
        kind = table.column_type(name)
        for other in others:
            if _needs_session(other, kind) and stable(other):
                yield other, kind


def _needs_session(node: exp.Expression, kind: str) -> bool:
    if isinstance(node, (exp.Null, exp.Boolean)):
        return False
    if isinstance(node, exp.Literal):
        # numbers are read the same everywhere; strings only matter for time types
        return node.is_string and _temporal(kind)
    return True


def _temporal(kind: str) -> bool:
    return kind in ("date", "timestamp without time zone", "timestamp with time zone")


def need_for(node: exp.Expression, kind: str) -> Need:
    text = node.sql(dialect="postgres")
    if isinstance(node, exp.Literal) and node.is_string:
        return Need(text, kind)
    return Need(text, None, any(isinstance(n, exp.Parameter) for n in node.walk()))


def needs(where: exp.Expression | None, ref: exp.Table, table: TieredTable) -> list[Need]:
    return [need_for(node, kind) for node, kind in comparands(where, ref, table)]


def substitute(where: exp.Expression | None, ref: exp.Table, table: TieredTable,
               values: Mapping[str, tuple[str, str]]) -> None:
    """Replace, in place, each evaluated comparand by a literal of its value and type."""
    for node, kind in list(comparands(where, ref, table)):
        need = need_for(node, kind)
        found = values.get(need.key)
        if found is None:
            continue
        literal = typed_literal(*found)
        if literal is not None:
            if moves(node):
                literal.meta[MOVING] = True
                if found[0] == "date":
                    literal.meta[GUARD] = (f"({need.text}) IS NOT DISTINCT FROM "
                                           f"{literal.sql(dialect='postgres')}")
            node.replace(literal)


def typed_literal(kind: str, json_text: str) -> exp.Expression | None:
    """A literal of the value Postgres returned, in the same type; None when not exact."""
    if kind not in SUBSTITUTABLE or json_text in ("null", ""):
        return None
    value = json.loads(json_text)
    if kind in ("smallint", "integer", "bigint", "numeric"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # NaN, Infinity come back as strings
        # a number literal reads back as the same value (integer, or numeric with a point)
        return exp.Literal.number(json_text.strip())
    if kind == "boolean":
        return exp.Boolean(this=bool(value))
    if not isinstance(value, str):
        return None
    if kind == "date":
        return exp.cast(exp.Literal.string(value), "date") if ISO_DATE.match(value) else None
    if kind == "timestamp without time zone":
        if not ISO_TIMESTAMP.match(value):
            return None
        return exp.cast(exp.Literal.string(value.replace("T", " ")), "timestamp")
    if kind == "timestamp with time zone":
        if not ISO_TIMESTAMPTZ.match(value):
            return None
        utc = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
        return exp.cast(exp.Literal.string(utc.isoformat(sep=" ")), "timestamptz")
    return exp.cast(exp.Literal.string(value), kind)


def literal_value(node: exp.Expression, kind: str) -> dt.datetime | dt.date | None:
    """The time a literal of the time column's type stands for (after substitution)."""
    if not isinstance(node, exp.Cast) or not isinstance(node.this, exp.Literal):
        return None
    text = node.this.name
    try:
        if kind == "timestamp with time zone" and node.to.is_type(exp.DataType.Type.TIMESTAMPTZ):
            value = dt.datetime.fromisoformat(text)
            return value if value.tzinfo is not None else None
        if kind == "timestamp without time zone" and node.to.is_type(exp.DataType.Type.TIMESTAMP):
            return dt.datetime.fromisoformat(text)
        if kind == "date" and node.to.is_type(exp.DataType.Type.DATE):
            return dt.date.fromisoformat(text)
    except ValueError:
        return None
    return None


def boundary_value(table: TieredTable) -> dt.datetime | dt.date:
    """The tier boundary in the time column's own type.

    Retention deletes rows with `time < boundary` comparing in UTC (it pins its TimeZone), so
    a timestamp column's boundary is the UTC wall time, and a date column's is the first day
    whose midnight (UTC) is at or after the boundary: no day is in neither tier or in both.
    """
    assert table.boundary is not None
    utc = table.boundary.astimezone(dt.UTC)
    kind = table.column_type(table.time_column)
    if kind == "date":
        day = utc.date()
        if utc.replace(tzinfo=None) != dt.datetime.combine(day, dt.time()):
            day += dt.timedelta(days=1)
        return day
    if kind == "timestamp without time zone":
        return utc.replace(tzinfo=None)
    return utc


def boundary_literal(table: TieredTable) -> str:
    value = boundary_value(table)
    kind = table.column_type(table.time_column)
    if kind == "date":
        return f"CAST('{value.isoformat()}' AS date)"
    if kind == "timestamp without time zone":
        assert isinstance(value, dt.datetime)
        return f"CAST('{value.isoformat(sep=' ')}' AS timestamp)"
    assert isinstance(value, dt.datetime)
    return f"CAST('{value.isoformat(sep=' ')}' AS timestamptz)"
