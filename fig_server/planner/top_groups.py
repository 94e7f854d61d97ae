"""Top groups: ORDER BY ... LIMIT n of a grouped statement pushed into its cold part.

Only when the cold part is the whole answer (route COLD: the hot part is `WHERE false`, and the
cold engine merges its partials into one row per group) and the order is total over the groups
(every GROUP BY key is among the order keys), so the n groups the cold engine keeps are the n
Postgres returns; Postgres still groups, orders and limits those rows itself. Order keys are
the group keys (columns DataFusion orders as Postgres does) and count() or sum() of integers,
whose values are exact in both engines. `top 10 users by requests` then copies 10 rows into the
session instead of one per user.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from fig_server.planner.parts import Route, quote
from fig_server.planner.tiers import TieredTable
from fig_server.planner.topn import integer_literal, orderable

# sum() arguments whose sum is a bigint computed exactly by both engines
EXACT_SUMS = ("smallint", "integer")


@dataclass(frozen=True)
class GroupOrder:
    """The order of a grouped statement: per order key a group key's name or the aggregate
    node it ranks by, its direction and NULLS placement; and how many groups to keep."""

    items: tuple[tuple[str | exp.AggFunc, bool, bool], ...]
    keep: int

    def tail(self, partials: dict[int, int]) -> str:
        """` ORDER BY ... LIMIT n` over the cold part's columns; partials: id() of each
        aggregate node -> the index of its partial (fig_a<i>)."""
        keys = []
        for target, desc, nulls_first in self.items:
            name = target if isinstance(target, str) else f"fig_a{partials[id(target)]}"
            keys.append(f"{name} {'DESC' if desc else 'ASC'} "
                        f"NULLS {'FIRST' if nulls_first else 'LAST'}")
        return f" ORDER BY {', '.join(keys)} LIMIT {self.keep}"


def group_order(select: exp.Select, ref: exp.Table, table: TieredTable, route: Route,
                keys: list[str]) -> GroupOrder | None:
    """The statement's order when its top groups can be taken in the cold part, else None.
    keys: the GROUP BY keys, all columns of the table (no computed or expanded keys)."""
    limit, order = select.args.get("limit"), select.args.get("order")
    if route is not Route.COLD or not isinstance(limit, exp.Limit) or order is None or \
            select.args.get("having") or select.args.get("distinct") or not keys:
        return None
    count = integer_literal(limit.expression)
    offset = select.args.get("offset")
    skip = integer_literal(offset.expression) if offset is not None else 0
    if not count or skip is None:
        return None
    outputs = select.expressions
    named = {p.alias_or_name: p for p in outputs if isinstance(p, (exp.Alias, exp.Column))}
    items: list[tuple[str | exp.AggFunc, bool, bool]] = []
    ordered_keys = set()
    for ordered in order.expressions:
        target = ordered.this
        if isinstance(target, exp.Literal) and target.is_number and target.name.isdigit() \
                and 1 <= int(target.name) <= len(outputs):
            target = outputs[int(target.name) - 1].unalias()
        elif isinstance(target, exp.Column) and not target.table and target.name in named:
            # Postgres reads a bare ORDER BY name as an output column first
            if sum(1 for p in outputs if p.alias_or_name == target.name) != 1:
                return None
            target = named[target.name].unalias()
        desc = bool(ordered.args.get("desc"))
        nulls_first = ordered.args.get("nulls_first")
        nulls_first = desc if nulls_first is None else bool(nulls_first)
        column = _own_column(target, ref, table)
        if column is not None and column in keys and orderable(table, column):
            items.append((quote(column), desc, nulls_first))
            ordered_keys.add(column)
        elif isinstance(target, exp.AggFunc) and _exact(target, ref, table):
            items.append((target, desc, nulls_first))
        else:
            return None
    if ordered_keys != set(keys):
        return None  # not total over the groups: ties could keep other groups than Postgres
    return GroupOrder(tuple(items), count + skip)


def _own_column(node: exp.Expression, ref: exp.Table, table: TieredTable) -> str | None:
    if isinstance(node, exp.Column) and node.name in table.column_names and (
            not node.table or node.table in (ref.alias_or_name, table.name)):
        return node.name
    return None


def _exact(aggregate: exp.AggFunc, ref: exp.Table, table: TieredTable) -> bool:
    """count(*), count(column) or sum(integer column): no DISTINCT, FILTER or ORDER BY."""
    if isinstance(aggregate.parent, (exp.Filter, exp.WithinGroup)) or \
            aggregate.find(exp.Order) or isinstance(aggregate.this, exp.Distinct) or \
            aggregate.args.get("distinct"):
        return False
    if isinstance(aggregate, exp.Count):
        return isinstance(aggregate.this, exp.Star) or \
            _own_column(aggregate.this, ref, table) is not None
    column = _own_column(aggregate.this, ref, table)
    return isinstance(aggregate, exp.Sum) and column is not None and \
        table.column_type(column) in EXACT_SUMS
