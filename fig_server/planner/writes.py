"""Writes: an UPDATE or DELETE that may reach rows below the boundary, applied to both tiers
or refused, never half-applied."""

from __future__ import annotations

from sqlglot import exp

from fig_server.errors import FeatureNotSupported
from fig_server.planner import bounds
from fig_server.planner.parts import (
    ColdPart,
    ColdWrite,
    Rewrite,
    Route,
    cold_filters,
    cold_only,
    quote,
    temp_name,
    time_range,
    where_of,
    where_sql,
)
from fig_server.planner.pushdown import pushdown
from fig_server.planner.tiers import TieredTable


def check_write(sql: str, tree: exp.Expression, refs: list[tuple[exp.Table, TieredTable]],
                 slot: str, explain: bool) -> Rewrite | None:
    """Writes whose time bounds keep them above the boundary are Postgres's alone (CDC carries
    them); others are planned to reach cold too, or refused, never half-applied."""
    reaching = []
    for node, table in refs:
        if table.boundary is None:
            continue
        lower, _ = time_range(node, table)
        if lower is None or cold_only(table) or lower < bounds.boundary_value(table):
            reaching.append((node, table))
    if not reaching:
        return None
    node, table = reaching[0]
    if cold_only(table):
        raise FeatureNotSupported(f"{table.qualified} is an attached Iceberg table: it is "
                                  "read-only", hint="write to it with an Iceberg writer")
    if explain:
        raise write_refused(table, "EXPLAIN of an UPDATE/DELETE that may reach cold rows")
    if not isinstance(tree, (exp.Update, exp.Delete)) or tree.this is not node or len(refs) > 1:
        raise write_refused(table, "a write naming the table anywhere but as the target of "
                             "one UPDATE or DELETE")
    if tree.args.get("returning"):
        raise write_refused(table, "RETURNING")
    return Rewrite(Route.SPLIT, sql, write=cold_write(tree, node, table, slot))


def write_refused(table: TieredTable, construct: str) -> FeatureNotSupported:
    return FeatureNotSupported(
        f"{construct} is not supported on {table.qualified} once rows have moved to the cold "
        "tier (below its tier boundary)",
        hint="a plain UPDATE or DELETE of the table, outside a transaction block, reaches cold")


def cold_write(tree: exp.Update | exp.Delete, node: exp.Table, table: TieredTable,
                slot: str) -> ColdWrite:
    """The candidate cold rows and the backend query computing what to write in cold."""
    alias = node.alias_or_name
    if not node.alias:
        for column in tree.find_all(exp.Column):  # public.events.id -> events.id
            if column.table == node.name:
                column.set("db", None)
    sources = tree.args.get("using") if isinstance(tree, exp.Delete) else (
        [tree.args["from_"].this] if tree.args.get("from_") else [])
    filters = pushdown(where_of(node), node, table).pushed
    columns = list(table.column_names)
    cols = ", ".join(quote(c) for c in columns)
    source = f"{quote(table.schema)}.{quote(table.name)}"
    shape_sql = f"SELECT {cols} FROM {source}"
    cold_sql = f"{shape_sql}{where_sql(cold_filters(table, Route.SPLIT, filters))}"
    part = ColdPart(table, cold_sql, shape_sql, temp_name(table, shape_sql, f"{slot}:w"))
    assigned = assignments(tree, table) if isinstance(tree, exp.Update) else {}
    qualified = f"{quote(alias)}."
    projections = [assigned[c].sql(dialect="postgres") if c in assigned
                   else qualified + quote(c) for c in columns]
    projections.append(qualified + quote(table.time_column))
    from_items = [f"pg_temp.{part.temp_table} AS {quote(alias)}"]
    from_items += [item.sql(dialect="postgres") for item in sources or []]
    where = tree.args.get("where")
    with_ = tree.args.get("with_")
    stage_sql = ((with_.sql(dialect="postgres") + " " if with_ else "")
                 + f"SELECT {', '.join(projections)} FROM {', '.join(from_items)}"
                 + (" " + where.sql(dialect="postgres") if where else ""))
    kind = "UPDATE" if isinstance(tree, exp.Update) else "DELETE"
    return ColdWrite(kind, table, part, stage_sql, list(assigned))


def assignments(tree: exp.Update, table: TieredTable) -> dict[str, exp.Expression]:
    """Column -> new value expression of an UPDATE's SET list."""
    out: dict[str, exp.Expression] = {}
    for item in tree.expressions:
        target = item.this if isinstance(item, exp.EQ) else None
        if not isinstance(target, exp.Column) or target.name not in table.column_names:
            raise write_refused(table, "this form of SET list (row or subscripted assignment)")
        value = item.expression
        if isinstance(value, exp.Column) and value.name.lower() == "default" \
                and not value.table:
            raise write_refused(table, "SET column = DEFAULT")
        out[target.name] = value
    return out
