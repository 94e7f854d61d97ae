"""Plan a cold SELECT: per-table scans (what workers run over each unit) and the final SQL the
coordinator runs over what the scans return."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyiceberg.schema import Schema
from pyiceberg.types import (
    DateType,
    DoubleType,
    FloatType,
    NestedField,
    TimestampType,
    TimestamptzType,
)
from sqlglot import exp

from fig_server.cold.aggregates import canonical, has_aggregate, split_aggregate, unqualify
from fig_server.cold.datafusion_sql import datafusion_sql
from fig_server.cold.literals import constant, parse_date_or_timestamp, parse_timestamp
from fig_server.cold.topn import OrderKey
from fig_server.cold.worker import ROW_MARKER
from fig_server.errors import FeatureNotSupported, UndefinedTable

PG = "postgres"


@dataclass
class TableBinding:
    """One table reference of the query and the Iceberg schema it reads."""

    key: str
    alias: str
    schema: Schema
    node: exp.Table

    def resolve(self, column: exp.Column) -> NestedField | None:
        """The field a column names if it belongs to this reference."""
        qualifier = column.table
        if qualifier and qualifier not in (self.alias, self.node.name):
            return None
        return find_field(self.schema, column.this)


def find_field(schema: Schema, ident: exp.Expression) -> NestedField | None:
    name = ident.name
    for f in schema.fields:
        if f.name == name:
            return f
    if not (isinstance(ident, exp.Identifier) and ident.quoted):
        lowered = name.lower()
        for f in schema.fields:
            if f.name.lower() == lowered:
                return f
    return None


@dataclass
class ScanPart:
    """One table reference's scan: pushed filter, columns, worker SQL, optional top-n."""

    binding: TableBinding
    placeholder: str
    where: exp.Expr | None
    fields: list[NestedField]
    worker_sql: str
    order: OrderKey | None = None
    merge_sql: str | None = None
    # Partial columns of a worker SQL that is only count(*) (no GROUP BY): files whose
    # partitions imply the WHERE can be answered from manifest record counts.
    count_columns: tuple[str, ...] | None = None
    # LIMIT n (plus OFFSET) of a scan without ORDER BY: the scan stops at n rows.
    limit: int | None = None


@dataclass
class QueryPlan:
    kind: str
    parts: list[ScanPart]
    final_sql: str
    output_names: dict[str, str] = field(default_factory=dict)
    # The coordinator's SQL over any split of the scan's rows, concatenated, is its SQL over
    # them all (no ORDER BY, LIMIT, DISTINCT or GROUP BY): results may be passed on in pieces.
    streams: bool = False
    # When that SQL only picks and names columns of the scan's rows: (column, output name)
    # pairs, () for SELECT *; None when it computes anything. With rows: it then keeps
    # (offset, count) of them (LIMIT without ORDER BY; count None for OFFSET alone).
    projection: tuple[tuple[str, str], ...] | None = None
    rows: tuple[int, int | None] | None = None


def table_key(node: exp.Table, tables: Mapping[str, object]) -> str | None:
    """The key of `tables` a table reference names ("public.events" or "events")."""
    candidates = []
    if node.db:
        candidates.append(f"{node.db}.{node.name}")
    candidates.append(node.name)
    if not node.db:
        candidates.append(f"public.{node.name}")
    elif node.db == "public":
        candidates.append(node.name)
    return next((c for c in candidates if c in tables), None)


def bind_tables(tree: exp.Expression, schemas: Mapping[str, Schema]) -> list[TableBinding]:
    """Every reference to a cold table, in query order; unknown tables are an error."""
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    bindings = []
    for node in tree.find_all(exp.Table):
        if not node.name or (not node.db and node.name in ctes):
            continue
        key = table_key(node, schemas)
        if key is None:
            raise UndefinedTable(f'relation "{node.sql(dialect=PG)}" does not exist')
        bindings.append(TableBinding(key, node.alias_or_name, schemas[key], node))
    if not bindings:
        raise FeatureNotSupported("cold query without a cold table")
    return bindings


def plan_query(tree: exp.Expr, schemas: Mapping[str, Schema]) -> QueryPlan:
    """Choose scan, aggregate or general plan and build the SQL of each step."""
    if not isinstance(tree, exp.Select | exp.Union | exp.Intersect | exp.Except):
        raise FeatureNotSupported(f"{tree.key.upper()} statements on the cold tier")
    bindings = bind_tables(tree, schemas)
    normalize_time_literals(tree, bindings)
    if isinstance(tree, exp.Select) and _is_single_table(tree, bindings):
        binding = bindings[0]
        if has_aggregate(tree):
            plan = _aggregate_plan(tree, binding)
            if plan is not None:
                return plan
        else:
            return _scan_plan(tree, binding)
    return _general_plan(tree, bindings)


def _is_single_table(select: exp.Select, bindings: list[TableBinding]) -> bool:
    if len(bindings) != 1 or select.args.get("joins") or select.args.get("with"):
        return False
    from_ = select.args.get("from_")
    if from_ is None or from_.this is not bindings[0].node:
        return False
    if any(True for _ in select.find_all(exp.Window, exp.Subquery)):
        return False
    if any(s is not select for s in select.find_all(exp.Select)):
        return False
    distinct = select.args.get("distinct")
    return not (distinct and distinct.args.get("on"))


def _fields_used(tree: exp.Expression, binding: TableBinding,
                 exclusive: list[TableBinding] | None = None) -> list[NestedField]:
    """Fields of the table that the query may read (all of them under *)."""
    if any(True for _ in tree.find_all(exp.Star)) and not _only_count_star(tree):
        return list(binding.schema.fields)
    ids = set()
    for column in tree.find_all(exp.Column):
        found = binding.resolve(column)
        if found is not None:
            ids.add(found.field_id)
    return [f for f in binding.schema.fields if f.field_id in ids]


def _projection(fields: list[NestedField]) -> list[exp.Expression]:
    """Columns a worker returns; a row marker when the query needs none (count(*))."""
    if not fields:
        return [exp.column(ROW_MARKER)]
    return [exp.column(f.name, quoted=True) for f in fields]


def _only_count_star(tree: exp.Expression) -> bool:
    return all(isinstance(star.parent, exp.Count) for star in tree.find_all(exp.Star))


def _replace_table(tree: exp.Expression, binding: TableBinding, placeholder: str) -> None:
    alias = exp.TableAlias(this=exp.to_identifier(binding.alias))
    binding.node.replace(exp.Table(this=exp.to_identifier(placeholder), alias=alias))


def _strip_schema_qualifiers(tree: exp.Expression) -> None:
    for column in tree.find_all(exp.Column):
        column.set("db", None)
        column.set("catalog", None)


def _scan_plan(select: exp.Select, binding: TableBinding) -> QueryPlan:
    fields = _fields_used(select, binding)
    where = select.args.get("where")
    where = unqualify(where.this) if where is not None else None
    worker = exp.select(*_projection(fields)).from_("__unit")
    if where is not None:
        worker.set("where", exp.Where(this=where.copy()))
    order, ordered_worker = _top_n(select, binding)
    merge_sql = None
    if order is not None and ordered_worker is not None:
        worker.set("order", ordered_worker.copy())
        worker.set("limit", exp.Limit(expression=exp.Literal.number(order.limit)))
        merge = exp.select("*").from_("__unit")
        merge.set("order", ordered_worker)
        merge.set("limit", exp.Limit(expression=exp.Literal.number(order.limit)))
        merge_sql = datafusion_sql(merge)
    limit = _plain_limit(select) if order is None else None
    if limit is not None:
        worker.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
    final = select.copy()
    final.set("where", None)
    names = _alias_outputs(final)
    final_binding = TableBinding(binding.key, binding.alias, binding.schema,
                                 final.args["from_"].this)
    _replace_table(final, final_binding, "__cold_0")
    _strip_schema_qualifiers(final)
    part = ScanPart(binding, "__cold_0", where, fields, datafusion_sql(worker), order,
                    merge_sql, limit=limit)
    streams = not any(final.args.get(clause) for clause in PIECEWISE_BREAKERS)
    rows = _rows_kept(final)
    sliced = final.copy()
    if rows is not None:
        sliced.set("limit", None)
        sliced.set("offset", None)
    return QueryPlan("topn" if order else "scan", [part], datafusion_sql(final), names,
                     streams=streams, projection=_plain_projection(sliced, names, binding),
                     rows=rows)


def _rows_kept(final: exp.Select) -> tuple[int, int | None] | None:
    """(offset, count) of a LIMIT and OFFSET of constants without ORDER BY: the rows kept."""
    if final.args.get("limit") is None and final.args.get("offset") is None:
        return None
    return _limit_offset(final)


def _limit_offset(select: exp.Select) -> tuple[int, int | None] | None:
    """(offset, count) when ORDER BY is absent and LIMIT and OFFSET are absent or
    non-negative integer constants (count None without LIMIT); else None (a negative one is
    Postgres's error, from DataFusion's run of the SQL)."""
    if select.args.get("order"):
        return None
    values = []
    for clause in ("offset", "limit"):
        node = select.args.get(clause)
        value = constant(node.expression) if node is not None else None
        if node is not None and (value is None or not isinstance(value.value, int)
                                 or value.value < 0):
            return None
        values.append(value.value if value is not None else None)
    return values[0] or 0, values[1]


def _plain_projection(final: exp.Select, names: dict[str, str], binding: TableBinding
                      ) -> tuple[tuple[str, str], ...] | None:
    """(column, output name) when the coordinator's SELECT only picks and names columns of
    the table (QueryPlan.projection), () for a bare SELECT *, else None (an unknown column
    then gets DataFusion's error)."""
    if any(final.args.get(clause) for clause in (*PIECEWISE_BREAKERS, "where", "joins")):
        return None
    items = final.expressions
    if len(items) == 1 and isinstance(items[0], exp.Star):
        return ()
    pairs = []
    for item in items:
        column = item.this if isinstance(item, exp.Alias) else item
        found = binding.resolve(column) if isinstance(column, exp.Column) and \
            not isinstance(column.this, exp.Star) else None
        if found is None:
            return None
        if isinstance(item, exp.Alias):
            alias = item.args["alias"]
            output = alias.name if alias.quoted else alias.name.lower()
        else:
            output = item.alias_or_name
        pairs.append((found.name, names.get(output, output)))
    return tuple(pairs)


# Clauses after which the coordinator's SQL over pieces of the rows is not its SQL over all.
PIECEWISE_BREAKERS = ("order", "limit", "offset", "distinct", "group", "having", "qualify")


def _plain_limit(select: exp.Select) -> int | None:
    """n + offset of a LIMIT without ORDER BY, DISTINCT or aggregates: any that many rows of
    the scan answer it."""
    kept = _limit_offset(select) if not select.args.get("distinct") else None
    if kept is None or not kept[1]:
        return None
    return kept[1] + kept[0]


def _top_n(select: exp.Select, binding: TableBinding) -> tuple[OrderKey | None,
                                                             exp.Order | None]:
    """ORDER BY <column> ... LIMIT n: the key to stop early on and the ORDER BY for units."""
    order, limit = select.args.get("order"), select.args.get("limit")
    if order is None or limit is None or select.args.get("distinct"):
        return None, None
    count = constant(limit.expression)
    offset = select.args.get("offset")
    skip = constant(offset.expression) if offset is not None else None
    if count is None or not isinstance(count.value, int) or (
            offset is not None and (skip is None or not isinstance(skip.value, int))):
        return None, None
    resolved = []
    for ordered in order.expressions:
        expr = _resolve_output_reference(ordered.this, select, binding)
        if expr is None:
            return None, None
        resolved.append(ordered.__class__(this=unqualify(expr), desc=ordered.args.get("desc"),
                                          nulls_first=ordered.args.get("nulls_first")))
    first = resolved[0]
    if not isinstance(first.this, exp.Column):
        return None, None
    column_field = binding.resolve(first.this)
    if column_field is None:
        return None, None
    desc = bool(first.args.get("desc"))
    nulls_first = first.args.get("nulls_first")
    key = OrderKey(column_field, desc, desc if nulls_first is None else bool(nulls_first),
                   count.value + (skip.value if skip is not None else 0), len(resolved) > 1)
    return key, exp.Order(expressions=resolved)


def _resolve_output_reference(expr: exp.Expression, select: exp.Select,
                              binding: TableBinding) -> exp.Expression | None:
    """An ORDER BY item in terms of the table's columns (ordinals and output names)."""
    outputs = select.expressions
    const = constant(expr)
    if const is not None:
        if isinstance(const.value, int) and 1 <= const.value <= len(outputs):
            picked = outputs[const.value - 1]
            return None if isinstance(picked, exp.Star) else picked.unalias()
        return None
    if isinstance(expr, exp.Column) and not expr.table:
        for output in outputs:
            if isinstance(output, exp.Alias) and output.alias == expr.name:
                return output.this
    if any(True for _ in expr.find_all(exp.AggFunc, exp.Window)):
        return None
    return expr


def _aggregate_plan(select: exp.Select, binding: TableBinding) -> QueryPlan | None:
    group = select.args.get("group")
    if group is not None and any(group.args.get(k) for k in ("rollup", "cube", "grouping_sets")):
        return None
    group_exprs = [_resolve_group_item(e, select, binding)
                   for e in (group.expressions if group is not None else [])]
    if any(g is None for g in group_exprs):
        return None
    def is_float(expr: exp.Expression) -> bool:
        found = binding.resolve(expr) if isinstance(expr, exp.Column) else None
        return found is not None and isinstance(found.field_type, FloatType | DoubleType)

    split = split_aggregate(select, [g for g in group_exprs if g is not None], "__cold_0",
                            is_float)
    if split is None:
        return None
    fields = _fields_used(select, binding)
    names = _alias_outputs(split.final, select)
    where = select.args.get("where")
    part = ScanPart(binding, "__cold_0", unqualify(where.this) if where else None, fields,
                    datafusion_sql(split.worker), count_columns=_count_star_columns(split.worker))
    return QueryPlan("aggregate", [part], datafusion_sql(split.final), names)


def _count_star_columns(worker: exp.Select) -> tuple[str, ...] | None:
    """The partials' names when the worker computes nothing but count(*)."""
    if worker.args.get("group") or not worker.expressions:
        return None
    names = []
    for item in worker.expressions:
        if not (isinstance(item, exp.Alias) and isinstance(item.this, exp.Count)
                and isinstance(item.this.this, exp.Star)):
            return None
        names.append(item.alias)
    return tuple(names)


def _resolve_group_item(item: exp.Expression, select: exp.Select,
                        binding: TableBinding) -> exp.Expression | None:
    const = constant(item)
    if const is not None:
        outputs = select.expressions
        if isinstance(const.value, int) and 1 <= const.value <= len(outputs):
            return outputs[const.value - 1].unalias()
        return None
    if isinstance(item, exp.Column) and not item.table and binding.resolve(item) is None:
        for output in select.expressions:
            if isinstance(output, exp.Alias) and output.alias == item.name:
                return output.this
    return item


def _general_plan(tree: exp.Expression, bindings: list[TableBinding]) -> QueryPlan:
    """Any other query: scan each reference with what can be pushed, run the rest at the end."""
    parts = []
    for index, binding in enumerate(bindings):
        fields = _fields_used(tree, binding)
        where = _pushable_filter(binding, bindings)
        worker = exp.select(*_projection(fields)).from_("__unit")
        if where is not None:
            worker.set("where", exp.Where(this=where.copy()))
        parts.append(ScanPart(binding, f"__cold_{index}", where, fields,
                              datafusion_sql(worker)))
    final = tree.copy()
    copies = list(_tables_in_order(final, bindings))
    for part, node in zip(parts, copies, strict=True):
        _replace_table(final, TableBinding(part.binding.key, part.binding.alias,
                                           part.binding.schema, node), part.placeholder)
    _strip_schema_qualifiers(final)
    names = _alias_outputs(final) if isinstance(final, exp.Select) else {}
    return QueryPlan("general", parts, datafusion_sql(final), names)


def _tables_in_order(tree: exp.Expression, bindings: list[TableBinding]) -> list[exp.Table]:
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return [t for t in tree.find_all(exp.Table)
            if t.name and not (not t.db and t.name in ctes)][:len(bindings)]


def _pushable_filter(binding: TableBinding,
                     bindings: list[TableBinding]) -> exp.Expr | None:
    """Conjuncts of the owning SELECT's WHERE that only this reference's columns decide.

    Only when every join of that SELECT is inner: a filter pushed below an outer join's
    nullable side would change which rows are NULL-extended.
    """
    owner = binding.node.find_ancestor(exp.Select)
    if owner is None or not isinstance(binding.node.parent, exp.From | exp.Join):
        return None
    for join in owner.args.get("joins") or []:
        if join.side or join.kind not in ("", "INNER", "CROSS"):
            return None
    where = owner.args.get("where")
    if where is None:
        return None
    siblings = [b for b in bindings if b is not binding and b.node.find_ancestor(exp.Select)
                is owner]
    kept = [c for c in where.this.flatten() if _decided_by(c, binding, siblings)] \
        if isinstance(where.this, exp.And) else (
        [where.this] if _decided_by(where.this, binding, siblings) else [])
    if not kept:
        return None
    return unqualify(exp.and_(*[c.copy() for c in kept]))


def _decided_by(conjunct: exp.Expr, binding: TableBinding,
                siblings: list[TableBinding]) -> bool:
    if any(True for _ in conjunct.find_all(exp.Select, exp.AggFunc, exp.Window, exp.Subquery)):
        return False
    columns = list(conjunct.find_all(exp.Column))
    if not columns:
        return False
    for column in columns:
        if binding.resolve(column) is None:
            return False
        if not column.table and any(s.resolve(column) is not None for s in siblings):
            return False
    return True


def normalize_time_literals(tree: exp.Expression, bindings: list[TableBinding]) -> None:
    """Give strings compared with date/timestamp columns a form DataFusion parses like Postgres.

    ('2024-01-01 10:00' lacks seconds: DataFusion rejects it, Postgres accepts it.)
    """
    for cast in list(tree.find_all(exp.Cast)):
        if isinstance(cast.this, exp.Literal) and cast.this.is_string and cast.to.is_type(
                exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ):
            try:
                text = parse_timestamp(cast.this.this).isoformat(sep=" ")
            except ValueError:
                continue
            cast.this.replace(exp.Literal.string(text))
    for node in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
                                   exp.Between, exp.In)):
        if not isinstance(node.this, exp.Column):
            continue
        found = next((f for b in bindings if (f := b.resolve(node.this)) is not None), None)
        if found is None or not isinstance(found.field_type,
                                           TimestampType | TimestamptzType | DateType):
            continue
        if isinstance(node, exp.Between):
            candidates = [node.args.get("low"), node.args.get("high")]
        elif isinstance(node, exp.In):
            candidates = list(node.expressions)
        else:
            candidates = [node.expression]
        for candidate in candidates:
            if isinstance(candidate, exp.Literal) and candidate.is_string:
                _cast_time_literal(candidate, found)


def _cast_time_literal(literal: exp.Literal, found: NestedField) -> None:
    try:
        value = parse_date_or_timestamp(literal.this)
    except ValueError:
        return
    if isinstance(found.field_type, DateType):
        if len(literal.this.strip()) == 10:
            literal.replace(exp.cast(exp.Literal.string(value.date().isoformat()), "DATE"))
        return
    if isinstance(found.field_type, TimestampType):
        text = value.replace(tzinfo=None).isoformat(sep=" ")
        literal.replace(exp.cast(exp.Literal.string(text), "TIMESTAMP"))
        return
    literal.replace(exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMPTZ"))


_PG_FUNCTION_NAMES = {"LogicalAnd": "bool_and", "LogicalOr": "bool_or",
                      "TimestampTrunc": "date_trunc", "DateTrunc": "date_trunc"}


def output_name(expr: exp.Expression) -> str:
    """The column name Postgres would give a SELECT item."""
    if isinstance(expr, exp.Alias):
        return expr.alias
    if isinstance(expr, exp.Column):
        return expr.name
    if isinstance(expr, exp.Cast):
        return output_name(expr.this) if isinstance(expr.this, exp.Column) else "?column?"
    if isinstance(expr, exp.Func):
        return _PG_FUNCTION_NAMES.get(type(expr).__name__, expr.sql_name().lower())
    return "?column?"


def _alias_outputs(select: exp.Expression,
                   original: exp.Select | None = None) -> dict[str, str]:
    """Alias unnamed SELECT items uniquely; return internal name -> Postgres name."""
    if not isinstance(select, exp.Select):
        return {}
    sources = (original or select).expressions
    names: dict[str, str] = {}
    items: list[exp.Expr] = []
    for index, (item, source) in enumerate(zip(select.expressions, sources, strict=True)):
        if isinstance(item, exp.Alias | exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            items.append(item)
            continue
        internal = f"_c{index}"
        names[internal] = output_name(source)
        items.append(exp.alias_(item, internal))
    select.set("expressions", items)
    return names


__all__ = ["QueryPlan", "ScanPart", "TableBinding", "canonical", "plan_query"]
