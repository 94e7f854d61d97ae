"""Partial aggregates: GROUP BY and count/sum/avg/min/max computed in both tiers, combined by
Postgres; only when the reference's filter is pushed whole and the tree prints back exactly.

Arguments may be CASE expressions and carry FILTER (`arguments`); count(DISTINCT x) beside
other aggregates groups the partials by x too; a GROUP BY expression the engines might
compute differently groups the partials by its columns and is computed by Postgres."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from fig_server.planner import arguments
from fig_server.planner.outputs import pg_column_name
from fig_server.planner.parts import (
    ColdPart,
    Route,
    cold_filters,
    hot_rows,
    late_guard,
    parse,
    quote,
    temp_name,
    where_sql,
)
from fig_server.planner.pushdown import unqualified
from fig_server.planner.tiers import TieredTable
from fig_server.planner.top_groups import group_order
from fig_server.planner.topn import orderable

FLOATS = ("real", "double precision")
# Aggregates whose result does not change when duplicate input rows are removed.
DUPLICATE_INSENSITIVE = (exp.Min, exp.Max, exp.LogicalAnd, exp.LogicalOr)


def duplicates_irrelevant(select: exp.Select) -> bool:
    """True when the select's answer is the same over its table's distinct rows: SELECT
    DISTINCT without aggregates, or aggregates that are all DISTINCT, min/max or bool_and/or
    (count(DISTINCT user_id) ships each user once per group, not every row)."""
    if select.args.get("joins") or any(select.find_all(exp.Window)):
        return False
    distinct = select.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        return False
    aggregates = [a for a in select.find_all(exp.AggFunc) if a.parent_select is select]
    if not aggregates:
        return distinct is not None
    return all(
        isinstance(a, DUPLICATE_INSENSITIVE)
        or (isinstance(a, (exp.Count, exp.Sum, exp.Avg)) and isinstance(a.this, exp.Distinct)
            and not isinstance(a.parent, exp.WithinGroup))
        for a in aggregates)


# Result type of sum() and avg() by argument type, as Postgres defines them.
# bigint sums are left to Postgres: DataFusion's int64 partial sum would overflow silently;
# real sums to Postgres too: its float4 accumulator rounds differently.
SUM_TYPE = {"smallint": "bigint", "integer": "bigint", "double precision": "double precision"}
AVG_TYPE = {"double precision": "double precision"}


def partial_aggregate(select: exp.Select, node: exp.Table, table: TieredTable, route: Route,
                      filters: list[str], slot: str, names: list[str] | None, utc: bool
                      ) -> ColdPart | None:
    """Push GROUP BY and count/sum/min/max/avg/bool_and/bool_or into both tiers; the outer
    query combines. utc: the session's TimeZone is UTC (see `computed_key`)."""
    if select.args.get("joins") or select.args.get("distinct") or any(
            select.find_all(exp.Window)):
        return None
    group = select.args.get("group")
    aggregates = [a for a in select.find_all(exp.AggFunc) if a.parent_select is select]
    if not aggregates and group is None:
        return None
    if group is not None and any(group.args.get(k) for k in ("rollup", "cube",
                                                              "grouping_sets", "totals")):
        return None
    keys = group_keys(select, node, table, utc)
    if keys is None:
        return None
    distinct = [a for a in aggregates if distinct_column(a, node, table) is not None]
    # Over cold rows alone, in groups both engines form alike, the cold part has one row per
    # group: count(DISTINCT x) is then a partial of its own, summed with an empty hot part.
    counted = route is Route.COLD and all(isinstance(a, exp.Count) for a in distinct) and \
        not any(k.expanded or (k.computed is None and table.column_type(k.name) in FLOATS)
                for k in keys)
    if counted:
        distinct = []
    if any(combine(aggregate, node, table, []) is None for aggregate in aggregates
           if distinct_column(aggregate, node, table) is None):
        return None
    # count(DISTINCT x) beside other aggregates: the partials group by x too, and Postgres
    # counts the distinct x of each group's partial rows as written.
    for aggregate in distinct:
        by = str(distinct_column(aggregate, node, table))
        if by not in (k.name for k in keys):
            keys.append(Key(by, quote(by)))
    # Only now, with the pushdown certain, rename projections and rewrite them.
    keep_output_names(select, names if select.parent is None else None)
    order = group_order(select, node, table, route, [k.name for k in keys]) \
        if not distinct and not any(k.computed or k.expanded for k in keys) else None
    partials: list[Partial] = []
    positions: dict[int, int] = {}  # id() of an aggregate -> its first partial
    finals: list[tuple[exp.Expr, str]] = []
    for aggregate in select.find_all(exp.AggFunc):
        if aggregate.parent_select is not select:
            continue
        column = distinct_column(aggregate, node, table)
        if column is None:
            # agg(x) FILTER (WHERE p): the FILTER is inside the partials
            target: exp.Expr = aggregate.parent if isinstance(
                aggregate.parent, exp.Filter) else aggregate
            positions[id(aggregate)] = len(partials)
            finals.append((target, str(combine(aggregate, node, table, partials))))
        elif counted:
            partials.append(Partial("COUNT", quote(column), distinct=True))
            finals.append((aggregate, f"CAST(COALESCE(SUM(fig_a{len(partials) - 1}), 0) "
                                      "AS bigint)"))
    for target, combined in finals:
        target.replace(parse(f"SELECT {combined}").expressions[0])
    replace_computed_keys(select, keys)
    select.set("where", None)
    return replace_by_partials(node, table, route, filters, slot, keys, partials,
                               tail=order.tail(positions) if order is not None else "")


def replace_by_partials(node: exp.Table, table: TieredTable, route: Route, filters: list[str],
                        slot: str, keys: list[Key], partials: list[Partial],
                        each_row: bool = False, tail: str = "") -> ColdPart:
    """Put the partials of both tiers in the reference's place: the cold part's rows (a
    temp table) UNION ALL the hot rows' partials, grouped by the keys; with each_row, each
    hot row's own partials, ungrouped (Postgres then plans the hot rows' joins itself).
    tail: the cold part's top groups (planner/top_groups.py)."""
    key_names = [quote(key.name) for key in keys]
    key_sql = [key.sql for key in keys]
    source = f"{quote(table.schema)}.{quote(table.name)}"
    select_list = ", ".join([key.select_item for key in keys] +
                            [f"{p.sql} AS fig_a{i}" for i, p in enumerate(partials)])
    group_by = f" GROUP BY {', '.join(key_sql)}" if key_sql else ""
    cold_sql = (f"SELECT {select_list} FROM {source}"
                f"{where_sql(cold_filters(table, route, filters))}{group_by}{tail}")
    shape_sql = f"SELECT {select_list} FROM {source}{group_by}"
    temp = temp_name(table, shape_sql, slot)
    partial_names = ", ".join(key_names + [f"fig_a{i}" for i in range(len(partials))])
    if route is not Route.SPLIT:
        hot_sql = f"SELECT {select_list} FROM {source} WHERE false{group_by}"
    elif each_row:
        row_list = ", ".join([key.select_item for key in keys] +
                             [f"{p.row} AS fig_a{i}" for i, p in enumerate(partials)])
        hot_sql = hot_rows(table, f"SELECT {row_list} FROM {source}", filters)
    else:
        hot_sql = hot_rows(table, f"SELECT {select_list} FROM {source}", filters, group_by)
    late = late_guard(table)
    parts_sql = (f"SELECT {partial_names} FROM pg_temp.{temp}{f' WHERE {late}' if late else ''}"
                 f" UNION ALL {hot_sql}")
    alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
    node.replace(exp.Subquery(this=parse(parts_sql), alias=alias.copy()))
    return ColdPart(table, cold_sql, shape_sql, temp, aggregated=True)


def distinct_column(aggregate: exp.AggFunc, ref: exp.Table, table: TieredTable) -> str | None:
    """The column x of count/sum/avg/min/max(DISTINCT x) over one of the table's columns
    (no FILTER, no ORDER BY): Postgres computes it over partials grouped by x too."""
    argument = aggregate.this
    if not isinstance(aggregate, (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)) or \
            not isinstance(argument, exp.Distinct) or len(argument.expressions) != 1 or \
            isinstance(aggregate.parent, (exp.Filter, exp.WithinGroup)) or \
            aggregate.find(exp.Order):
        return None
    column = argument.expressions[0]
    return column.name if _own_column_type(column, ref, table) is not None else None


@dataclass(frozen=True)
class Partial:
    """One partial aggregate: COUNT, SUM, MIN, MAX, BOOL_AND or BOOL_OR of an argument's SQL
    (COUNT of none: count(*))."""

    function: str
    argument: str | None = None
    distinct: bool = False

    @property
    def sql(self) -> str:
        inner = "*" if self.argument is None else \
            f"{'DISTINCT ' if self.distinct else ''}{self.argument}"
        return f"{self.function}({inner})"

    @property
    def row(self) -> str:
        """The partial of one row alone (what the aggregate gives over that row)."""
        assert not self.distinct, "a distinct count has no per-row partial"
        if self.function != "COUNT":
            return f"({self.argument})"
        return "1" if self.argument is None else f"CASE WHEN ({self.argument}) IS NULL " \
            "THEN 0 ELSE 1 END"


@dataclass(frozen=True)
class Key:
    """One GROUP BY key as both tiers compute it: a column of the table (named as itself in
    the partials) or an expression of its columns (`computed_key`, named fig_k<i>)."""

    name: str
    sql: str
    computed: str | None = None  # canonical text of the expression, for computed keys
    expanded: bool = False  # a column of a key expression Postgres computes (columns_of_key)

    @property
    def select_item(self) -> str:
        return self.sql if self.computed is None else f"{self.sql} AS {quote(self.name)}"


# date_trunc units DataFusion truncates as Postgres does (weeks start on Monday in both).
TRUNC_UNITS = {"SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "QUARTER", "YEAR"}
TIMESTAMPTZ = "timestamp with time zone"


def computed_key(node: exp.Expression, ref: exp.Table, table: TieredTable, utc: bool) -> bool:
    """An expression of one column that DataFusion computes exactly as Postgres does in this
    session: date_trunc(unit, t) and CAST(t AS date) of a timestamp column, of a timestamptz
    column only when the session's TimeZone is UTC (Postgres truncates and takes the date in
    the session's zone, DataFusion in UTC), CAST(d AS date) of a date."""
    if isinstance(node, exp.Paren):
        return computed_key(node.this, ref, table, utc)
    if isinstance(node, exp.TimestampTrunc):
        unit = node.args.get("unit")
        kind = _own_column_type(node.this, ref, table)
        return node.args.get("zone") is None and unit is not None and \
            unit.name.upper() in TRUNC_UNITS and (
                kind == "timestamp without time zone" or (kind == TIMESTAMPTZ and utc))
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DATE):
        kind = _own_column_type(node.this, ref, table)
        return kind in ("date", "timestamp without time zone") or (kind == TIMESTAMPTZ and utc)
    return False


# Column types whose values DataFusion groups exactly when Postgres's are identical (not
# floats: DataFusion may put -0 and 0 in one group, and f(-0) need not be f(0)); timestamps
# are left out because grouping by them rarely reduces anything.
GROUPABLE = re.compile(r"^(smallint|integer|bigint|numeric\(\d+,\d+\)|date|boolean|text|"
                       r"character varying(\(\d+\))?)$")
# Functions Postgres evaluates anew for each row: per group they would give other answers.
VOLATILE = (exp.Rand, exp.Anonymous, exp.Uuid)


def columns_of_key(key: exp.Expression, ref: exp.Table, table: TieredTable
                   ) -> list[str] | None:
    """A GROUP BY key that is any other expression of the table's own columns: the
    partials group by those columns and Postgres computes the key over them, so the
    expression needs no proof (its columns must group alike in both engines)."""
    columns = list(key.find_all(exp.Column))
    if not columns or any(key.find_all(exp.Select, exp.AggFunc, exp.Window, *VOLATILE)):
        return None
    names = []
    for column in columns:
        kind = _own_column_type(column, ref, table)
        if kind is None or not GROUPABLE.match(kind):
            return None
        names.append(column.name)
    return names


def _own_column_type(node: exp.Expression, ref: exp.Table, table: TieredTable) -> str | None:
    if not isinstance(node, exp.Column) or node.name not in table.column_names or (
            node.table and node.table not in (ref.alias_or_name, table.name)):
        return None
    return table.column_type(node.name)


def group_keys(select: exp.Select, node: exp.Table, table: TieredTable, utc: bool
               ) -> list[Key] | None:
    """The GROUP BY keys (named, by output alias or by ordinal: columns of the table,
    `computed_key` expressions, or the columns of other expressions, `columns_of_key`), or
    None when it groups by anything else or a column is read outside the aggregates and the
    keys."""
    group = select.args.get("group")
    outputs = select.expressions
    aliases = {p.alias: p.this for p in outputs if isinstance(p, exp.Alias)}
    keys: dict[str, Key] = {}
    for key in (group.expressions if group is not None else []):
        if isinstance(key, exp.Literal) and key.is_number and key.name.isdigit() \
                and 1 <= int(key.name) <= len(outputs):
            key = outputs[int(key.name) - 1].unalias()
        elif isinstance(key, exp.Column) and not key.table and \
                key.name not in table.column_names and key.name in aliases:
            key = aliases[key.name]
        if _own_column_type(key, node, table) is not None:
            keys.setdefault(key.name, Key(key.name, quote(key.name)))
        elif computed_key(key, node, table, utc):
            text = canonical(key)
            if text not in keys:
                name = f"fig_k{sum(1 for k in keys.values() if k.computed)}"
                keys[text] = Key(name, text, text)
        elif (columns := columns_of_key(key, node, table)) is not None:
            for own in columns:  # Postgres computes the key over the partials' groups
                keys.setdefault(own, Key(own, quote(own), expanded=True))
        else:
            return None
    computed = {k.computed for k in keys.values() if k.computed}
    for column in select.find_all(exp.Column):
        if column.parent_select is not select or column.find_ancestor(
                exp.AggFunc, exp.Group, exp.Where):  # the WHERE is pushed whole
            continue
        if column.name not in keys and column.name not in aliases and \
                not _inside_key(column, select, computed):
            return None
    return list(keys.values())


def _inside_key(column: exp.Column, select: exp.Select, computed: set[str]) -> bool:
    node: exp.Expr | None = column
    while node is not None and node is not select:
        if canonical(node) in computed:
            return True
        node = node.parent
    return False


def replace_computed_keys(select: exp.Select, keys: list[Key]) -> None:
    """Each occurrence of a computed key outside the aggregates becomes its partials column
    (the combined aggregates are already in place)."""
    names = {k.computed: k.name for k in keys if k.computed}
    if not names:
        return
    for node in list(select.walk()):
        if isinstance(node, (exp.Select, exp.Literal, exp.Identifier)) or \
                node.parent_select is not select or node.find_ancestor(exp.AggFunc):
            continue
        name = names.get(canonical(node))
        if name is not None and _attached(node, select):
            node.replace(exp.column(name, quoted=True))


def _attached(node: exp.Expr, root: exp.Expr) -> bool:
    parent: exp.Expr | None = node
    while parent is not None and parent is not root:
        parent = parent.parent
    return parent is root


def canonical(node: exp.Expr) -> str:
    """An expression's text with its columns unqualified (to match GROUP BY keys)."""
    return unqualified(node)


def keep_output_names(select: exp.Select, names: list[str] | None) -> None:
    """Alias projections before their aggregates and computed keys are rewritten, so names
    stay Postgres's: the names Postgres described for the original statement when this is
    its top level."""
    if names is not None and len(names) != len(select.expressions):
        names = None
    for index, projection in enumerate(select.expressions):
        # sqlglot prints expressions back in its own spelling: every one gets its name
        if not isinstance(projection, (exp.Alias, exp.Column, exp.Star)):
            name = names[index] if names is not None else pg_column_name(projection)
            select.expressions[index] = exp.alias_(projection, name, quoted=True)
    select.set("expressions", select.expressions)


def combine(aggregate: exp.AggFunc, ref: exp.Table, table: TieredTable,
            partials: list[Partial]) -> str | None:
    """The final expression over partial columns for one aggregate; adds its partials."""
    if aggregate.args.get("distinct") or isinstance(aggregate.this, exp.Distinct) or \
            isinstance(aggregate.parent, exp.WithinGroup) or aggregate.find(exp.Order):
        return None
    index = len(partials)
    if isinstance(aggregate, exp.Count) and isinstance(aggregate.this, exp.Star) and \
            not isinstance(aggregate.parent, exp.Filter):
        partials.append(Partial("COUNT"))
        return f"CAST(COALESCE(SUM(fig_a{index}), 0) AS bigint)"
    argument = arguments.argument(aggregate, ref, table)
    if argument is None:
        return None
    value, kind = argument.sql, argument.kind
    if isinstance(aggregate, exp.Count):
        partials.append(Partial("COUNT", value))
        return f"CAST(COALESCE(SUM(fig_a{index}), 0) AS bigint)"
    if isinstance(aggregate, (exp.Min, exp.Max)):
        # text min/max follow a collation; a CASE's doubles would lose the cold engine's
        # NaN handling, its mixed numeric scales the row Postgres picks
        if argument.column is not None:
            if not orderable(table, argument.column):
                return None
        elif kind not in ("smallint", "integer", "bigint") and not (
                kind.startswith("numeric") and argument.scale is None):
            return None
        name = "MIN" if isinstance(aggregate, exp.Min) else "MAX"
        partials.append(Partial(name, value))
        return f"{name}(fig_a{index})"
    if isinstance(aggregate, (exp.LogicalAnd, exp.LogicalOr)):
        if kind != "boolean":
            return None
        name = "BOOL_AND" if isinstance(aggregate, exp.LogicalAnd) else "BOOL_OR"
        partials.append(Partial(name, value))
        return f"{name}(fig_a{index})"
    if not isinstance(aggregate, (exp.Sum, exp.Avg)) or (
            kind not in SUM_TYPE and not kind.startswith("numeric")):
        return None
    partials.append(Partial("SUM", value))
    total = f"SUM(fig_a{index})"
    if argument.scale is not None:  # the largest display scale of the values summed
        partials.append(Partial("MAX", argument.scale))
        total = f"round(CAST({total} AS numeric), MAX(fig_a{index + 1}))"
    if isinstance(aggregate, exp.Sum):
        return f"CAST({total} AS {SUM_TYPE.get(kind, 'numeric')})"
    count = len(partials)
    partials.append(Partial("COUNT", value))
    result = AVG_TYPE.get(kind, "numeric")
    return (f"CAST(CAST({total} AS {result}) / "
            f"CAST(NULLIF(SUM(fig_a{count}), 0) AS {result}) AS {result})")
