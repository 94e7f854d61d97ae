"""Pushdown: which WHERE conjuncts the cold engine computes exactly as Postgres would.

One function decides, for one tiered reference: the conjuncts pushed into its cold part, the
residual ones left to Postgres, and whether the push is complete. Top-n and partial
aggregates are applied only when it is (a LIMIT over a half-filtered cold part returns too
few rows; an aggregate over one counts rows Postgres would have filtered).

A conjunct is pushed only when every piece of it has the same meaning in DataFusion as in
Postgres for this session, whatever the TimeZone or collation: a column of the table compared
with a literal whose type needs no session to read (numbers against integer and numeric
columns, ISO dates and timestamps, UTC-anchored timestamptz values from bounds), text
equality (never text order: collations), IS NULL, IN lists, LIKE without escapes, and AND/OR/
NOT of those. Everything else stays residual, evaluated by Postgres on the merged rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlglot import exp

from fig_server.planner.bounds import guards, moving, unguarded_moving
from fig_server.planner.tiers import TieredTable

INTEGER = {"smallint", "integer", "bigint"}
TEXT = re.compile(r"^(text|character varying(\(\d+\))?)$")
NUMERIC = re.compile(r"^numeric\((\d+),(\d+)\)$")
INTEGER_TEXT = re.compile(r"^-?\d{1,18}$")
DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?$")
DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?$")
TIMESTAMPTZ_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?\+00:00$")
# A double keeps every decimal of at most 15 significant digits apart and in order.
EXACT_DIGITS = 15

ORDERED = (exp.GT, exp.GTE, exp.LT, exp.LTE)
EQUALITY = (exp.EQ, exp.NEQ)


@dataclass
class Pushdown:
    """pushed: conjuncts (unqualified SQL) for the cold part; complete: nothing residual."""

    pushed: list[str] = field(default_factory=list)
    residual: list[exp.Expression] = field(default_factory=list)
    # bounds.GUARD conditions of the pushed conjuncts: the statement must check them
    guards: list[str] = field(default_factory=list)
    # Columns of pushed clock-derived lower bounds the statement evaluates later (higher):
    # the cold rows are a superset, right for filtering, not for most top-n taken before
    # Postgres's own (see complete_for).
    loose: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return not self.residual and not self.loose

    def complete_for(self, order: exp.Order | None) -> bool:
        """Complete for a top-n in this order: with loose lower bounds only when the first key
        is their column descending. The extra cold rows then sort after every row the
        statement keeps, so they never displace one from the first n."""
        if self.residual:
            return False
        if not self.loose:
            return True
        if order is None or not order.expressions:
            return False
        first = order.expressions[0]
        return bool(first.args.get("desc")) and isinstance(first.this, exp.Column) and \
            self.loose == {first.this.name}


def conjuncts(where: exp.Expression | None) -> list[exp.Expression]:
    if where is None:
        return []
    condition = where.this
    return list(condition.flatten() if isinstance(condition, exp.And) else [condition])


def pushdown(where: exp.Expression | None, ref: exp.Table, table: TieredTable,
             moving_upper: bool = True) -> Pushdown:
    """Split the WHERE of the reference's own SELECT into pushed and residual conjuncts.

    moving_upper=False: the statement Postgres runs keeps its own now(), later than the
    value bounds substituted, so a clock-derived value only bounds from below there, unless
    it is a date the statement checks is unchanged (bounds.GUARD)."""
    result = Pushdown()
    for conjunct in conjuncts(where):
        loose = not moving_upper and unguarded_moving(conjunct)
        if loose and not _lower_bound(conjunct):
            result.residual.append(conjunct)
        elif _exact(conjunct, _Scope(ref, table)):
            result.pushed.append(unqualified(conjunct))
            if loose:
                result.loose.add(_bounded_column(conjunct))
            if not moving_upper:
                result.guards += guards(conjunct)
        else:
            result.residual.append(conjunct)
    return result


def exact_condition(condition: exp.Expression, ref: exp.Table, table: TieredTable) -> bool:
    """DataFusion evaluates the condition, over the reference's own columns, to the same
    true, false or NULL as Postgres."""
    return _exact(condition, _Scope(ref, table))


def _lower_bound(conjunct: exp.Expression) -> bool:
    """`column > value` or `value < column` (with = too): true for every later value."""
    return _bounded_column(conjunct) != ""


def _bounded_column(conjunct: exp.Expression) -> str:
    """The column a lower bound is on, or ""."""
    column = conjunct.this if isinstance(conjunct, (exp.GT, exp.GTE)) else \
        conjunct.expression if isinstance(conjunct, (exp.LT, exp.LTE)) else None
    if isinstance(column, exp.Column) and not moving(column):
        return str(column.name)
    return ""


@dataclass
class _Scope:
    ref: exp.Table
    table: TieredTable

    def column_type(self, node: exp.Expression) -> str | None:
        """The column's type when the node names a column of this reference."""
        if not isinstance(node, exp.Column) or node.name not in self.table.column_names:
            return None
        if node.table and node.table not in (self.ref.alias_or_name, self.table.name):
            return None
        # Unqualified beside other sources it is still the table's: were it another
        # source's too, Postgres would refuse the statement as ambiguous (the rewritten
        # statement keeps the conjunct, or Postgres describes the original first).
        return self.table.column_type(node.name)

    def byte_ordered(self, node: exp.Expression) -> bool:
        """A text column whose collation orders as DataFusion does (by code point)."""
        return isinstance(node, exp.Column) and self.table.orders_as_bytes(node.name)


def _exact(node: exp.Expression, scope: _Scope) -> bool:
    if isinstance(node, (exp.And, exp.Or)):
        return _exact(node.this, scope) and _exact(node.expression, scope)
    if isinstance(node, (exp.Not, exp.Paren)):
        return _exact(node.this, scope)
    if isinstance(node, exp.Column):
        return scope.column_type(node) == "boolean"
    if isinstance(node, exp.Is):
        return scope.column_type(node.this) is not None and isinstance(node.expression, exp.Null)
    if isinstance(node, (*ORDERED, *EQUALITY)):
        column, other = node.this, node.expression
        if scope.column_type(column) is None:
            column, other = node.expression, node.this
        kind = scope.column_type(column)
        return kind is not None and _comparable(
            kind, other, isinstance(node, ORDERED) and not scope.byte_ordered(column))
    if isinstance(node, exp.Between):
        kind = scope.column_type(node.this)
        return kind is not None and not node.args.get("symmetric") and all(
            _comparable(kind, node.args[side], not scope.byte_ordered(node.this))
            for side in ("low", "high"))
    if isinstance(node, exp.In):
        kind = scope.column_type(node.this)
        return kind is not None and not node.args.get("query") and not node.args.get(
            "unnest") and bool(node.expressions) and all(
            _comparable(kind, item, False) for item in node.expressions)
    if isinstance(node, exp.Like):
        kind = scope.column_type(node.this)
        pattern = node.expression
        return kind is not None and bool(TEXT.match(kind)) and isinstance(
            pattern, exp.Literal) and pattern.is_string and "\\" not in pattern.name
    return False


def _comparable(kind: str, node: exp.Expression, ordered: bool) -> bool:
    """Compares with a column of this type exactly as Postgres does. ordered: the comparison
    depends on the column's order (only text cares: byte-ordered columns pass False)."""
    if kind in INTEGER:
        return bool(INTEGER_TEXT.match(number_literal(node) or ""))
    numeric = NUMERIC.match(kind)
    if numeric is not None or kind == "double precision":
        text = number_literal(node)
        if text is None or not DECIMAL_TEXT.match(text):
            return False
        digits = len(text.lstrip("-").replace(".", "").lstrip("0"))
        precision = int(numeric.group(1)) if numeric is not None else EXACT_DIGITS
        return digits <= EXACT_DIGITS and precision <= EXACT_DIGITS
    if TEXT.match(kind):
        return not ordered and isinstance(node, exp.Literal) and node.is_string
    if kind == "boolean":
        return not ordered and isinstance(node, exp.Boolean)
    text = _temporal_text(node, kind)
    if kind == "date":
        return text is not None and bool(DATE_TEXT.match(text))
    if kind == "timestamp without time zone":
        return text is not None and bool(TIMESTAMP_TEXT.match(text))
    if kind == "timestamp with time zone":
        # only values bounds anchored at UTC: a bare string would be read in the session's zone
        return isinstance(node, exp.Cast) and node.to.is_type(
            exp.DataType.Type.TIMESTAMPTZ) and text is not None and bool(
            TIMESTAMPTZ_TEXT.match(text))
    return False


def number_literal(node: exp.Expression) -> str | None:
    """The text of a number literal, negated ones too (`-3`), or None."""
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and \
            node.this.is_number:
        return "-" + node.this.name
    if isinstance(node, exp.Literal) and node.is_number:
        return node.name
    return None


def _temporal_text(node: exp.Expression, kind: str) -> str | None:
    """The text of a date/timestamp literal: bare, or cast to the column's own type."""
    if isinstance(node, exp.Literal) and node.is_string:
        return node.name if kind != "timestamp with time zone" else None
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and \
            node.this.is_string:
        wanted = {"date": exp.DataType.Type.DATE,
                  "timestamp without time zone": exp.DataType.Type.TIMESTAMP,
                  "timestamp with time zone": exp.DataType.Type.TIMESTAMPTZ}.get(kind)
        if wanted is not None and node.to.is_type(wanted):
            return node.this.name
    return None


def unqualified(condition: exp.Expr) -> str:
    """An expression's SQL with its columns' table, schema and catalog qualifiers removed."""
    pushed = condition.copy()
    for column in pushed.find_all(exp.Column):
        column.set("table", None)
        column.set("db", None)
        column.set("catalog", None)
    return pushed.sql(dialect="postgres")
