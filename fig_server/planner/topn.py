"""Top-n: ORDER BY ... LIMIT n (or a bare LIMIT n) pushed into a cold part, only when its
filter is complete."""

from __future__ import annotations

import re

from sqlglot import exp

from fig_server.planner.outputs import output_columns
from fig_server.planner.tiers import TieredTable

# Order keys whose order DataFusion shares with Postgres (text is ordered by a collation).
ORDERABLE = {"smallint", "integer", "bigint", "date", "timestamp without time zone",
             "timestamp with time zone", "double precision"}


def top_n(select: exp.Select, node: exp.Table, table: TieredTable) -> str:
    """ORDER BY ... LIMIT n for the cold part of a plain top-n over the table; only called
    when every conjunct of the WHERE is pushed."""
    order, limit = select.args.get("order"), select.args.get("limit")
    if limit is None or select.args.get("joins") or select.args.get("group") \
            or select.args.get("distinct") or select.args.get("having"):
        return ""
    if any(select.find_all(exp.Window, exp.AggFunc)):
        return ""
    count = integer_literal(limit.expression)
    offset_node = select.args.get("offset")
    skip = integer_literal(offset_node.expression) if offset_node is not None else 0
    if count is None or skip is None or count == 0:
        # a parameter or an expression: Postgres knows its value, we do not; LIMIT 0 needs
        # no cold rows' order (and the cold engine's top-n heap wants at least one row)
        return ""
    if order is None:
        # LIMIT without ORDER BY (a table preview): any n rows are Postgres's answer
        return f" LIMIT {count + skip}"
    outputs = output_columns(select)
    keys = []
    for ordered in order.expressions:
        key = ordered.this
        if not isinstance(key, exp.Column) or key.name not in table.column_names or (
                key.table and key.table not in (node.alias_or_name, table.name)):
            return ""
        if not key.table and key.name in outputs and not _same_column(
                outputs[key.name], key.name, node, table):
            return ""  # ORDER BY names an output column first: `amount::int AS amount`
        if not orderable(table, key.name):
            return ""
        desc = bool(ordered.args.get("desc"))
        nulls_first = ordered.args.get("nulls_first")
        nulls = "FIRST" if (desc if nulls_first is None else nulls_first) else "LAST"
        keys.append(f'"{key.name}" {"DESC" if desc else "ASC"} NULLS {nulls}')
    return f" ORDER BY {', '.join(keys)} LIMIT {count + skip}"


def _same_column(expressions: list[exp.Expression], name: str, node: exp.Table,
                 table: TieredTable) -> bool:
    """Every output of that name is the table's own column of that name: ordering by it is
    ordering by the column (`select *`, `select amount`)."""
    return all(isinstance(e, exp.Column) and e.name == name and name in table.column_names
               and (not e.table or e.table in (node.alias_or_name, table.name))
               for e in expressions)


NUMERIC_TYPE = re.compile(r"^numeric(\(\d+,\d+\))?$")


def integer_literal(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and node.is_number and node.name.isdigit():
        return int(node.name)
    return None


def orderable(table: TieredTable, column: str) -> bool:
    """DataFusion orders the column's values as Postgres does: numbers and times, and text
    under a byte-ordered collation (C, C.UTF-8)."""
    kind = table.column_type(column)
    text = kind in ("text", "character varying") or kind.startswith("character varying(")
    return kind in ORDERABLE or bool(NUMERIC_TYPE.match(kind)) or (
        text and table.orders_as_bytes(column))
