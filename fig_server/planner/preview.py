"""Hot first: a statement whose answer is any n rows of rows computed one by one from a tiered
table's rows (a table preview, `dbt show`) can be answered by hot alone when hot holds n.

Without ORDER BY, `LIMIT n` returns any n rows of the result. When the result is computed
row by row from one table's rows (projections and filters, through subqueries and CTEs), the
result over hot's rows is a part of the result over every row: if it has n rows, they are
an answer Postgres holding every row could give, and cold need not be read. The session asks
hot first (Federator.load) and reads cold only when hot has fewer.
"""

from __future__ import annotations

from sqlglot import exp

from fig_server.planner.topn import integer_literal

# Nodes after which a query's result over some of its rows is not a part of its result over
# all of them (aggregates count, windows number, set operations and joins combine), or that
# the probe would run twice (a function Fig does not know may write: nextval, a user's own).
_NOT_ROW_BY_ROW = (exp.AggFunc, exp.Window, exp.SetOperation, exp.Join, exp.Lateral,
                   exp.Placeholder, exp.Parameter, exp.Anonymous, exp.Lock, exp.Into)

# Clauses of a select on the way to the table that make it other than row by row.
_CLAUSES = ("joins", "laterals", "group", "having", "distinct", "qualify", "limit", "offset",
            "into", "locks")


def hot_first_rows(tree: exp.Expression, reference: exp.Table) -> int | None:
    """n when the statement is `LIMIT n [OFFSET m]` without ORDER BY over rows computed one
    by one from the one tiered reference; else None. (With OFFSET, n rows from hot alone
    mean hot holds n + m: the whole result has n rows to give too.)"""
    if not isinstance(tree, exp.Select) or tree.args.get("order") or \
            any(isinstance(node, _NOT_ROW_BY_ROW) for node in tree.walk()):
        return None
    limit, offset = tree.args.get("limit"), tree.args.get("offset")
    count = integer_literal(limit.expression) if isinstance(limit, exp.Limit) else None
    skip = integer_literal(offset.expression) if offset is not None else 0
    if not count or skip is None:
        return None
    if any(w.args.get("recursive") for w in tree.find_all(exp.With)):
        return None
    ctes = {cte.alias_or_name: cte.this for cte in tree.find_all(exp.CTE)}
    chain = _chain(tree, reference, ctes, depth=0)
    if chain is None:
        return None
    kept = {id(select) for select in chain}
    if any(id(select) not in kept for select in tree.find_all(exp.Select)):
        return None  # a subquery elsewhere (an IN, an EXISTS, a scalar)
    if any(select.args.get(clause) for select in chain[1:] for clause in _CLAUSES) or any(
            tree.args.get(clause) for clause in _CLAUSES if clause not in ("limit", "offset")):
        return None
    return count


def _chain(select: exp.Select, reference: exp.Table, ctes: dict[str, exp.Expression],
           depth: int) -> list[exp.Select] | None:
    """The selects from this one down to the reference, through FROM alone."""
    from_ = select.args.get("from_")
    source = from_.this if from_ is not None else None
    if source is reference:
        return [select]
    if depth > len(ctes) + 64:
        return None
    inner: exp.Expression | None = None
    if isinstance(source, exp.Subquery):
        inner = source.this
    elif isinstance(source, exp.Table) and not source.db and source.name in ctes:
        inner = ctes[source.name]
    if not isinstance(inner, exp.Select):
        return None
    rest = _chain(inner, reference, ctes, depth + 1)
    return None if rest is None else [select, *rest]

