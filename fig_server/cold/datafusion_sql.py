"""SQL text for DataFusion, with the filters its plan analysis misreads made opaque to it.

DataFusion 55 derives, for each FilterExec, the interval every column can take after the
filter, and treats a column whose interval is one value as a constant: a sort on it is
dropped, a window or a GROUP BY assumes it ordered. Its backward propagation through a lossy
cast or an integer division is wrong: `CAST(ts AS DATE) = '2024-01-02'` narrows ts to
midnight, `i / 10 = 5` narrows i to 50, and `... ORDER BY ts DESC LIMIT 3` then returns the
first three rows of the day in file order (seen: a wrong row of a top-n over an evolved
layout). The analysis gives up on a whole predicate holding any expression it does not
support, and it does not support `IS TRUE`. So a conjunct that is not a plain comparison of
a column with a constant (or of two columns) is sent as `(conjunct) IS TRUE`, which keeps the
same rows (a filter keeps a row only when its predicate is true) and keeps the plain ones
readable by DataFusion's Parquet pruning.
"""

from __future__ import annotations

from sqlglot import exp

PG = "postgres"

# Clauses DataFusion plans as filters: the argument holding each one's predicate.
_PREDICATES: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.Where, "this"), (exp.Having, "this"), (exp.Qualify, "this"), (exp.Join, "on"))

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is,
                exp.NullSafeEQ, exp.NullSafeNEQ, exp.Like, exp.ILike)


def datafusion_sql(tree: exp.Expr) -> str:
    """The tree's SQL for DataFusion (Postgres spelling), filters guarded."""
    guarded = tree.copy()
    for clause, arg in _PREDICATES:
        for node in list(guarded.find_all(clause)):
            predicate = node.args.get(arg)
            if isinstance(predicate, exp.Expr):
                node.set(arg, _guard(predicate))
    return guarded.sql(dialect=PG)


def _guard(predicate: exp.Expr) -> exp.Expr:
    conjuncts = list(predicate.flatten()) if isinstance(predicate, exp.And) else [predicate]
    plain = [_plain(c) for c in conjuncts]
    if all(plain):
        return predicate
    return exp.and_(*(c if kept else exp.Is(this=exp.paren(c, copy=False),
                                             expression=exp.true())
                      for c, kept in zip(conjuncts, plain, strict=True)), copy=False)


def _plain(node: exp.Expr) -> bool:
    """Whether DataFusion's analysis reads this predicate right: comparisons, IN and BETWEEN
    of bare columns and constants, under AND, OR and NOT."""
    if isinstance(node, exp.Paren | exp.Not):
        return _plain(node.this)
    if isinstance(node, exp.And | exp.Or):
        return _plain(node.left) and _plain(node.right)
    if isinstance(node, exp.Column | exp.Boolean):
        return True
    if isinstance(node, _COMPARISONS):
        return _operand(node.this) and _operand(node.expression)
    if isinstance(node, exp.In):
        return _operand(node.this) and not node.args.get("query") and all(
            _constant(e) for e in node.expressions)
    if isinstance(node, exp.Between):
        return _operand(node.this) and _constant(node.args["low"]) and \
            _constant(node.args["high"])
    return False


def _operand(node: exp.Expr) -> bool:
    return isinstance(node, exp.Column) or _constant(node)


def _constant(node: exp.Expr) -> bool:
    """A literal, possibly negated, parenthesized or cast: no column under it."""
    if isinstance(node, exp.Paren | exp.Neg | exp.Cast):
        return _constant(node.this)
    return isinstance(node, exp.Literal | exp.Null | exp.Boolean | exp.Placeholder
                      | exp.Parameter)
