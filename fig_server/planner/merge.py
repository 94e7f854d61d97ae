"""Merge: derived tables and CTEs merged into the query that reads them, so the rules after
this one see a tiered reference in the SELECT that filters, aggregates and orders it.

dbt wraps every model in CTEs (`WITH source AS (SELECT * FROM events), renamed AS (...)`),
Metabase nests questions in `(SELECT ...) AS "source"`: read as written, the tiered table's
own SELECT has no WHERE, no GROUP BY and a `*`, so every row of every column would be copied
into the session. sqlglot's `qualify` and `merge_subqueries` (which merge only where the
answer cannot change: no LIMIT, DISTINCT, aggregate or window below an outer one that would
see it differently) rewrite such statements into one SELECT per table reference, or as
close to it as they can: an aggregating CTE read by `SELECT * FROM final` stays a CTE, but
reads the tiered table itself, so the aggregate rule can make its aggregate partial.

Applied only when it is known to be exact: the statement prints back as written (emit), its
every table is a tiered table (qualify must know every column) or a CTE, no column names a
table alias (a whole-row reference such as `row_to_json(s)` would lose its row), the
result again prints back as written (emit.regenerates_exactly), and it nests less. Output
names are then Postgres's own, described for the original statement (Rewrite.describe).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.eliminate_ctes import eliminate_ctes
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.qualify import qualify

from fig_server.planner.emit import (
    REGENERATED_AS_WRITTEN,
    inner_join_as_written,
    regenerates_exactly,
)
from fig_server.planner.tiers import TieredTable

# What merging removes; what is left of it must regenerate exactly (emit.NESTING_ARGS).
NESTING = (exp.With, exp.CTE, exp.Subquery)


def merge_derived(tree: exp.Expression, refs: list[tuple[exp.Table, TieredTable]]
                  ) -> exp.Select | None:
    """The statement with its derived tables and CTEs merged, or None when nothing merges
    or merging is not known to be exact here."""
    if not isinstance(tree, exp.Select) or not any(tree.find_all(exp.Subquery, exp.CTE)):
        return None
    if not all(isinstance(node, (*REGENERATED_AS_WRITTEN, *NESTING)) or inner_join_as_written(node)
               for node in tree.walk()):
        return None
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    tiered = {id(node): table for node, table in refs}
    tables = [t for t in tree.find_all(exp.Table) if t.name]
    unknown = {id(t) for t in tables if id(t) not in tiered and (t.db or t.name not in ctes)}
    if unknown and not _all_qualified(tree, unknown):
        return None  # a table qualify knows no columns of, read by a name it cannot place
    aliases = ctes | {t.alias_or_name for t in tables} | {
        s.alias for s in tree.find_all(exp.Subquery) if s.alias}
    if any(not column.table and column.name in aliases for column in tree.find_all(exp.Column)):
        return None  # maybe a whole-row reference
    # qualify needs the columns' names only (types are not read)
    tables_by_schema: dict[str, dict[str, dict[str, str]]] = {}
    for table in tiered.values():
        tables_by_schema.setdefault(table.schema, {})[table.name] = dict.fromkeys(
            table.column_names, "text")
    schema: dict[str, object] = dict(tables_by_schema)
    copy = tree.copy()
    for original, copied in zip(tree.find_all(exp.Table), copy.find_all(exp.Table),
                                strict=True):
        if id(original) in tiered:  # the schema the session's search_path resolved
            copied.set("db", exp.to_identifier(tiered[id(original)].schema))
    try:
        merged = eliminate_ctes(merge_subqueries(qualify(
            copy, dialect="postgres", schema=schema, expand_alias_refs=False,
            quote_identifiers=False, identify=False)))
    except SqlglotError:
        return None
    # Partly merged is kept too (an aggregating CTE read by `SELECT * FROM final` stays a
    # CTE, but it now reads the tiered table itself, so its aggregate can be partial).
    if not isinstance(merged, exp.Select) or not regenerates_exactly(merged, joins=True) or \
            _nesting(merged) >= _nesting(tree):
        return None
    return merged


def _all_qualified(tree: exp.Expression, unknown: set[int]) -> bool:
    """Every column is qualified by its source, and no `*` reads a source of a select with a
    table whose columns qualify does not know (a hot dimension beside the tiered table): a
    name it cannot place could be that table's, which qualify would not see."""
    for node in tree.walk():
        if isinstance(node, exp.Column) and not node.table and \
                not isinstance(node.this, exp.Star):
            return False
        if isinstance(node, exp.Star) and isinstance(node.parent_select, exp.Select):
            select = node.parent_select
            sources = [select.args.get("from_"), *(select.args.get("joins") or [])]
            if any(source is not None and id(source.this) in unknown for source in sources):
                return False
    return True


def _nesting(tree: exp.Expression) -> int:
    return sum(1 for _ in tree.find_all(exp.Subquery, exp.CTE))


def name_outputs(select: exp.Select, names: list[str]) -> bool:
    """Give the top-level projections the names Postgres described; False when they do not
    line up."""
    if len(names) != len(select.expressions):
        return False
    # ORDER BY names output columns by their aliases (qualify wrote `_col_0`): by position
    # instead, which the new names (maybe two alike) cannot make ambiguous
    positions = {p.alias_or_name: index + 1 for index, p in enumerate(select.expressions)}
    order = select.args.get("order")
    for ordered in order.expressions if order is not None else []:
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table and key.name in positions:
            ordered.set("this", exp.Literal.number(positions[key.name]))
    select.set("expressions", [exp.alias_(p.unalias(), name, quoted=True)
                               for p, name in zip(select.expressions, names, strict=True)])
    return True
