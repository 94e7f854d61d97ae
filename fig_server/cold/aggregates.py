"""Split an aggregate query into partial aggregates (per work unit, in workers) and the final
aggregation (in the coordinator), followed by HAVING, ORDER BY and LIMIT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlglot import exp

_COMBINE: dict[type[exp.Expr], str] = {
    exp.Sum: "SUM", exp.Min: "MIN", exp.Max: "MAX",
    exp.LogicalAnd: "BOOL_AND", exp.LogicalOr: "BOOL_OR",
}
_SUPPORTED: tuple[type[exp.Expr], ...] = (exp.Count, exp.Avg, *_COMBINE)
# Aggregates whose FILTER becomes a CASE in their argument (min/max are left out: the NaN
# handling of float extremes, _float_extreme, reads their bare argument).
_FILTERED: tuple[type[exp.Expr], ...] = (exp.Count, exp.Avg, exp.Sum, exp.LogicalAnd,
                                         exp.LogicalOr)


@dataclass
class AggregateSplit:
    """Worker SELECT (over __unit) and final SELECT (over the partials table)."""

    worker: exp.Select
    final: exp.Select


@dataclass
class _Builder:
    group_keys: dict[str, str] = field(default_factory=dict)
    worker_columns: list[exp.Expr] = field(default_factory=list)
    worker_groups: list[exp.Expr] = field(default_factory=list)
    finals: dict[str, exp.Expr] = field(default_factory=dict)
    distinct_keys: dict[str, str] = field(default_factory=dict)

    def partial(self, expression: exp.Expr) -> exp.Column:
        name = f"_p{len(self.worker_columns)}"
        self.worker_columns.append(exp.alias_(expression, name))
        return exp.column(name)

    def distinct_column(self, expression: exp.Expr) -> exp.Column:
        key = canonical(expression)
        if key not in self.distinct_keys:
            name = f"_d{len(self.distinct_keys)}"
            self.distinct_keys[key] = name
            self.worker_groups.append(expression)
            self.worker_columns.append(exp.alias_(expression.copy(), name))
        return exp.column(self.distinct_keys[key])


def canonical(node: exp.Expr) -> str:
    """SQL text of an expression with column qualifiers removed (to match GROUP BY keys)."""
    return unqualify(node).sql(dialect="postgres")


def unqualify(node: exp.Expr) -> exp.Expr:
    """A copy whose columns carry no table, schema or catalog qualifier."""
    def strip(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column) and n.args.get("table"):
            return exp.Column(this=n.this.copy())
        return n
    return node.transform(strip, copy=True)


def has_aggregate(select: exp.Select) -> bool:
    return bool(select.args.get("group")) or any(
        True for e in _outputs(select) for _ in e.find_all(exp.AggFunc))


def split_aggregate(select: exp.Select, group_exprs: list[exp.Expression], placeholder: str,
                    is_float: Callable[[exp.Expression], bool] = lambda _: False,
                    ) -> AggregateSplit | None:
    """The split of a single-table aggregate, or None when some aggregate cannot be split."""
    select = _filters_as_cases(select)
    for node in _outputs(select):
        for agg in node.find_all(exp.AggFunc):
            if not isinstance(agg, _SUPPORTED) or isinstance(agg.parent, exp.Filter):
                return None
            if len(list(agg.find_all(exp.AggFunc))) > 1:
                return None
            if isinstance(agg.this, exp.Distinct) and len(agg.this.expressions) != 1:
                return None
    builder = _Builder()
    for index, expr in enumerate(group_exprs):
        name = f"_g{index}"
        builder.group_keys[canonical(expr)] = name
        builder.worker_columns.append(exp.alias_(unqualify(expr), name))
        builder.worker_groups.append(unqualify(expr))

    def rewrite(node: exp.Expr) -> exp.Expr:
        key = canonical(node)
        if key in builder.group_keys and not isinstance(node, exp.Literal):
            return exp.column(builder.group_keys[key])
        if isinstance(node, exp.AggFunc):
            return _final_aggregate(unqualify(node), builder, is_float)
        return node

    final = select.copy()
    final.set("where", None)
    final.set("expressions", [e.transform(rewrite) for e in final.expressions])
    if final.args.get("having"):
        final.set("having", final.args["having"].transform(rewrite))
    if final.args.get("order"):
        final.set("order", final.args["order"].transform(rewrite))
    final.set("from_", exp.From(this=exp.to_table(placeholder)))
    final.set("group", exp.Group(expressions=[exp.column(n)
                                             for n in builder.group_keys.values()])
              if builder.group_keys else None)

    worker = exp.select(*builder.worker_columns).from_("__unit")
    if select.args.get("where"):
        worker.set("where", unqualify(select.args["where"]))
    if builder.worker_groups:
        worker.set("group", exp.Group(expressions=[g.copy() for g in builder.worker_groups]))
    return AggregateSplit(worker, final)


def _filters_as_cases(select: exp.Select) -> exp.Select:
    """A copy with `agg(x) FILTER (WHERE p)` written `agg(CASE WHEN p THEN x END)` (count(*):
    `count(CASE WHEN p THEN 1 END)`): the same rows reach the aggregate, as a condition that
    is false or NULL gives NULL, which these aggregates skip. The split then computes them in
    the workers like any other argument, where a FILTER made the whole statement one plan over
    every row. Other filtered aggregates stay as they are (and are not split)."""
    def unfilter(node: exp.Expr) -> exp.Expr:
        if not (isinstance(node, exp.Filter) and isinstance(node.this, _FILTERED)):
            return node
        agg = node.this.copy()
        condition = node.expression.this.copy()
        arg = agg.this
        if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
            arg.set("expressions", [_when(condition, arg.expressions[0])])
        elif isinstance(arg, exp.Star) or arg is None:
            agg.set("this", _when(condition, exp.Literal.number(1)))
        elif not isinstance(arg, exp.Distinct) and not agg.expressions:
            agg.set("this", _when(condition, arg))
        else:
            return node
        return agg

    if not any(True for e in _outputs(select) for _ in e.find_all(exp.Filter)):
        return select
    rewritten = select.transform(unfilter)
    assert isinstance(rewritten, exp.Select)
    return rewritten


def _when(condition: exp.Expr, value: exp.Expr) -> exp.Case:
    return exp.Case(ifs=[exp.If(this=condition, true=value.copy())])


def _final_aggregate(agg: exp.Expr, builder: _Builder,
                     is_float: Callable[[exp.Expression], bool]) -> exp.Expr:
    arg = agg.this
    if isinstance(agg, exp.Min | exp.Max) and is_float(arg):
        return _float_extreme(agg, builder)
    if isinstance(arg, exp.Distinct):
        column = builder.distinct_column(arg.expressions[0])
        rebuilt = agg.copy()
        rebuilt.set("this", exp.Distinct(expressions=[column]))
        return rebuilt
    if isinstance(agg, exp.Count):
        inner = exp.Count(this=arg.copy() if arg is not None else exp.Star())
        total = exp.func("SUM", builder.partial(inner))
        return exp.cast(exp.func("COALESCE", total, exp.Literal.number(0)), "BIGINT")
    if isinstance(agg, exp.Avg):
        total = exp.func("SUM", builder.partial(exp.func("SUM", arg.copy())))
        count = exp.func("SUM", builder.partial(exp.Count(this=arg.copy())))
        return exp.Div(this=exp.cast(total, "DOUBLE"),
                       expression=exp.cast(exp.func("NULLIF", count, exp.Literal.number(0)),
                                           "DOUBLE"))
    combine = _COMBINE[type(agg)]
    return exp.func(combine, builder.partial(agg.copy()))


def _float_extreme(agg: exp.Expr, builder: _Builder) -> exp.Expr:
    """min/max of floats with NaN as Postgres orders it (above every number).

    DataFusion's grouped min/max mishandle NaN, so NaN is tracked apart from the numbers.
    """
    arg = agg.this.copy()
    number = exp.Case(ifs=[exp.If(this=_isnan(arg), true=exp.Null())], default=arg.copy())
    numbers = builder.partial(agg.__class__(this=number))
    has_nan = builder.partial(exp.func("BOOL_OR", _isnan(arg)))
    nan = exp.cast(exp.Literal.string("NaN"), "DOUBLE")
    extreme = agg.__class__(this=numbers)
    nan_wins: exp.Expr = exp.func("BOOL_OR", has_nan)
    if isinstance(agg, exp.Min):
        nan_wins = exp.and_(exp.Is(this=extreme.copy(), expression=exp.Null()), nan_wins)
    return exp.Case(ifs=[exp.If(this=nan_wins, true=nan)], default=extreme)


def _isnan(arg: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this="isnan", expressions=[arg.copy()])


def _outputs(select: exp.Select) -> list[exp.Expression]:
    nodes: list[exp.Expression] = list(select.expressions)
    for key in ("having", "order"):
        if select.args.get(key):
            nodes.append(select.args[key])
    return nodes
