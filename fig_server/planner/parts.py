"""The plan's parts: routes, cold parts, writes, and the SQL pieces every rule shares."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from fig_server.errors import SqlSyntaxError
from fig_server.planner import bounds
from fig_server.planner.pushdown import conjuncts
from fig_server.planner.tiers import TieredTable

if TYPE_CHECKING:
    from fig_server.planner.semi_join import Reducer


class Route(Enum):
    HOT = "HOT"
    COLD = "COLD"
    SPLIT = "SPLIT"


@dataclass
class ColdPart:
    """Rows of one tiered table reference that the cold engine supplies.

    shape_sql is a SELECT whose result columns define the temp table the rows are copied into;
    aggregated is true when the rows are partial aggregates rather than table rows.
    """

    table: TieredTable
    cold_sql: str
    shape_sql: str
    temp_table: str
    aggregated: bool = False
    # The text that replaces the reference in the user's statement (row parts).
    replacement: str | None = None
    # Semi-join reducers of its rows (planner/semi_join.py)
    reducers: tuple[Reducer, ...] = ()
    # The statement joins and aggregates each tier in its own branch (planner/distribute.py)
    distributed: bool = False


@dataclass
class ColdWrite:
    """An UPDATE or DELETE that may reach rows below the boundary, applied to both tiers.

    part loads the candidate cold rows (whole rows, time < boundary, pushable filters) into a
    temp table; stage_sql, run by the backend over that temp table (aliased as the target),
    returns the rows to write in cold: for DELETE the old rows, for UPDATE the new rows with
    the SET list applied; each followed by the old time value.
    """

    kind: str  # DELETE | UPDATE
    table: TieredTable
    part: ColdPart
    stage_sql: str
    set_columns: list[str] = field(default_factory=list)


@dataclass
class Rewrite:
    """The plan of one statement. When `needs` is set, nothing else is: the caller evaluates
    those column-free expressions (compared with a tiered table's columns) in the client's
    session and plans again with their values (see planner/bounds.py)."""

    route: Route
    sql: str
    parts: list[ColdPart] = field(default_factory=list)
    explain: bool = False
    analyze: bool = False
    needs: list[bounds.Need] = field(default_factory=list)
    # Top-level projections were renamed by guess: plan again with Postgres's own names.
    describe: bool = False
    # Set for an UPDATE/DELETE that must reach cold rows; sql is then the original statement.
    write: ColdWrite | None = None
    # n when any n rows of the statement run on hot alone answer it (planner/preview.py).
    hot_first: int | None = None


WRITES = (exp.Update, exp.Delete, exp.Merge)


def parse(sql: str) -> exp.Expression:
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except (ParseError, TokenError) as exc:  # an unterminated comment is a TokenError
        errors = getattr(exc, "errors", None)
        raise SqlSyntaxError(f"syntax error: {errors[0]['description'] if errors else exc}"
                             ) from exc
    if not isinstance(tree, exp.Expression):
        raise SqlSyntaxError("empty statement")
    return tree


# The boundary of an attached Iceberg table (fig.attach_iceberg): every row is cold.
ATTACHED_BOUNDARY = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
LATE_GUARD_FUNCTION = "fig._late_hold"  # cdc/control.py


def cold_only(table: TieredTable) -> bool:
    return table.boundary == ATTACHED_BOUNDARY


def outer_joined(select: exp.Select, table: exp.Table) -> bool:
    """True when the reference is on a side of an outer join that can be NULL-extended."""
    joins = select.args.get("joins") or []
    if any(j.side in ("RIGHT", "FULL") for j in joins):
        return True
    return any(j.this is table and j.side == "LEFT" for j in joins)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal of the text."""
    return "'" + text.replace("'", "''") + "'"


def where_of(ref: exp.Table) -> exp.Expression | None:
    """The WHERE that filters this reference directly (its own SELECT, UPDATE or DELETE),
    or None when the reference is on a side of an outer join that can be NULL-extended."""
    owner = ref.find_ancestor(exp.Select, exp.Update, exp.Delete)
    if owner is None or (isinstance(owner, exp.Select) and outer_joined(owner, ref)):
        return None
    where = owner.args.get("where")
    return where if isinstance(where, exp.Where) else None


def where_sql(filters: list[str]) -> str:
    return f" WHERE {' AND '.join(f'({f})' for f in filters)}" if filters else ""


def cold_filters(table: TieredTable, route: Route, filters: list[str]) -> list[str]:
    if route is Route.SPLIT:
        bound = bounds.boundary_literal(table)
        return [f"{quote(table.time_column)} < {bound}", *filters]
    return filters


def hot_filter(table: TieredTable) -> str:
    time = quote(table.time_column)
    return f"({time} >= {bounds.boundary_literal(table)} OR {time} IS NULL)"


def hot_rows(table: TieredTable, select: str, filters: list[str], tail: str = "") -> str:
    """The hot rows' SQL: `select` (its FROM the table) with hot_filter and the filters,
    then tail (GROUP BY, ORDER BY, LIMIT).

    Right after retention hot holds no row below the boundary, and hot_filter then drops
    nothing, but its OR keeps Postgres from answering with an index that does not hold the
    time column (`GROUP BY user_id` over 5M hot rows: 2.9 s, 0.9-1.3 s from an index-only
    scan). When the time column leads an index, two arms: one without hot_filter, run only
    when no hot row is below the boundary (a one-time filter: one index probe, in the
    statement's snapshot), the other with it otherwise. Postgres runs one of them.

    The SQL is the right operand of a UNION ALL after the cold rows: the two arms in one
    pair of parentheses (distribute.py splits that UNION ALL in two: cold rows, hot rows)."""
    where = where_sql([hot_filter(table), *filters])
    if not table.time_indexed:
        single = f"{select}{where}{tail}"
        return f"({single})" if re.search(r"\b(ORDER BY|LIMIT)\b", tail) else single
    source = f"{quote(table.schema)}.{quote(table.name)}"
    below = (f"(SELECT EXISTS (SELECT 1 FROM {source} WHERE {quote(table.time_column)} < "
             f"{bounds.boundary_literal(table)}))")
    clean = where_sql([f"NOT {below}", *filters])
    kept = where_sql([below, hot_filter(table), *filters])
    return f"(({select}{clean}{tail}) UNION ALL ({select}{kept}{tail}))"


def late_guard(table: TieredTable) -> str:
    """A one-time filter of the branch that reads a part's cold rows: true unless the
    statement sees a late change of the table (cdc/late.py) other than those Fig waited for
    before it read them (then 40001). None for a table of unknown oid (forced cold: Iceberg
    alone, as it is). On the cold branch, not the hot one: Postgres runs the branches of a
    UNION ALL in order, and a LIMIT may stop before the later ones."""
    if not table.oid:
        return ""
    seen = ",".join(str(int(i)) for i in table.late)
    return f"{LATE_GUARD_FUNCTION}({int(table.oid)}, '{{{seen}}}')"


def temp_name(table: TieredTable, shape_sql: str, slot: str) -> str:
    key = f"{table.qualified}:{shape_sql}:{slot}"
    return "fig_cold_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def time_range(ref: exp.Table, table: TieredTable) -> tuple[Any, Any]:
    """The lower and upper bounds the WHERE puts on the time column (after bounds were
    substituted), each in the column's own type, or None."""
    lower = upper = None
    kind = table.column_type(table.time_column)
    for condition in conjuncts(where_of(ref)):
        sides: list[tuple[exp.Expression, str]] = []
        if isinstance(condition, exp.Between) and is_time_column(condition.this, ref, table) \
                and not condition.args.get("symmetric"):
            sides = [(condition.args["low"], "lower"), (condition.args["high"], "upper")]
        elif isinstance(condition, (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.EQ)):
            left, right = condition.this, condition.expression
            lower_kinds = (exp.GT, exp.GTE) if is_time_column(left, ref, table) else (
                (exp.LT, exp.LTE) if is_time_column(right, ref, table) else None)
            if lower_kinds is None:
                continue
            other = right if is_time_column(left, ref, table) else left
            if isinstance(condition, exp.EQ):
                sides = [(other, "lower"), (other, "upper")]
            else:
                sides = [(other, "lower" if isinstance(condition, lower_kinds) else "upper")]
        for node, side in sides:
            value = bounds.literal_value(node, kind)
            if value is None or (side == "upper" and bounds.moving(node)):
                continue  # the statement's own now() is later: no upper bound to route on
            if side == "lower":
                lower = value if lower is None else max(lower, value)
            else:
                upper = value if upper is None else min(upper, value)
    return lower, upper


def is_time_column(node: exp.Expression, ref: exp.Table, table: TieredTable) -> bool:
    return isinstance(node, exp.Column) and node.name == table.time_column and \
        node.table in ("", ref.alias_or_name, table.name)
