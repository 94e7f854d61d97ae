"""Aggregates distributed over the tiers: below a join, each tier's branch joins and
aggregates its own rows, and an outer query combines the branches' results.

join_aggregate puts the UNION ALL of the cold partials (a temp table) and the hot rows in
the fact table's place. Postgres plans that union as one append relation, and a temp table
is parallel-restricted, so the hot rows' joins then run on one core (the benchmark's
star-europe-pro: 1.6 s in Postgres's final step). Written as

    SELECT keys, combined FROM (
        SELECT group keys, aggregates FROM (cold partials) e JOIN ... GROUP BY ...
        UNION ALL
        SELECT group keys, aggregates FROM (hot rows) e JOIN ... GROUP BY ...
    ) GROUP BY keys HAVING ... ORDER BY ... LIMIT ...

the hot branch is the user's own join over hot rows, which Postgres runs in parallel
(0.83 s, the same rows).

Exact when every aggregate re-aggregates: each fact row is in one branch, and the joins,
the WHERE and the GROUP BY keys see it alike in either, so the branches partition each
group's joined rows; sum, min, max, bool_and and bool_or over the branches' results are
those over all the rows (a count is summed). The combined expressions around them
(`CAST(COALESCE(SUM(..), 0) AS bigint)`) stay in the outer query, so result types are the
statement's. Anything else (a DISTINCT or ordered aggregate, a column the outer query would
read that is not a GROUP BY key, a nested query) leaves the statement as it is.
"""

from __future__ import annotations

from sqlglot import exp

# The outer aggregate over the branches' results of each aggregate.
REAGGREGATE: dict[type[exp.Expr], str] = {
    exp.Sum: "SUM", exp.Count: "SUM", exp.Min: "MIN", exp.Max: "MAX",
    exp.LogicalAnd: "BOOL_AND", exp.LogicalOr: "BOOL_OR"}


class _Unfit(Exception):
    """The statement cannot be distributed (never leaves this module)."""


def distribute(select: exp.Select, parts: exp.Subquery) -> bool:
    """Rewrite the select in place into the distributed form over the two arms of parts
    (a source of the select: the UNION ALL of cold partials and hot rows); False, leaving
    it as it is, when that would not be exact."""
    union = parts.this
    if not isinstance(union, exp.Union) or union.args.get("distinct") or \
            select.args.get("distinct") or select.args.get("into"):
        return False
    try:
        keys = _group_keys(select)
        lifted = _Lifted({_text(key): f"fig_g{i}" for i, key in enumerate(keys)})
        outputs = [_lift_output(lifted, p) for p in select.expressions]
        having = select.args.get("having")
        new_having = lifted.lift(having.this) if having is not None else None
        order = select.args.get("order")
        new_order = _lift_order(lifted, order, select) if order is not None else None
    except _Unfit:
        return False
    branch_order = _branch_order(new_order, outputs)
    branches = []
    for arm in (union.this, union.expression):
        parts.set("this", arm.copy())
        branch = select.copy()
        for arg in ("with_", "having", "limit", "offset"):
            branch.set(arg, None)
        branch.set("order", branch_order.copy() if branch_order is not None else None)
        branch.set("expressions", [exp.alias_(k.copy(), f"fig_g{i}")
                                   for i, k in enumerate(keys)] +
                   [exp.alias_(p.copy(), f"fig_p{i}") for i, p in enumerate(lifted.partials)])
        branch.set("group", exp.Group(expressions=[
            exp.Literal.number(i + 1) for i in range(len(keys))]) if keys else None)
        branches.append(exp.paren(branch))
    parts.set("this", union)
    both = exp.union(branches[0], branches[1], distinct=False)
    select.set("expressions", outputs)
    select.set("from_", exp.From(this=exp.Subquery(
        this=both, alias=exp.TableAlias(this=exp.to_identifier("fig_tiers")))))
    select.set("joins", None)
    select.set("where", None)
    select.set("group", exp.Group(expressions=[exp.column(f"fig_g{i}")
                                               for i in range(len(keys))]) if keys else None)
    select.set("having", exp.Having(this=new_having) if new_having is not None else None)
    select.set("order", new_order)
    return True


class _Lifted:
    """The outer query's expressions: GROUP BY keys become the branches' fig_g columns,
    aggregates the re-aggregation of the branches' fig_p columns."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.partials: list[exp.Expr] = []
        self._positions: dict[str, int] = {}

    def lift(self, node: exp.Expr) -> exp.Expr:
        return node.transform(self._replace)

    def _replace(self, node: exp.Expr) -> exp.Expr:
        if not isinstance(node, (exp.Literal, exp.Identifier, exp.Star)):
            name = self.keys.get(_text(node))
            if name is not None:
                return exp.column(name)
        if isinstance(node, (exp.AggFunc, exp.Filter)):
            return self._partial(node)
        if isinstance(node, (exp.Column, exp.Star, exp.Query, exp.Subquery, exp.Window)):
            raise _Unfit  # a column the branches do not group by, or a nested query
        return node

    def _partial(self, node: exp.Expr) -> exp.Expr:
        aggregate = node.this if isinstance(node, exp.Filter) else node
        function = REAGGREGATE.get(type(aggregate))
        if function is None or aggregate.args.get("distinct") or isinstance(
                aggregate.this, exp.Distinct) or aggregate.find(exp.Order) or \
                isinstance(node.parent, exp.WithinGroup):
            raise _Unfit
        text = _text(node)
        if text not in self._positions:
            self._positions[text] = len(self.partials)
            self.partials.append(node.copy())
        column = f"fig_p{self._positions[text]}"
        if isinstance(aggregate, exp.Count):
            return exp.cast(exp.func("COALESCE", exp.func("SUM", exp.column(column)),
                                     exp.Literal.number(0)), "bigint")
        return exp.func(function, exp.column(column))


def _group_keys(select: exp.Select) -> list[exp.Expr]:
    """The GROUP BY items as expressions (ordinals and output names resolved)."""
    group = select.args.get("group")
    if group is None:
        return []
    if any(group.args.get(k) for k in ("rollup", "cube", "grouping_sets", "totals")):
        raise _Unfit
    outputs = select.expressions
    aliases = {p.alias: p.this for p in outputs if isinstance(p, exp.Alias)}
    keys = []
    for item in group.expressions:
        if isinstance(item, exp.Literal) and item.is_number:
            if not item.name.isdigit() or not 1 <= int(item.name) <= len(outputs):
                raise _Unfit
            item = outputs[int(item.name) - 1].unalias()
        elif isinstance(item, exp.Column) and not item.table and item.name in aliases \
                and _text(aliases[item.name]) != _text(item):
            # Postgres reads an input column of that name first: which one is not known here
            raise _Unfit
        if any(item.find_all(exp.AggFunc, exp.Query, exp.Window)):
            raise _Unfit
        keys.append(item)
    return keys


def _lift_output(lifted: _Lifted, projection: exp.Expr) -> exp.Expr:
    """A projection of the outer query, under the name Postgres gives it."""
    if isinstance(projection, exp.Alias):
        return exp.alias_(lifted.lift(projection.this), projection.args["alias"].copy())
    if isinstance(projection, exp.Column) and not isinstance(projection.this, exp.Star):
        return exp.alias_(lifted.lift(projection), projection.name, quoted=True)
    raise _Unfit  # keep_output_names aliased every other projection


def _lift_order(lifted: _Lifted, order: exp.Order, select: exp.Select) -> exp.Order:
    """ORDER BY items: ordinals and bare output names name the outer query's outputs as
    they named the select's; anything else is an expression of keys and aggregates."""
    names = [p.alias_or_name for p in select.expressions]
    items = []
    for ordered in order.expressions:
        this = ordered.this
        if isinstance(this, exp.Column) and not this.table and names.count(this.name) > 1:
            # Postgres takes it when the outputs of that name are one expression; the outer
            # query's would be two columns
            raise _Unfit
        if (isinstance(this, exp.Literal) and this.is_number) or (
                isinstance(this, exp.Column) and not this.table and this.name in names):
            items.append(ordered.copy())
        else:
            item = ordered.copy()
            item.set("this", lifted.lift(this))
            items.append(item)
    return exp.Order(expressions=items)


def _branch_order(order: exp.Order | None, outputs: list[exp.Expr]) -> exp.Order | None:
    """The statement's ORDER BY as far as it sorts by GROUP BY keys, for each branch (by
    the branch's ordinals): it changes no answer, but Postgres then weighs the sorted plans
    it would weigh for the statement itself. Over 5M hot rows grouped by day, the hash
    aggregate it picks without one is planned for a million groups and runs serially
    (1.8 s); sorted, it runs in parallel (1.2 s)."""
    if order is None:
        return None
    named = {p.alias_or_name: p.this for p in outputs if isinstance(p, exp.Alias)}
    items = []
    for ordered in order.expressions:
        this = ordered.this
        if isinstance(this, exp.Literal) and this.is_int and \
                1 <= int(this.name) <= len(outputs):
            this = outputs[int(this.name) - 1].unalias()
        elif isinstance(this, exp.Column) and not this.table and this.name in named:
            this = named[this.name]
        if not isinstance(this, exp.Column) or not this.name.startswith("fig_g"):
            break
        item = ordered.copy()
        item.set("this", exp.Literal.number(int(this.name.removeprefix("fig_g")) + 1))
        items.append(item)
    return exp.Order(expressions=items) if items else None


def _text(node: exp.Expr) -> str:
    """An expression's text with quoting of identifiers dropped, to match GROUP BY keys
    (identifiers are already normalized: unquoted ones are lower case)."""
    return node.transform(lambda n: exp.Identifier(this=n.this, quoted=False)
                          if isinstance(n, exp.Identifier) else n).sql(dialect="postgres")
