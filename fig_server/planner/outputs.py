"""Output columns as Postgres names them: an alias, else FigureColname's rules."""

from __future__ import annotations

from sqlglot import exp

# Functions sqlglot names otherwise than Postgres does.
PG_FUNCTION_NAMES: dict[type[exp.Expression], str] = {
    exp.TimestampTrunc: "date_trunc", exp.LogicalAnd: "bool_and", exp.LogicalOr: "bool_or"}


def pg_column_name(node: exp.Expression) -> str:
    """The name Postgres gives an unaliased output column (FigureColname's rules)."""
    if isinstance(node, exp.Column):
        return "?column?" if isinstance(node.this, exp.Star) else node.name
    if isinstance(node, exp.Cast):
        inner = pg_column_name(node.this)
        return inner if inner != "?column?" else node.to.sql(dialect="postgres").lower()
    if isinstance(node, (exp.Paren, exp.Filter)):
        return pg_column_name(node.this)
    if isinstance(node, exp.Coalesce):
        return "coalesce"
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Func):
        if isinstance(node, exp.Anonymous):
            return node.name.lower()
        return PG_FUNCTION_NAMES.get(type(node), node.sql_name().lower())
    return "?column?"


def output_columns(select: exp.Select) -> dict[str, list[exp.Expression]]:
    """Output column name -> the expressions of that name, named as Postgres names them
    (an alias, else FigureColname's rules: `amount::int` is named amount)."""
    columns: dict[str, list[exp.Expression]] = {}
    for projection in select.expressions:
        name = projection.alias if isinstance(projection, exp.Alias) else \
            pg_column_name(projection)
        columns.setdefault(name, []).append(projection.unalias())
    return columns
