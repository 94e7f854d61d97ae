"""Emit: the backend statement, in the user's own text wherever Fig does not rewrite it.

sqlglot regenerates Postgres SQL with other spellings that Postgres answers differently
(`now()` comes back named current_timestamp, `date_part` becomes EXTRACT and numeric,
`log10(x)` becomes `log(10, x)`, `to_hex` becomes HEX), so the statement sent to the
backend is the client's text with only the tiered references (and the schema of three-part
column names) replaced at their positions. Only a statement whose every node regenerates
as written (see `regenerates_exactly`) may be rewritten as a whole tree, as partial
aggregates need.
"""

from __future__ import annotations

from sqlglot import exp

Edit = tuple[int, int, str]  # start, end (exclusive), replacement

# Node kinds sqlglot prints back as Postgres reads them, with the same result names and types.
REGENERATED_AS_WRITTEN = (
    exp.Select, exp.From, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered,
    exp.Limit, exp.Offset, exp.Column, exp.Identifier, exp.Star, exp.Literal, exp.Alias,
    exp.TableAlias, exp.Table, exp.Paren, exp.Cast, exp.DataType, exp.DataTypeParam,
    exp.Add, exp.Sub, exp.Mul, exp.Neg, exp.Not, exp.And, exp.Or, exp.EQ, exp.NEQ,
    exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.Null, exp.Boolean, exp.In, exp.Between,
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Distinct, exp.Case, exp.If,
    exp.Coalesce, exp.Tuple, exp.Interval, exp.Var, exp.TimestampTrunc, exp.LogicalAnd,
    exp.LogicalOr, exp.Div, exp.Floor, exp.Round, exp.Abs, exp.Nullif, exp.Filter, exp.Mod,
    exp.Like, exp.ILike,
)


# Nesting printed back as written when it carries only its query, its name and column names
# (and a CTE's [NOT] MATERIALIZED): not WITH RECURSIVE, SEARCH or CYCLE, a scalar CTE, or a
# parenthesized query with clauses of its own.
NESTING_ARGS: dict[type, frozenset[str]] = {
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias", "materialized"}),
    exp.Subquery: frozenset({"this", "alias"}),
}


# Inner and cross joins with ON, and comma joins, print back as written (not outer joins,
# USING or NATURAL: only partial aggregates below inner joins regenerate joins).
JOIN_ARGS = frozenset({"this", "on", "kind"})


def regenerates_exactly(tree: exp.Expression, joins: bool = False) -> bool:
    for node in tree.walk():
        if joins and isinstance(node, exp.Join):
            if not inner_join_as_written(node):
                return False
            continue
        allowed = NESTING_ARGS.get(type(node))
        if allowed is None:
            if not isinstance(node, REGENERATED_AS_WRITTEN):
                return False
        elif any(value not in (None, False, []) for key, value in node.args.items()
                 if key not in allowed):
            return False
    return True


def inner_join_as_written(node: exp.Expr) -> bool:
    """An inner, cross or comma join with ON and nothing else (JOIN_ARGS)."""
    return isinstance(node, exp.Join) and (node.kind or "") in ("", "INNER", "CROSS") and \
        all(value in (None, False, []) for key, value in node.args.items()
            if key not in JOIN_ARGS)


def span(node: exp.Expression) -> tuple[int, int] | None:
    """Where a table reference is written: from its first to its last identifier, or None
    when the parser kept no position or the reference ends in something else."""
    if not isinstance(node, exp.Table):
        return None
    alias = node.args.get("alias")
    if alias is not None and alias.args.get("columns"):
        return None  # `events AS e (a, b)`: its closing parenthesis has no position
    if node.args.get("joins") or node.args.get("pivots") or node.args.get("sample") or \
            node.args.get("only") or node.args.get("version") or node.args.get("when"):
        return None
    positions = []
    for identifier in node.find_all(exp.Identifier):
        meta = identifier.meta
        if "start" not in meta or "end" not in meta:
            return None
        positions.append((meta["start"], meta["end"] + 1))
    if not positions:
        return None
    return min(p[0] for p in positions), max(p[1] for p in positions)


def schema_qualifier_edits(tree: exp.Expression, ref: exp.Table) -> list[Edit] | None:
    """Edits dropping `"public".` from `"public"."events"."ts"` (the rewritten reference is
    aliased by the table's name alone), or None when a position is missing."""
    if ref.alias:
        return []
    edits: list[Edit] = []
    for column in tree.find_all(exp.Column):
        db, table = column.args.get("db"), column.args.get("table")
        if table is None or db is None or table.name != ref.name:
            continue
        start, end = db.meta.get("start"), table.meta.get("start")
        if start is None or end is None:
            return None
        catalog = column.args.get("catalog")
        if catalog is not None:
            start = catalog.meta.get("start")
            if start is None:
                return None
        edits.append((start, end, ""))
    return edits


def splice(text: str, edits: list[Edit]) -> str:
    """The text with each span replaced; spans must not overlap."""
    out, position = [], 0
    for start, end, replacement in sorted(edits):
        if start < position:
            raise ValueError("overlapping edits")
        out.append(text[position:start])
        out.append(replacement)
        position = end
    out.append(text[position:])
    return "".join(out)
