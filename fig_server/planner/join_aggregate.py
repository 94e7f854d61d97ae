"""Partial aggregates below a join: a tiered table joined to other tables (a fact table and
its hot dimensions) is aggregated in both tiers by the columns the rest of the statement
reads of it, before the join.

`SELECT u.plan, count(*), sum(e.amount) FROM events e JOIN users u ON u.user_id = e.user_id
WHERE e.ts >= X GROUP BY u.plan` copies the partials `user_id, count(*), sum(amount)` grouped
by user_id instead of every event. Exact for inner joins: a partial row stands for the c
rows of its group, which all join the same rows of the other tables (they agree on every
column the join, the WHERE and the output read), so summing counts and sums over the joined
partial rows counts and sums each original joined row once; min/max and DISTINCT aggregates
of the other tables' columns see the same values. Aggregates whose result would change by
the grouping (sum of a dimension's column) leave the statement as it is.

A column the statement reads only inside `date_trunc(unit, e.ts)` or `CAST(e.ts AS date)`
that DataFusion computes as Postgres does (aggregate.computed_key) is a key as that
expression: the partials are grouped by day, not by the raw timestamp.
"""

from __future__ import annotations

from sqlglot import exp

from fig_server.planner.aggregate import (
    DUPLICATE_INSENSITIVE,
    GROUPABLE,
    Key,
    Partial,
    canonical,
    combine,
    computed_key,
    keep_output_names,
    replace_by_partials,
)
from fig_server.planner.distribute import distribute
from fig_server.planner.parts import ColdPart, Route, parse, quote
from fig_server.planner.pushdown import pushdown
from fig_server.planner.tiers import TieredTable

# Column types both engines group alike (aggregate.GROUPABLE), timestamps too: here they are
# read by the rest of the statement, whether grouping by them reduces anything or not.
TIMESTAMPS = ("timestamp with time zone", "timestamp without time zone")


def join_aggregate(select: exp.Select, node: exp.Table, table: TieredTable, route: Route,
                   slot: str, names: list[str] | None, utc: bool) -> ColdPart | None:
    """Partial aggregates of the reference below the select's inner joins, or None. utc:
    the session's TimeZone is UTC (aggregate.computed_key)."""
    if not _inner_joins_only(select, node) or select.args.get("distinct") or any(
            select.find_all(exp.Window)):
        return None
    group = select.args.get("group")
    if group is not None and any(group.args.get(k) for k in ("rollup", "cube",
                                                              "grouping_sets", "totals")):
        return None
    aggregates = [a for a in select.find_all(exp.AggFunc) if a.parent_select is select]
    if not aggregates:
        return None
    combined = []
    for aggregate in aggregates:
        if combine(aggregate, node, table, []) is not None:
            combined.append(aggregate)
        elif not _insensitive(aggregate):
            return None  # sum(u.x): each joined row would count once, not c times
        # else: left as written (count(DISTINCT e.user_id): its columns become keys)
    pushed = pushdown(select.args.get("where"), node, table)
    filters = pushed.pushed
    if pushed.guards or pushed.loose:
        return None
    keys = _keys(select, node, table, combined, pushed.residual, utc)
    if keys is None:
        return None
    keep_output_names(select, names if select.parent is None else None)  # copies them
    combined = [a for a in select.find_all(exp.AggFunc) if a.parent_select is select and
                combine(a, node, table, []) is not None]
    partials: list[Partial] = []
    finals = [(a.parent if isinstance(a.parent, exp.Filter) else a,
               str(combine(a, node, table, partials))) for a in combined]
    for target, final in finals:
        target.replace(parse(f"SELECT {final}").expressions[0])
    residual = [c.copy() for c in pushed.residual]
    select.set("where", exp.Where(this=exp.and_(*residual)) if residual else None)
    _replace_computed(select, node, table, keys, utc)
    # The hot rows' own partials, ungrouped: grouped first, 5M hot rows took Postgres 6.5 s,
    # where its own plan filters and joins them (Postgres holding every row: 1.3 s).
    holder = node.parent
    part = replace_by_partials(node, table, route, filters, slot, keys, partials,
                               each_row=True)
    if route is Route.SPLIT and holder is not None and isinstance(holder.this, exp.Subquery):
        part.distributed = distribute(select, holder.this)
    return part


def _inner_joins_only(select: exp.Select, node: exp.Table) -> bool:
    """The reference is a source of the select, joined to the others by inner joins with ON
    (no USING, NATURAL or LATERAL: their columns are not plainly the sources')."""
    joins = select.args.get("joins") or []
    if not joins or not isinstance(node.parent, (exp.From, exp.Join)) or \
            node.parent.parent is not select:
        return False
    return all(not j.side and (j.kind or "") in ("", "INNER", "CROSS") and
               not j.args.get("using") and not j.args.get("method") and
               isinstance(j.this, (exp.Table, exp.Subquery)) for j in joins)


def _mine(column: exp.Column, node: exp.Table, table: TieredTable) -> bool:
    """The column is the reference's: qualified by its name, or unqualified and one of the
    table's (another source's column of that name would make the statement ambiguous, an
    error Postgres reports when it describes the statement)."""
    if column.table:
        return column.table == node.alias_or_name and not column.db
    return column.name in table.column_names


def _insensitive(aggregate: exp.AggFunc) -> bool:
    """Its result is the same over the joined rows however many each partial row stands
    for: min, max, bool_and/or, or DISTINCT, without FILTER or ORDER BY."""
    if isinstance(aggregate.parent, (exp.Filter, exp.WithinGroup)) or \
            aggregate.find(exp.Order):
        return False
    return isinstance(aggregate, DUPLICATE_INSENSITIVE) or isinstance(
        aggregate.this, exp.Distinct)


def _keys(select: exp.Select, node: exp.Table, table: TieredTable,
          combined: list[exp.AggFunc], residual: list[exp.Expression], utc: bool
          ) -> list[Key] | None:
    """The reference's columns the statement reads outside the combined aggregates and the
    pushed filters (as computed keys where each is read only inside them), or None when one
    is read from a nested query or by a `*`."""
    inside = {id(n) for a in combined
              for n in (a.parent if isinstance(a.parent, exp.Filter) else a).walk()}
    kept_where = {id(n) for c in residual for n in c.walk()}
    where = select.args.get("where")
    raw: list[str] = []
    computed: dict[str, set[str]] = {}  # column -> canonical texts of its computed keys
    for column in select.find_all(exp.Column):
        if id(column) in inside or isinstance(column.this, exp.Star):
            if isinstance(column.this, exp.Star) and column.table in (node.alias_or_name, ""):
                return None
            continue
        if where is not None and column.find_ancestor(exp.Where) is where and \
                id(column) not in kept_where:
            continue  # a pushed conjunct: both tiers applied it
        if column.parent_select is not select:
            if _derived(column.parent_select, select):
                continue  # a derived table's own column (the other sources)
            if _mine(column, node, table) or not column.table:
                return None  # maybe the reference's, read by a nested query
            continue
        if not _mine(column, node, table):
            continue
        key = _computed(column, node, table, utc)
        if key is not None:
            computed.setdefault(column.name, set()).add(canonical(key))
            continue
        kind = table.column_type(column.name)
        if not GROUPABLE.match(kind) and kind not in TIMESTAMPS:
            return None
        if column.name not in raw:
            raw.append(column.name)
    if any(isinstance(e, exp.Star) for e in select.expressions):
        return None
    keys = [Key(name, quote(name)) for name in raw]
    texts = sorted(t for name, found in computed.items() if name not in raw for t in found)
    keys += [Key(f"fig_k{i}", text, text) for i, text in enumerate(texts)]
    for name in computed:  # read raw elsewhere too: the raw column is the key
        kind = table.column_type(name)
        if name in raw and not GROUPABLE.match(kind) and kind not in TIMESTAMPS:
            return None
    return keys


def _computed(column: exp.Column, node: exp.Table, table: TieredTable, utc: bool
              ) -> exp.Expr | None:
    """The aggregate.computed_key expression directly around the column, outside any
    aggregate (one left as written reads the raw column), or None."""
    parent = column.parent
    if not isinstance(parent, exp.Expression) or column.find_ancestor(exp.AggFunc) or \
            not computed_key(parent, node, table, utc):
        return None
    return parent


def _replace_computed(select: exp.Select, node: exp.Table, table: TieredTable,
                      keys: list[Key], utc: bool) -> None:
    """Each computed key expression of the reference's column becomes the partials' column
    (qualified by the reference, as other sources may have columns of that name)."""
    names = {k.computed: k.name for k in keys if k.computed}
    if not names:
        return
    for column in list(select.find_all(exp.Column)):
        if column.parent_select is not select or not _mine(column, node, table):
            continue
        key = _computed(column, node, table, utc)
        if key is not None and canonical(key) in names:
            alias = node.args.get("alias")
            source = (alias.this if alias is not None else node.this).copy()
            key.replace(exp.Column(this=exp.to_identifier(names[canonical(key)], quoted=True),
                                   table=source))


def _derived(inner: exp.Select | None, select: exp.Select) -> bool:
    """The inner query is (inside) a derived table among the select's sources."""
    node: exp.Expr | None = inner
    while node is not None and node is not select:
        if isinstance(node.parent, (exp.From, exp.Join)) and node.parent.parent is select:
            return True
        node = node.parent
    return False

