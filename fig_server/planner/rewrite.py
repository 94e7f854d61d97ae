"""Rewrite a statement over tiered tables into cold parts plus one statement for the backend.

Each reference to a tiered table becomes
    (SELECT cols FROM pg_temp.<cold rows> UNION ALL SELECT cols FROM t WHERE time >= boundary)
where the cold rows are what the cold engine returns for
    SELECT cols FROM t WHERE time < boundary AND <filters of the query that only use t>
so the backend Postgres finishes the query with its own semantics (types, NULL ordering, time
zones, every function), and the cold engine does the pruning and the heavy scanning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from fig_server.errors import FeatureNotSupported, SqlSyntaxError
from fig_server.planner import bounds, emit
from fig_server.planner.pushdown import conjuncts, pushdown
from fig_server.planner.tiers import TieredSet, TieredTable


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


def tiered_references(tree: exp.Expression, tiered: TieredSet
                      ) -> list[tuple[exp.Table, TieredTable]]:
    cte_names = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    refs = []
    for table in tree.find_all(exp.Table):
        if not table.db and table.name in cte_names:
            continue
        found = tiered.lookup(table.db, table.name)
        if found is not None:
            refs.append((table, found))
    return refs


# The boundary of an attached Iceberg table (fig.attach_iceberg): every row is cold.
ATTACHED_BOUNDARY = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


def cold_only(table: TieredTable) -> bool:
    return table.boundary == ATTACHED_BOUNDARY


def _outer_joined(select: exp.Select, table: exp.Table) -> bool:
    """True when the reference is on a side of an outer join that can be NULL-extended."""
    joins = select.args.get("joins") or []
    if any(j.side in ("RIGHT", "FULL") for j in joins):
        return True
    return any(j.this is table and j.side == "LEFT" for j in joins)


def _columns_needed(tree: exp.Expression, node: exp.Table, table: TieredTable) -> list[str]:
    """Columns of the table the statement may read: all of them under `*`, a whole-row
    reference (`row_to_json(e)`, `e IS NULL`), or a NATURAL/USING join."""
    if any(not isinstance(star.parent, exp.Count) for star in tree.find_all(exp.Star)):
        return list(table.column_names)
    if any(j.args.get("using") or j.method == "NATURAL" or j.kind == "NATURAL"
           for j in tree.find_all(exp.Join)):
        return list(table.column_names)
    alias = node.alias_or_name
    used = set()
    for column in tree.find_all(exp.Column):
        if not column.table and column.name == alias and column.name not in table.column_names:
            return list(table.column_names)  # the reference's row as a value
        used.add(column.name)
    picked = [name for name in table.column_names if name in used]
    return picked or [table.column_names[0]]


# Order keys whose order DataFusion shares with Postgres (text is ordered by a collation).
ORDERABLE = {"smallint", "integer", "bigint", "date", "timestamp without time zone",
             "timestamp with time zone", "double precision"}


def _top_n(select: exp.Select, node: exp.Table, table: TieredTable) -> str:
    """ORDER BY ... LIMIT n for the cold part of a plain top-n over the table; only called
    when every conjunct of the WHERE is pushed."""
    order, limit = select.args.get("order"), select.args.get("limit")
    if order is None or limit is None or select.args.get("joins") or select.args.get("group") \
            or select.args.get("distinct") or select.args.get("having"):
        return ""
    if any(select.find_all(exp.Window, exp.AggFunc)):
        return ""
    count = _integer_literal(limit.expression)
    offset_node = select.args.get("offset")
    skip = _integer_literal(offset_node.expression) if offset_node is not None else 0
    if count is None or skip is None:
        return ""  # a parameter or an expression: Postgres knows its value, we do not
    outputs = {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
    keys = []
    for ordered in order.expressions:
        key = ordered.this
        if not isinstance(key, exp.Column) or key.name not in table.column_names or (
                key.table and key.table not in (node.alias_or_name, table.name)):
            return ""
        if not key.table and key.name in outputs:
            return ""  # ORDER BY names an output column first
        if table.column_type(key.name) not in ORDERABLE and not NUMERIC_TYPE.match(
                table.column_type(key.name)):
            return ""
        desc = bool(ordered.args.get("desc"))
        nulls_first = ordered.args.get("nulls_first")
        nulls = "FIRST" if (desc if nulls_first is None else nulls_first) else "LAST"
        keys.append(f'"{key.name}" {"DESC" if desc else "ASC"} NULLS {nulls}')
    return f" ORDER BY {', '.join(keys)} LIMIT {count + skip}"


NUMERIC_TYPE = re.compile(r"^numeric(\(\d+,\d+\))?$")


def _integer_literal(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and node.is_number and node.name.isdigit():
        return int(node.name)
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


EXPLAIN = re.compile(r"^\s*explain\s+(?:(analyze)\s+|\(([^)]*)\)\s*)?", re.IGNORECASE)


def rewrite(sql: str, tiered: TieredSet, forced: str = "auto",
            constants: Mapping[str, Any] | None = None, slot: str = "q0",
            output_names: list[str] | None = None) -> Rewrite | None:
    """The plan for one statement, or None when it touches no tiered table's cold rows.

    constants: values (UTC) of the expressions a first call listed in `needs`.
    slot: names the statement within its session (a prepared statement's name, or the
    position in a simple query), so its temp tables are its own and stable across runs.
    output_names: the result column names Postgres described for the statement, kept when
    the top-level projections are rewritten (see `describe`).
    """
    explain = EXPLAIN.match(sql)
    analyze = bool(explain and (explain.group(1) or "analyze" in (explain.group(2) or "").lower()))
    body = sql[explain.end():] if explain else sql
    try:
        tree = parse(body)
    except SqlSyntaxError as exc:
        if QUERY_LIKE.match(sql):
            raise FeatureNotSupported(
                f"statement over a tiered table that Fig cannot plan: {exc.message}") from exc
        return None
    refs = tiered_references(tree, tiered)
    if not refs or forced == "hot":
        return None
    writes = isinstance(tree, WRITES) or any(True for _ in tree.find_all(exp.Update, exp.Delete))
    if not writes and not isinstance(tree, exp.Query):
        return None
    if any(isinstance(node, exp.Lock) for node in tree.walk()):
        raise FeatureNotSupported("SELECT ... FOR UPDATE/SHARE of a tiered table is not "
                                  "supported: its cold rows cannot be locked")
    route = Route.COLD if forced == "cold" else Route.SPLIT
    if constants is None:
        needed = sorted({need for node, table in refs for need in _needs(node, table)},
                        key=lambda n: n.key)
        if needed:
            return Rewrite(route, sql, needs=needed)
    # Positions are taken before anything in the tree changes.
    edits: dict[int, list[emit.Edit] | None] = {}
    for node, table in refs:
        where = emit.span(node)
        qualifiers = emit.schema_qualifier_edits(tree, node)
        edits[id(node)] = None if where is None or qualifiers is None else [
            (*where, ""), *qualifiers]
        bounds.substitute(_where_of(node), node, table, constants or {})
        _unqualify_schema(tree, node, table)
    # Whether the tree prints back as the user's statement, with the bounds substituted.
    as_written = emit.regenerates_exactly(tree)
    if writes:
        return _check_write(sql, tree, refs, slot, bool(explain))
    parts: list[ColdPart] = []
    routes: set[Route] = set()
    spliced: list[emit.Edit] = []
    for table_node, table in refs:
        if table.boundary is None and route is Route.SPLIT:
            continue  # nothing has left hot yet: hot alone holds every row
        part_route = route
        if route is Route.SPLIT and table.boundary is not None:
            lower, upper = _time_range(table_node, table)
            if lower is not None and lower >= bounds.boundary_value(table):
                continue  # every row this reference can reach is still in hot
            if (upper is not None and upper < bounds.boundary_value(table)) \
                    or cold_only(table):
                part_route = Route.COLD
        if table.row_security:
            raise FeatureNotSupported(
                f"{table.qualified} has row-level security enabled: its cold rows cannot be "
                "served with the policy applied", hint="SET fig.route = 'hot' reads hot rows only")
        routes.add(part_route)
        reference_edits = edits[id(table_node)]
        part = _rewrite_reference(tree, table_node, table, part_route, f"{slot}:{len(parts)}",
                                  output_names, aggregate=as_written)
        parts.append(part)
        if reference_edits is not None and part.replacement is not None:
            (start, end, _), *qualifiers = reference_edits
            spliced += [(start, end, part.replacement), *qualifiers]
    if not parts:
        return None
    final = Route.COLD if routes == {Route.COLD} else route
    describe = output_names is None and any(
        p.aggregated and isinstance(tree, exp.Select) for p in parts)
    return Rewrite(final, _emit(body, tree, parts, spliced, as_written), parts, bool(explain),
                   analyze, describe=describe)


def _emit(body: str, tree: exp.Expression, parts: list[ColdPart], spliced: list[emit.Edit],
          as_written: bool) -> str:
    """The user's text with the references replaced; the regenerated tree only where that
    is exact (partial aggregates rewrite projections, and need it)."""
    if all(p.replacement is not None for p in parts) and \
            len(spliced) >= len(parts):
        try:
            return emit.splice(body, spliced)
        except ValueError:
            pass
    if as_written:
        return tree.sql(dialect="postgres")
    raise FeatureNotSupported(
        "this spelling of a tiered table reference (a column alias list, TABLESAMPLE, ONLY) "
        "in a statement Fig cannot regenerate exactly",
        hint="write the table reference as `schema.table [AS alias]`")


def _where_of(ref: exp.Table) -> exp.Expression | None:
    """The WHERE that filters this reference directly (its own SELECT, UPDATE or DELETE),
    or None when the reference is on a side of an outer join that can be NULL-extended."""
    owner = ref.find_ancestor(exp.Select, exp.Update, exp.Delete)
    if owner is None or (isinstance(owner, exp.Select) and _outer_joined(owner, ref)):
        return None
    where = owner.args.get("where")
    return where if isinstance(where, exp.Where) else None


def _needs(ref: exp.Table, table: TieredTable) -> list[bounds.Need]:
    if table.boundary is None:
        return []
    return bounds.needs(_where_of(ref), ref, table)


def _time_range(ref: exp.Table, table: TieredTable) -> tuple[Any, Any]:
    """The lower and upper bounds the WHERE puts on the time column (after bounds were
    substituted), each in the column's own type, or None."""
    lower = upper = None
    kind = table.column_type(table.time_column)
    for condition in conjuncts(_where_of(ref)):
        sides: list[tuple[exp.Expression, str]] = []
        if isinstance(condition, exp.Between) and _is_time_column(condition.this, ref, table):
            sides = [(condition.args["low"], "lower"), (condition.args["high"], "upper")]
        elif isinstance(condition, (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.EQ)):
            left, right = condition.this, condition.expression
            lower_kinds = (exp.GT, exp.GTE) if _is_time_column(left, ref, table) else (
                (exp.LT, exp.LTE) if _is_time_column(right, ref, table) else None)
            if lower_kinds is None:
                continue
            other = right if _is_time_column(left, ref, table) else left
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


def _is_time_column(node: exp.Expression, ref: exp.Table, table: TieredTable) -> bool:
    return isinstance(node, exp.Column) and node.name == table.time_column and \
        node.table in ("", ref.alias_or_name, table.name)


def _rewrite_reference(tree: exp.Expression, node: exp.Table, table: TieredTable,
                       route: Route, slot: str, names: list[str] | None,
                       aggregate: bool) -> ColdPart:
    select = node.parent_select
    filters: list[str] = []
    top_n = ""
    if isinstance(select, exp.Select) and not _outer_joined(select, node):
        single = not select.args.get("joins")
        where = _where_of(node)
        if aggregate and pushdown(where, node, table, single).complete:
            # the tree is regenerated: both tiers see the same evaluated bounds
            filters = pushdown(where, node, table, single).pushed
            part = _partial_aggregate(select, node, table, route, filters, slot, names)
            if part is not None:
                return part
        # The user's own text runs: a bound that moves with the clock (now()) is later there
        # than when Fig evaluated it, so only its lower bounds keep every row.
        pushed = pushdown(where, node, table, single, moving_upper=False)
        filters = pushed.pushed
        if pushed.complete:
            top_n = _top_n(select, node, table)
    cols = ", ".join(_quote(c) for c in _columns_needed(tree, node, table))
    source = f"{_quote(table.schema)}.{_quote(table.name)}"
    if isinstance(select, exp.Select) and _duplicates_irrelevant(select):
        top_n = f" GROUP BY {cols}"  # distinct rows are enough: far fewer to copy
    cold_sql = f"SELECT {cols} FROM {source}{_where(_cold_filters(table, route, filters))}{top_n}"
    shape_sql = f"SELECT {cols} FROM {source}"
    temp = _temp_name(table, shape_sql, slot)
    parts_sql = f"SELECT {cols} FROM pg_temp.{temp} UNION ALL {shape_sql} WHERE "
    # Without a hot part, `WHERE false` still makes Postgres check the user's privileges.
    parts_sql += _hot_filter(table) if route is Route.SPLIT else "false"
    alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
    replacement = f"({parts_sql}) AS {alias.sql(dialect='postgres')}"
    node.replace(exp.Subquery(this=parse(parts_sql), alias=alias.copy()))
    return ColdPart(table, cold_sql, shape_sql, temp, replacement=replacement)


def _unqualify_schema(tree: exp.Expression, node: exp.Table, table: TieredTable) -> None:
    """`"public"."events"."ts"` names a FROM entry the rewrite replaces by a subquery aliased
    `events`: such columns keep only the table qualifier."""
    if node.alias:
        return
    for column in tree.find_all(exp.Column):
        if column.table == node.name and column.db:
            column.set("db", None)
            column.set("catalog", None)


# Aggregates whose result does not change when duplicate input rows are removed.
DUPLICATE_INSENSITIVE = (exp.Min, exp.Max, exp.LogicalAnd, exp.LogicalOr)


def _duplicates_irrelevant(select: exp.Select) -> bool:
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


def _where(filters: list[str]) -> str:
    return f" WHERE {' AND '.join(f'({f})' for f in filters)}" if filters else ""


def _cold_filters(table: TieredTable, route: Route, filters: list[str]) -> list[str]:
    if route is Route.SPLIT:
        bound = bounds.boundary_literal(table)
        return [f"{_quote(table.time_column)} < {bound}", *filters]
    return filters


def _hot_filter(table: TieredTable) -> str:
    time = _quote(table.time_column)
    return f"({time} >= {bounds.boundary_literal(table)} OR {time} IS NULL)"


def _temp_name(table: TieredTable, shape_sql: str, slot: str) -> str:
    key = f"{table.qualified}:{shape_sql}:{slot}"
    return "fig_cold_" + hashlib.sha1(key.encode()).hexdigest()[:12]


# Result type of sum() and avg() by argument type, as Postgres defines them.
# bigint sums are left to Postgres: DataFusion's int64 partial sum would overflow silently;
# real sums to Postgres too: its float4 accumulator rounds differently.
SUM_TYPE = {"smallint": "bigint", "integer": "bigint", "double precision": "double precision"}
AVG_TYPE = {"double precision": "double precision"}


def _partial_aggregate(select: exp.Select, node: exp.Table, table: TieredTable, route: Route,
                       filters: list[str], slot: str, names: list[str] | None
                       ) -> ColdPart | None:
    """Push GROUP BY and count/sum/min/max/avg into both tiers; the outer query combines."""
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
    keys = _group_keys(select, node, table)
    if keys is None or any(_combine(aggregate, table, []) is None for aggregate in aggregates):
        return None
    # Only now, with the pushdown certain, rename projections and rewrite their aggregates.
    _keep_output_names(select, names if select.parent is None else None)
    partials: list[str] = []
    finals: list[tuple[exp.AggFunc, str]] = []
    for aggregate in select.find_all(exp.AggFunc):
        if aggregate.parent_select is select:
            finals.append((aggregate, str(_combine(aggregate, table, partials))))
    key_cols = [_quote(k) for k in keys]
    source = f"{_quote(table.schema)}.{_quote(table.name)}"
    select_list = ", ".join(key_cols + [f"{p} AS fig_a{i}" for i, p in enumerate(partials)])
    group_by = f" GROUP BY {', '.join(key_cols)}" if key_cols else ""
    cold_sql = (f"SELECT {select_list} FROM {source}"
                f"{_where(_cold_filters(table, route, filters))}{group_by}")
    shape_sql = f"SELECT {select_list} FROM {source}{group_by}"
    temp = _temp_name(table, shape_sql, slot)
    partial_names = ", ".join(key_cols + [f"fig_a{i}" for i in range(len(partials))])
    hot_where = _where([_hot_filter(table), *filters]) if route is Route.SPLIT else " WHERE false"
    parts_sql = (f"SELECT {partial_names} FROM pg_temp.{temp} "
                 f"UNION ALL SELECT {select_list} FROM {source}{hot_where}{group_by}")
    for aggregate, combined in finals:
        aggregate.replace(parse(f"SELECT {combined}").expressions[0])
    select.set("where", None)
    alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
    node.replace(exp.Subquery(this=parse(parts_sql), alias=alias.copy()))
    return ColdPart(table, cold_sql, shape_sql, temp, aggregated=True)


def _group_keys(select: exp.Select, node: exp.Table, table: TieredTable) -> list[str] | None:
    """The table's columns the GROUP BY names (by name, output alias or ordinal), or None when
    it groups by anything else or another column is read outside the aggregates."""
    group = select.args.get("group")
    outputs = select.expressions
    aliases = {p.alias: p.this for p in outputs if isinstance(p, exp.Alias)}
    keys: list[str] = []
    for key in (group.expressions if group is not None else []):
        if isinstance(key, exp.Literal) and key.is_number and key.name.isdigit() \
                and 1 <= int(key.name) <= len(outputs):
            key = outputs[int(key.name) - 1].unalias()
        elif isinstance(key, exp.Column) and not key.table and \
                key.name not in table.column_names and key.name in aliases:
            key = aliases[key.name]
        if not isinstance(key, exp.Column) or key.name not in table.column_names or (
                key.table and key.table not in (node.alias_or_name, table.name)):
            return None
        keys.append(key.name)
    for column in select.find_all(exp.Column):
        if column.parent_select is not select or column.find_ancestor(
                exp.AggFunc, exp.Group, exp.Where):  # the WHERE is pushed whole
            continue
        if column.name not in keys and column.name not in aliases:
            return None
    return list(dict.fromkeys(keys))


def pg_column_name(node: exp.Expression) -> str:
    """The name Postgres gives an unaliased output column (FigureColname's rules)."""
    if isinstance(node, exp.Column):
        return "?column?" if isinstance(node.this, exp.Star) else node.name
    if isinstance(node, exp.Cast):
        inner = pg_column_name(node.this)
        return inner if inner != "?column?" else node.to.sql(dialect="postgres").lower()
    if isinstance(node, exp.Paren):
        return pg_column_name(node.this)
    if isinstance(node, exp.Coalesce):
        return "coalesce"
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Func):
        name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
        return name.lower()
    return "?column?"


def _keep_output_names(select: exp.Select, names: list[str] | None) -> None:
    """Alias projections before their aggregates are rewritten, so names stay Postgres's:
    the names Postgres described for the original statement when this is its top level."""
    if names is not None and len(names) != len(select.expressions):
        names = None
    for index, projection in enumerate(select.expressions):
        if not isinstance(projection, exp.Alias) and projection.find(exp.AggFunc):
            name = names[index] if names is not None else pg_column_name(projection)
            select.expressions[index] = exp.alias_(projection, name, quoted=True)
    select.set("expressions", select.expressions)


def _combine(aggregate: exp.AggFunc, table: TieredTable, partials: list[str]) -> str | None:
    """The final expression over partial columns for one aggregate; adds its partials."""
    if aggregate.args.get("distinct") or isinstance(aggregate.this, exp.Distinct) or \
            isinstance(aggregate.parent, (exp.Filter, exp.WithinGroup)) or \
            aggregate.find(exp.Filter, exp.Order):
        return None
    argument = aggregate.this
    if isinstance(aggregate, exp.Count) and isinstance(argument, exp.Star):
        partials.append("COUNT(*)")
        return f"CAST(COALESCE(SUM(fig_a{len(partials) - 1}), 0) AS bigint)"
    if not isinstance(argument, exp.Column) or argument.name not in table.column_names:
        return None
    column = _quote(argument.name)
    kind = table.column_type(argument.name)
    index = len(partials)
    if isinstance(aggregate, exp.Count):
        partials.append(f"COUNT({column})")
        return f"CAST(COALESCE(SUM(fig_a{index}), 0) AS bigint)"
    if isinstance(aggregate, (exp.Min, exp.Max)):
        if kind not in ORDERABLE and not NUMERIC_TYPE.match(kind):
            return None  # text min/max follow a collation
        name = "MIN" if isinstance(aggregate, exp.Min) else "MAX"
        partials.append(f"{name}({column})")
        return f"{name}(fig_a{index})"
    if isinstance(aggregate, exp.Sum):
        if kind not in SUM_TYPE and not kind.startswith("numeric"):
            return None
        partials.append(f"SUM({column})")
        return f"CAST(SUM(fig_a{index}) AS {SUM_TYPE.get(kind, 'numeric')})"
    if isinstance(aggregate, exp.Avg):
        if kind not in SUM_TYPE and not kind.startswith("numeric"):
            return None
        partials.extend([f"SUM({column})", f"COUNT({column})"])
        result = AVG_TYPE.get(kind, "numeric")
        return (f"CAST(CAST(SUM(fig_a{index}) AS {result}) / "
                f"CAST(NULLIF(SUM(fig_a{index + 1}), 0) AS {result}) AS {result})")
    return None


def _check_write(sql: str, tree: exp.Expression, refs: list[tuple[exp.Table, TieredTable]],
                 slot: str, explain: bool) -> Rewrite | None:
    """Writes whose time bounds keep them above the boundary are Postgres's alone (CDC carries
    them); others are planned to reach cold too, or refused, never half-applied."""
    reaching = []
    for node, table in refs:
        if table.boundary is None:
            continue
        lower, _ = _time_range(node, table)
        if lower is None or cold_only(table) or lower < bounds.boundary_value(table):
            reaching.append((node, table))
    if not reaching:
        return None
    node, table = reaching[0]
    if cold_only(table):
        raise FeatureNotSupported(f"{table.qualified} is an attached Iceberg table: it is "
                                  "read-only", hint="write to it with an Iceberg writer")
    if explain:
        raise _write_refused(table, "EXPLAIN of an UPDATE/DELETE that may reach cold rows")
    if not isinstance(tree, (exp.Update, exp.Delete)) or tree.this is not node or len(refs) > 1:
        raise _write_refused(table, "a write naming the table anywhere but as the target of "
                             "one UPDATE or DELETE")
    if tree.args.get("returning"):
        raise _write_refused(table, "RETURNING")
    return Rewrite(Route.SPLIT, sql, write=_cold_write(tree, node, table, slot))


def _write_refused(table: TieredTable, construct: str) -> FeatureNotSupported:
    return FeatureNotSupported(
        f"{construct} is not supported on {table.qualified} once rows have moved to the cold "
        "tier (below its tier boundary)",
        hint="a plain UPDATE or DELETE of the table, outside a transaction block, reaches cold")


def _cold_write(tree: exp.Update | exp.Delete, node: exp.Table, table: TieredTable,
                slot: str) -> ColdWrite:
    """The candidate cold rows and the backend query computing what to write in cold."""
    alias = node.alias_or_name
    if not node.alias:
        for column in tree.find_all(exp.Column):  # public.events.id -> events.id
            if column.table == node.name:
                column.set("db", None)
    sources = tree.args.get("using") if isinstance(tree, exp.Delete) else (
        [tree.args["from_"].this] if tree.args.get("from_") else [])
    filters = pushdown(_where_of(node), node, table, single_source=not sources).pushed
    columns = list(table.column_names)
    cols = ", ".join(_quote(c) for c in columns)
    source = f"{_quote(table.schema)}.{_quote(table.name)}"
    shape_sql = f"SELECT {cols} FROM {source}"
    cold_sql = f"{shape_sql}{_where(_cold_filters(table, Route.SPLIT, filters))}"
    part = ColdPart(table, cold_sql, shape_sql, _temp_name(table, shape_sql, f"{slot}:w"))
    assigned = _assignments(tree, table) if isinstance(tree, exp.Update) else {}
    qualified = f"{_quote(alias)}."
    projections = [assigned[c].sql(dialect="postgres") if c in assigned
                   else qualified + _quote(c) for c in columns]
    projections.append(qualified + _quote(table.time_column))
    from_items = [f"pg_temp.{part.temp_table} AS {_quote(alias)}"]
    from_items += [item.sql(dialect="postgres") for item in sources or []]
    where = tree.args.get("where")
    with_ = tree.args.get("with_")
    stage_sql = ((with_.sql(dialect="postgres") + " " if with_ else "")
                 + f"SELECT {', '.join(projections)} FROM {', '.join(from_items)}"
                 + (" " + where.sql(dialect="postgres") if where else ""))
    kind = "UPDATE" if isinstance(tree, exp.Update) else "DELETE"
    return ColdWrite(kind, table, part, stage_sql, list(assigned))


def _assignments(tree: exp.Update, table: TieredTable) -> dict[str, exp.Expression]:
    """Column -> new value expression of an UPDATE's SET list."""
    out: dict[str, exp.Expression] = {}
    for item in tree.expressions:
        target = item.this if isinstance(item, exp.EQ) else None
        if not isinstance(target, exp.Column) or target.name not in table.column_names:
            raise _write_refused(table, "this form of SET list (row or subscripted assignment)")
        value = item.expression
        if isinstance(value, exp.Column) and value.name.lower() == "default" \
                and not value.table:
            raise _write_refused(table, "SET column = DEFAULT")
        out[target.name] = value
    return out


DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
QUERY_LIKE = re.compile(r"^\s*(?:\(\s*)*(?:select|with|table|values|explain)\b", re.IGNORECASE)


def plan_body(sql: str) -> str:
    """The statement an EXPLAIN explains, or the statement itself."""
    explain = EXPLAIN.match(sql)
    return sql[explain.end():] if explain else sql


def split_statements(sql: str) -> list[str]:
    """The statements of a simple-query string, split at top-level semicolons."""
    from sqlglot.tokens import Tokenizer, TokenType

    if DOLLAR_QUOTE.search(sql):
        return [sql]  # the tokenizer does not know dollar quoting: leave such text whole
    try:
        tokens = Tokenizer(dialect="postgres").tokenize(sql)
    except Exception:
        return [sql]
    statements, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append(sql[start:token.end + 1])
            start = token.end + 1
    if sql[start:].strip():
        statements.append(sql[start:])
    return [s for s in statements if s.strip().rstrip(";").strip()] or [sql]
