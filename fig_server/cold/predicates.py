"""Translate a WHERE clause (sqlglot) into a pyiceberg expression that is used only to prune.

The translation is inclusive: every row the SQL predicate accepts is accepted by the result.
What cannot be translated is dropped (under AND) or makes its whole branch unknown (under OR),
negation is pushed down first so that dropping stays sound, and every filter is still applied
to the rows that are read.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    GreaterThanOrEqual,
    In,
    IsNaN,
    IsNull,
    LessThan,
    LessThanOrEqual,
    LiteralPredicate,
    NotEqualTo,
    NotIn,
    NotNull,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import DateLiteral, Literal, TimestampLiteral, literal
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)
from pyiceberg.utils.datetime import date_to_days, datetime_to_micros
from sqlglot import exp

from fig_server.cold.literals import Constant, constant, parse_date_or_timestamp

ResolveColumn = Callable[[exp.Column], NestedField | None]

_OPS: dict[type[exp.Expr], str] = {
    exp.EQ: "=", exp.NEQ: "<>", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}
_FLIP = {"=": "=", "<>": "<>", ">": "<", ">=": "<=", "<": ">", "<=": ">="}
_NEGATE = {"=": "<>", "<>": "=", ">": "<=", ">=": "<", "<": ">=", "<=": ">"}
_MICROS_PER_DAY = 86_400_000_000
_UNIT_DAYS = {"DAY": 1, "WEEK": 7, "MONTH": 31, "QUARTER": 92, "YEAR": 366}
_UNIT_MICROS = {"MICROSECOND": 1, "MILLISECOND": 1000, "SECOND": 1_000_000,
                "MINUTE": 60_000_000, "HOUR": 3_600_000_000}
_INT32 = (-(2**31), 2**31 - 1)
_TIME_TYPES = (TimestampType, TimestamptzType, DateType)


def pruning_filter(where: exp.Expr | None, resolve: ResolveColumn) -> BooleanExpression:
    """The inclusive pyiceberg expression implied by a WHERE clause (AlwaysTrue if nothing)."""
    if where is None:
        return AlwaysTrue()
    return _translate(where, False, resolve) or AlwaysTrue()


_EXACT_TYPES = (IntegerType, LongType, StringType, DateType, TimestampType, TimestamptzType)


def exact_filter(where: exp.Expr | None,
                 resolve: ResolveColumn) -> BooleanExpression | None:
    """A pyiceberg expression accepting exactly the rows WHERE accepts, or None when unsure.

    Only conjunctions of column-vs-constant comparisons (=, <, <=, >, >=, BETWEEN, IN) on
    integer, string, date and timestamp columns, whose constants bind without rounding.
    """
    if where is None:
        return AlwaysTrue()
    translated = []
    for conjunct in _conjuncts(where):
        if not _exact_atom(conjunct, resolve):
            return None
        predicate = _translate(conjunct, False, resolve)
        if predicate is None:
            return None
        translated.append(predicate)
    result = translated[0]
    for predicate in translated[1:]:
        result = And(result, predicate)
    return result


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _exact_atom(node: exp.Expr, resolve: ResolveColumn) -> bool:
    if isinstance(node, exp.Between) and not node.args.get("symmetric"):
        values = [node.args["low"], node.args["high"]]
    elif isinstance(node, exp.In) and not (node.args.get("query") or node.args.get("unnest")):
        values = list(node.expressions)
    elif type(node) in _OPS and _OPS[type(node)] != "<>":
        values = [node.expression]
    else:
        return False
    column = node.this
    if not isinstance(column, exp.Column):
        return False
    field = resolve(column)
    if field is None or not isinstance(field.field_type, _EXACT_TYPES):
        return False
    for value in values:
        const = constant(value)
        if const is None or const.value is None or _coerce(const, field.field_type) is None:
            return False
    return bool(values)


def _translate(node: exp.Expr, negated: bool,
               resolve: ResolveColumn) -> BooleanExpression | None:
    if isinstance(node, exp.Paren):
        return _translate(node.this, negated, resolve)
    if isinstance(node, exp.Not):
        return _translate(node.this, not negated, resolve)
    if isinstance(node, exp.And | exp.Or):
        left = _translate(node.left, negated, resolve)
        right = _translate(node.right, negated, resolve)
        conjunction = isinstance(node, exp.And) != negated
        if conjunction:
            if left is None or right is None:
                return left or right
            return And(left, right)
        return Or(left, right) if left is not None and right is not None else None
    if isinstance(node, exp.Is):
        return _is(node, negated, resolve)
    if isinstance(node, exp.Between):
        return _between(node, negated, resolve)
    if isinstance(node, exp.In):
        return _in(node, negated, resolve)
    if type(node) in _OPS:
        op = _OPS[type(node)]
        return _comparison(node.this, _NEGATE[op] if negated else op, node.expression, resolve)
    if isinstance(node, exp.Column):
        field = resolve(node)
        if field is not None and isinstance(field.field_type, BooleanType):
            return EqualTo(term=Reference(field.name), value=_literal(not negated))
    return None


def _is(node: exp.Is, negated: bool, resolve: ResolveColumn) -> BooleanExpression | None:
    if not isinstance(node.this, exp.Column) or not isinstance(node.expression, exp.Null):
        return None
    field = resolve(node.this)
    if field is None:
        return None
    wants_null = bool(node.args.get("negate")) == negated
    term = Reference(field.name)
    return IsNull(term=term) if wants_null else NotNull(term=term)


def _between(node: exp.Between, negated: bool,
             resolve: ResolveColumn) -> BooleanExpression | None:
    if node.args.get("symmetric"):
        return None
    if negated:
        low = _comparison(node.this, "<", node.args["low"], resolve)
        high = _comparison(node.this, ">", node.args["high"], resolve)
        return Or(low, high) if low is not None and high is not None else None
    low = _comparison(node.this, ">=", node.args["low"], resolve)
    high = _comparison(node.this, "<=", node.args["high"], resolve)
    if low is None or high is None:
        return low or high
    return And(low, high)


def _in(node: exp.In, negated: bool, resolve: ResolveColumn) -> BooleanExpression | None:
    if not isinstance(node.this, exp.Column) or node.args.get("query") or node.args.get("unnest"):
        return None
    field = resolve(node.this)
    if field is None or not node.expressions:
        return None
    values = []
    for item in node.expressions:
        const = constant(item)
        if const is None or const.value is None:
            return None
        value = _coerce(const, field.field_type)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        values.append(value)
    literals = {_literal(value) for value in values}
    if negated:
        return NotIn(term=Reference(field.name), values=literals) if not _is_float(field) else None
    predicate: BooleanExpression = In(term=Reference(field.name), values=literals)
    return predicate


def _comparison(left: exp.Expr, op: str, right: exp.Expr,
                resolve: ResolveColumn) -> BooleanExpression | None:
    if constant(left) is not None and constant(right) is None:
        left, right, op = right, left, _FLIP[op]
    const = constant(right)
    if const is None or const.value is None:
        return None
    if isinstance(left, exp.Column):
        field = resolve(left)
        return _column_predicate(field, op, const) if field is not None else None
    truncated = _truncated_column(left)
    if truncated is not None:
        column, width = truncated
        field = resolve(column)
        if field is None or not isinstance(field.field_type, _TIME_TYPES):
            return None
        return _range_from_truncation(field, op, const, width)
    return None


def _column_predicate(field: NestedField, op: str, const: Constant) -> BooleanExpression | None:
    value = _coerce(const, field.field_type)
    if value is None:
        return _inexact_predicate(field, op, const)
    if isinstance(value, float) and math.isnan(value):
        return IsNaN(term=Reference(field.name)) if op == "=" else None
    if _is_float(field) and op == "<>":
        return None
    predicate = _make(field.name, op, value)
    if _is_float(field) and op in (">", ">="):
        # Postgres orders NaN above every number; Iceberg bounds leave NaN out.
        return Or(predicate, IsNaN(term=Reference(field.name)))
    return predicate


_LITERAL_PREDICATES: dict[str, type[LiteralPredicate]] = {
    "=": EqualTo, "<>": NotEqualTo, ">": GreaterThan, ">=": GreaterThanOrEqual,
    "<": LessThan, "<=": LessThanOrEqual}


def _make(name: str, op: str, value: Any) -> BooleanExpression:
    return _LITERAL_PREDICATES[op](term=Reference(name), value=_literal(value))


def _literal(value: Any) -> Literal[Any]:
    """The value as pyiceberg's predicate constructors would wrap it (a Literal is kept)."""
    return value if isinstance(value, Literal) else literal(value)


def _inexact_predicate(field: NestedField, op: str, const: Constant) -> BooleanExpression | None:
    """A fractional literal against an integer or a narrower decimal: round outward."""
    if const.kind != "number" or op in ("=", "<>"):
        return None
    ftype = field.field_type
    value = Decimal(str(const.value))
    if isinstance(ftype, IntegerType | LongType):
        exponent = Decimal(1)
    elif isinstance(ftype, DecimalType):
        exponent = Decimal(1).scaleb(-ftype.scale)
    else:
        return None
    if op in (">", ">="):
        bound = value.quantize(exponent, rounding=ROUND_FLOOR)
        return _make(field.name, ">", _fit_number(bound, ftype))
    bound = value.quantize(exponent, rounding=ROUND_CEILING)
    return _make(field.name, "<", _fit_number(bound, ftype))


def _fit_number(value: Decimal, ftype: IcebergType) -> Any:
    return int(value) if isinstance(ftype, IntegerType | LongType) else value


def _coerce(const: Constant, ftype: IcebergType) -> Any:
    """The constant as a value pyiceberg binds exactly to the field's type, or None."""
    value, kind = const.value, const.kind
    try:
        if isinstance(ftype, IntegerType | LongType):
            if kind != "number" or not isinstance(value, int):
                if kind == "number" and value == int(value):
                    value = int(value)
                else:
                    return None
            if isinstance(ftype, IntegerType) and not _INT32[0] <= value <= _INT32[1]:
                return None
            return value
        if isinstance(ftype, FloatType | DoubleType):
            if kind in ("number", "float"):
                return float(value)
            if kind == "string" and value.strip().lower() == "nan":
                return math.nan
            return None
        if isinstance(ftype, DecimalType):
            if kind != "number":
                return None
            exponent = Decimal(1).scaleb(-ftype.scale)
            fitted = Decimal(str(value)).quantize(exponent)
            return fitted if fitted == Decimal(str(value)) else None
        if isinstance(ftype, StringType):
            return value if kind == "string" else None
        if isinstance(ftype, BooleanType):
            return value if kind == "bool" else None
        if isinstance(ftype, DateType):
            return _date_literal(const)
        if isinstance(ftype, TimestampType | TimestamptzType):
            micros = _timestamp_micros(const, isinstance(ftype, TimestamptzType))
            return TimestampLiteral(micros) if micros is not None else None
    except (ValueError, ArithmeticError):
        return None
    return None


def _date_literal(const: Constant) -> DateLiteral | None:
    if const.kind == "date":
        return DateLiteral(date_to_days(const.value))
    if const.kind == "string" and len(const.value.strip()) == 10:
        return DateLiteral(date_to_days(dt.date.fromisoformat(const.value.strip())))
    return None


def _timestamp_micros(const: Constant, with_zone: bool) -> int | None:
    """Microseconds since epoch as the row comparison sees them (session time zone UTC)."""
    value = const.value
    if const.kind == "date":
        value = dt.datetime(value.year, value.month, value.day)
    elif const.kind == "string":
        value = parse_date_or_timestamp(value)
        if value.tzinfo is not None and not with_zone:
            return None
    elif const.kind not in ("timestamp", "timestamptz"):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return datetime_to_micros(value.astimezone(dt.UTC).replace(tzinfo=None))


def _truncated_column(node: exp.Expr) -> tuple[exp.Column, str] | None:
    """date_trunc('<unit>', col) or col::date: the column and the truncation unit."""
    if isinstance(node, exp.TimestampTrunc | exp.DateTrunc) and isinstance(node.this, exp.Column):
        return node.this, node.text("unit").upper()
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DATE) \
            and isinstance(node.this, exp.Column):
        return node.this, "DAY"
    return None


def _range_from_truncation(field: NestedField, op: str, const: Constant,
                           unit: str) -> BooleanExpression | None:
    """trunc(col) <op> L implies a range of col: trunc(col) <= col < trunc(col) + unit."""
    if isinstance(field.field_type, DateType):
        low_lit = _date_literal(const) if const.kind != "timestamp" else None
        if low_lit is None or unit not in _UNIT_DAYS:
            return None
        low: int = low_lit.value
        width = _UNIT_DAYS[unit]
        make: type[DateLiteral] | type[TimestampLiteral] = DateLiteral
    else:
        micros = _timestamp_micros(const, isinstance(field.field_type, TimestamptzType))
        if micros is None:
            return None
        low = micros
        width = _UNIT_MICROS.get(unit) or _UNIT_DAYS.get(unit, 0) * _MICROS_PER_DAY
        if not width:
            return None
        make = TimestampLiteral
    name = field.name
    if op in (">", ">="):
        return _make(name, op, make(low))
    if op in ("<", "<="):
        return _make(name, "<", make(low + width))
    if op == "=":
        return And(_make(name, ">=", make(low)), _make(name, "<", make(low + width)))
    return None


def _is_float(field: NestedField) -> bool:
    return isinstance(field.field_type, FloatType | DoubleType)
