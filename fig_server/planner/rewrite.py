"""Plan a statement over tiered tables: the one planner, its rules run in a fixed order.

    references (which tiered tables the statement reads)
    -> merge      derived tables and CTEs merged into their readers (planner/merge.py)
    -> bounds     column-free comparands evaluated once by the session (planner/bounds.py)
    -> pushdown   pushed vs residual conjuncts per reference (planner/pushdown.py)
    -> aggregate  partial aggregates, only when the push is complete (planner/aggregate.py)
    -> top-n      ORDER BY ... LIMIT, only when the push is complete (planner/topn.py)
    -> emit       the user's own text with the references replaced (planner/emit.py)
    (writes reaching cold rows: planner/writes.py)

Each reference to a tiered table becomes
    (SELECT cols FROM pg_temp.<cold rows> UNION ALL SELECT cols FROM t WHERE time >= boundary)
where the cold rows are what the cold engine returns for
    SELECT cols FROM t WHERE time < boundary AND <pushed conjuncts>
so the backend Postgres finishes the query with its own semantics (types, NULL ordering, time
zones, every function), and the cold engine does the pruning and the heavy scanning.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from fig_server.errors import FeatureNotSupported, SqlSyntaxError
from fig_server.planner import bounds, emit
from fig_server.planner.aggregate import duplicates_irrelevant, partial_aggregate
from fig_server.planner.classify import (
    DECLARE,
    Kind,
    classify,
    command_refusal,
    copy_as_query,
    function_refusal,
    tiered_references,
    view_references,
)
from fig_server.planner.join_aggregate import join_aggregate
from fig_server.planner.merge import merge_derived, name_outputs
from fig_server.planner.parts import (
    ColdPart,
    ColdWrite,
    Rewrite,
    Route,
    cold_filters,
    cold_only,
    hot_filter,
    hot_rows,
    late_guard,
    outer_joined,
    parse,
    quote,
    temp_name,
    time_range,
    where_of,
    where_sql,
)
from fig_server.planner.preview import hot_first_rows
from fig_server.planner.pushdown import pushdown
from fig_server.planner.semi_join import reducers
from fig_server.planner.tiers import TieredSet, TieredTable
from fig_server.planner.topn import top_n
from fig_server.planner.writes import check_write

__all__ = ["ColdPart", "ColdWrite", "Rewrite", "Route", "plan_body", "rewrite",
           "split_statements"]


def _columns_needed(tree: exp.Expression, node: exp.Table, table: TieredTable) -> list[str]:
    """Columns of the table the statement may read: those named unqualified or by the
    reference's alias; all of them under `*`, a whole-row reference (`row_to_json(e)`,
    `e IS NULL`), or a NATURAL/USING join."""
    if any(not isinstance(star.parent, exp.Count) for star in tree.find_all(exp.Star)):
        return list(table.column_names)
    if any(j.args.get("using") or j.method == "NATURAL" or j.kind == "NATURAL"
           for j in tree.find_all(exp.Join)):
        return list(table.column_names)
    if any(True for _ in tree.find_all(exp.Lambda)):
        # sqlglot reads `f(j -> 'k')` as a lambda whose `j` is no column: take them all
        return list(table.column_names)
    alias = node.alias_or_name
    used = set()
    for column in tree.find_all(exp.Column):
        if not column.table and column.name == alias and column.name not in table.column_names:
            return list(table.column_names)  # the reference's row as a value
        if column.table and column.table != alias:
            continue  # another source's (`u.id`): Postgres reads this one only by its alias
        used.add(column.name)
    picked = [name for name in table.column_names if name in used]
    return picked or [table.column_names[0]]


EXPLAIN = re.compile(r"^\s*explain\s+(?:(analyze)\s+|\(([^)]*)\)\s*)?", re.IGNORECASE)


def rewrite(sql: str, tiered: TieredSet, forced: str = "auto",
            constants: Mapping[str, Any] | None = None, slot: str = "q0",
            output_names: list[str] | None = None, same_clock: bool = False,
            utc: bool = False) -> Rewrite | None:
    """The plan for one statement, or None when it touches no tiered table's cold rows.

    constants: values (UTC) of the expressions a first call listed in `needs`.
    slot: names the statement within its session (a prepared statement's name, or the
    position in a simple query), so its temp tables are its own and stable across runs.
    output_names: the result column names Postgres described for the statement, kept when
    the top-level projections are rewritten (see `describe`).
    same_clock: the statement runs in the transaction the constants were evaluated in (a
    transaction block), so its now() and current_date are theirs.
    utc: the session's TimeZone is UTC, where timestamptz values truncate and convert to
    dates in the cold engine as in Postgres (planner/aggregate.py, `computed_key`).
    """
    explain = EXPLAIN.match(sql)
    analyze = bool(explain and (explain.group(1) or "analyze" in (explain.group(2) or "").lower()))
    body = sql[explain.end():] if explain else sql
    refusal = command_refusal(body, tiered)
    if refusal is not None:
        raise refusal
    declare = DECLARE.match(body)
    if declare is not None and not explain:
        return _cursor(body, declare, tiered, forced, constants, same_clock, utc)
    copied = copy_as_query(body, tiered)
    body = copied or body
    try:
        tree = parse(body)
    except SqlSyntaxError as exc:
        if QUERY_LIKE.match(sql):
            raise FeatureNotSupported(
                f"statement over a tiered table that Fig cannot plan: {exc.message}") from exc
        return None
    body, tree = _expand_views(body, tree, tiered)
    # unquoted names as Postgres stores them: FROM EVENTS, WHERE STATUS = 500
    tree = normalize_identifiers(tree, dialect="postgres")
    if forced != "hot":
        function_refusal(body, tree, tiered)
    statement = classify(tree, tiered_references(tree, tiered))
    if statement.kind is Kind.RELAY or forced == "hot":
        return None
    refs = statement.reads
    writes = statement.kind is Kind.WRITE
    hot_first = hot_first_rows(tree, refs[0][0]) \
        if statement.kind is Kind.READ and len(refs) == 1 and not copied else None
    merged = merge_derived(tree, refs) if statement.kind is Kind.READ else None
    if merged is not None and output_names is not None and \
            not name_outputs(merged, output_names):
        merged = None
    as_sent = body
    if merged is not None:
        # planned from here on as if written merged (positions are those of this text)
        body = merged.sql(dialect="postgres")
        tree = parse(body)
        refs = tiered_references(tree, tiered)
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
    # Every reference's edits first: the three-part column names a reference's edits strip
    # may sit in another reference's scope, which the loop below changes.
    edits: dict[int, list[emit.Edit] | None] = {}
    for node, _ in refs:
        where = emit.span(node)
        qualifiers = emit.schema_qualifier_edits(tree, node)
        edits[id(node)] = None if where is None or qualifiers is None else [
            (*where, ""), *qualifiers]
    for node, table in refs:
        bounds.substitute(where_of(node), node, table, constants or {})
        _unqualify_schema(tree, node, table)
    # Whether the tree prints back as the user's statement, with the bounds substituted.
    as_written = emit.regenerates_exactly(tree)
    # ... and with inner joins, for partial aggregates below a join (planner/join_aggregate)
    joins_as_written = emit.regenerates_exactly(tree, joins=True)
    if writes:
        return check_write(sql, tree, refs, slot, bool(explain))
    parts: list[ColdPart] = []
    routes: set[Route] = set()
    spliced: list[emit.Edit] = []
    for table_node, table in refs:
        if table.boundary is None and route is Route.SPLIT:
            continue  # nothing has left hot yet: hot alone holds every row
        if route is Route.COLD:  # forced: Iceberg as it is, no late change waited for
            table = dataclasses.replace(table, oid=0, late=(), own_late=False)
        part_route = route
        if route is Route.SPLIT and table.boundary is not None:
            lower, upper = time_range(table_node, table)
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
        alone = sum(1 for n, _ in refs if n.parent_select is table_node.parent_select) == 1
        owner = table_node.parent_select
        found = reducers(owner, table_node, table, tiered, tree) \
            if isinstance(owner, exp.Select) else ()
        part = _rewrite_reference(tree, table_node, table, part_route, f"{slot}:{len(parts)}",
                                  output_names, aggregate=as_written, same_clock=same_clock,
                                  utc=utc, below_join=joins_as_written and alone)
        part.reducers = found
        parts.append(part)
        if reference_edits is not None and part.replacement is not None:
            (start, end, _), *qualifiers = reference_edits
            spliced += [(start, end, part.replacement),
                        *(q for q in qualifiers if q not in spliced)]
    if not parts:
        # It reads tiered tables, but hot alone holds every row it can reach: hot answers,
        # and the caller holds the boundary lock until it has (retention must not move rows
        # out of hot under it).
        return Rewrite(Route.HOT, as_sent, [], bool(explain), analyze)
    final = Route.COLD if routes == {Route.COLD} else route
    describe = output_names is None and (merged is not None or any(
        p.aggregated and isinstance(tree, exp.Select) for p in parts))
    regenerated = as_written or (joins_as_written and any(p.aggregated for p in parts))
    return Rewrite(final, _emit(body, tree, parts, spliced, regenerated), parts, bool(explain),
                   analyze, describe=describe,
                   hot_first=hot_first if final is Route.SPLIT and len(parts) == 1 else None)


def _cursor(body: str, declare: re.Match[str], tiered: TieredSet, forced: str,
            constants: Mapping[str, Any] | None, same_clock: bool, utc: bool
            ) -> Rewrite | None:
    """DECLARE ... CURSOR FOR <query>: the query planned under the cursor's own slot (its
    cold rows must stay while the cursor is open), the DECLARE text kept."""
    plan = rewrite(body[declare.end():], tiered, forced, constants,
                   slot=f"cursor:{declare.group(1)}", same_clock=same_clock, utc=utc)
    if plan is None or plan.needs:
        return plan
    if plan.explain:
        raise FeatureNotSupported("EXPLAIN inside DECLARE")
    plan.sql = body[:declare.end()] + plan.sql
    plan.hot_first = None  # a cursor's rows are read later, in its transaction
    return plan


def _expand_views(body: str, tree: exp.Expression, tiered: TieredSet
                  ) -> tuple[str, exp.Expression]:
    """Each reference to a view that reads a tiered table replaced by the view's definition
    (as the session's pg_get_viewdef prints it), until none is left."""
    for _ in range(MAX_VIEW_DEPTH):
        views = [(node, view) for node, view in view_references(tree, tiered)
                 if view.kind == "v"]
        if not views:
            return body, tree
        edits = []
        for node, view in views:
            where = emit.span(node)
            if where is None:
                raise FeatureNotSupported(
                    f"this spelling of a reference to the view {view.schema}.{view.name}, "
                    "which reads a tiered table", hint="write it as `schema.view [AS alias]`")
            alias = node.args.get("alias")
            name = alias.sql(dialect="postgres") if alias is not None else quote(view.name)
            definition = view.definition.strip().rstrip(";")
            edits.append((*where, f"({definition}) AS {name}"))
        body = emit.splice(body, edits)
        tree = parse(body)
    raise FeatureNotSupported(f"views over tiered tables nested more than {MAX_VIEW_DEPTH} deep")


MAX_VIEW_DEPTH = 16


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


def _needs(ref: exp.Table, table: TieredTable) -> list[bounds.Need]:
    if table.boundary is None:
        return []
    return bounds.needs(where_of(ref), ref, table)


def _rewrite_reference(tree: exp.Expression, node: exp.Table, table: TieredTable,
                       route: Route, slot: str, names: list[str] | None,
                       aggregate: bool, same_clock: bool, utc: bool,
                       below_join: bool = False) -> ColdPart:
    select = node.parent_select
    filters: list[str] = []
    tail = guard = ""
    hot_top_n = False
    if isinstance(select, exp.Select) and not outer_joined(select, node):
        single = not select.args.get("joins")
        where = where_of(node)
        if aggregate and pushdown(where, node, table).complete:
            # the tree is regenerated: both tiers see the same evaluated bounds
            filters = pushdown(where, node, table).pushed
            part = partial_aggregate(select, node, table, route, filters, slot, names, utc)
            if part is not None:
                return part
        elif below_join and not single:
            part = join_aggregate(select, node, table, route, slot, names, utc)
            if part is not None:
                return part
        # The user's own text runs: outside the transaction Fig evaluated a bound that moves
        # with the clock (now()) in, it is later there, so only its lower bounds (and guarded
        # dates) keep every row.
        pushed = pushdown(where, node, table, moving_upper=same_clock)
        filters = pushed.pushed
        if pushed.guards:
            guard = bounds.guard_sql(pushed.guards)
        if pushed.complete_for(select.args.get("order")):
            tail = top_n(select, node, table)
            # The hot branch takes the same top-n: Postgres sorts a UNION ALL whole rather
            # than merge its branches from an index (1.4 s for 5M hot rows, not 30 ms). Only
            # when the pushed filters are the whole filter, exactly (no clock bound pushed
            # wider, the tree printing back as written): the LIMIT then runs after the very
            # filter the outer query applies.
            hot_top_n = bool(tail) and aggregate and pushed.complete and not pushed.guards
    cols = ", ".join(quote(c) for c in _columns_needed(tree, node, table))
    source = f"{quote(table.schema)}.{quote(table.name)}"
    if isinstance(select, exp.Select) and duplicates_irrelevant(select):
        tail = f" GROUP BY {cols}"  # distinct rows are enough: far fewer to copy
        hot_top_n = False
    cold_sql = f"SELECT {cols} FROM {source}{where_sql(cold_filters(table, route, filters))}{tail}"
    shape_sql = f"SELECT {cols} FROM {source}"
    temp = temp_name(table, shape_sql, slot)
    # Without a hot part, `WHERE false` still makes Postgres check the user's privileges.
    hot = hot_filter(table) if route is Route.SPLIT else "false"
    late = late_guard(table)
    cold_branch = f"SELECT {cols} FROM pg_temp.{temp}"
    if guard:  # a one-time filter of each branch that runs (bounds.GUARD)
        cold_branch += f" WHERE {guard} AND {late}" if late else f" WHERE {guard}"
        parts_sql = f"{cold_branch} UNION ALL {shape_sql} WHERE ({hot}) AND {guard}"
    else:
        cold_branch += f" WHERE {late}" if late else ""
        if route is not Route.SPLIT:
            hot_branch = f"{shape_sql} WHERE false"
        else:
            hot_branch = hot_rows(table, shape_sql, filters, tail) if hot_top_n \
                else hot_rows(table, shape_sql, [])
        parts_sql = f"{cold_branch} UNION ALL {hot_branch}"
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


DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
QUERY_LIKE = re.compile(r"^\s*(?:\(\s*)*(?:select|with|table|values|explain)\b", re.IGNORECASE)


# Statements that change what the session evaluates: TimeZone, DateStyle, search_path,
# fig.route...
SESSION_CHANGE = re.compile(r"^\s*(?:set|reset|discard)\b", re.IGNORECASE)


def refuse_after_session_change(statements: list[str], planned: list[bool]) -> None:
    """Fig plans every statement of a simple Query before the first runs, in the session as
    it is: a SET earlier in the same Query would change it under a statement planned
    without it (its bounds evaluated in the old TimeZone, say)."""
    for index, federated in enumerate(planned):
        if federated and any(SESSION_CHANGE.match(s) for s in statements[:index]):
            raise FeatureNotSupported(
                "a statement over a tiered table after SET, RESET or DISCARD in the same "
                "simple Query", hint="send the SET as a query of its own first")


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
