"""Constant SQL expressions as Python values, and Python values as SQL literals ($n binding)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from fig_server.errors import InvalidParameterValue

_DATE_TYPES = {exp.DataType.Type.DATE}
_TS_TYPES = {exp.DataType.Type.TIMESTAMP, exp.DataType.Type.DATETIME}
_TSTZ_TYPES = {exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMPLTZ}
_FLOAT_TYPES = {exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT}


@dataclass(frozen=True)
class Constant:
    """A constant's value and what SQL said it was ('string', 'number', 'date', ...)."""

    value: Any
    kind: str


def constant(node: exp.Expr) -> Constant | None:
    """The value of a literal, a cast literal or a negated number; None if not constant."""
    if isinstance(node, exp.Paren):
        return constant(node.this)
    if isinstance(node, exp.Null):
        return Constant(None, "null")
    if isinstance(node, exp.Boolean):
        return Constant(bool(node.this), "bool")
    if isinstance(node, exp.Neg):
        inner = constant(node.this)
        if inner is None or inner.kind != "number":
            return None
        return Constant(-inner.value, "number")
    if isinstance(node, exp.Literal):
        if node.is_string:
            return Constant(node.this, "string")
        return _number(node.this)
    if isinstance(node, exp.Cast) and isinstance(node.this, (exp.Literal, exp.Neg)):
        return _cast_constant(node)
    return None


def _number(text: str) -> Constant | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value() and "." not in text and "e" not in text.lower():
        return Constant(int(value), "number")
    return Constant(value, "number")


def _cast_constant(node: exp.Cast) -> Constant | None:
    inner = constant(node.this)
    if inner is None:
        return None
    to = node.to.this
    try:
        if to in _DATE_TYPES:
            return Constant(dt.date.fromisoformat(str(inner.value).strip()), "date")
        if to in _TS_TYPES:
            return Constant(parse_timestamp(str(inner.value)).replace(tzinfo=None), "timestamp")
        if to in _TSTZ_TYPES:
            value = parse_timestamp(str(inner.value))
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return Constant(value.astimezone(dt.UTC), "timestamptz")
        if to in _FLOAT_TYPES:
            return Constant(float(inner.value), "float")
        if node.to.is_type(*exp.DataType.INTEGER_TYPES) and inner.kind == "number":
            return inner if isinstance(inner.value, int) else None
        if node.to.is_type(exp.DataType.Type.DECIMAL) and not node.to.expressions:
            return Constant(Decimal(str(inner.value)), "number")
        if node.to.is_type(*exp.DataType.TEXT_TYPES) and inner.kind == "string":
            return inner
    except (ValueError, InvalidOperation):
        return None
    return None


def parse_timestamp(text: str) -> dt.datetime:
    """Parse the ISO-like timestamps Postgres accepts ('2024-01-01 10:00', '...+02')."""
    text = text.strip().replace("T", " ", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if len(text) >= 3 and text[-3] in "+-" and text[-2:].isdigit() and ":" in text[:-3]:
        text = text + ":00"
    return dt.datetime.fromisoformat(text)


def parse_date_or_timestamp(text: str) -> dt.datetime:
    """A string compared with a time column: a date means its midnight."""
    text = text.strip()
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return dt.datetime(day.year, day.month, day.day)
    return parse_timestamp(text)


def to_sql_literal(value: Any) -> exp.Expression:
    """A bound parameter as a typed SQL literal."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value) if value >= 0 else exp.Neg(
            this=exp.Literal.number(-value))
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            return exp.cast(exp.Literal.string(text), "DOUBLE")
        return exp.cast(exp.Literal.string(repr(value)), "DOUBLE")
    if isinstance(value, Decimal):
        return exp.cast(exp.Literal.string(str(value)), "DECIMAL")
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, dt.datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), kind)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    raise InvalidParameterValue(f"unsupported parameter type: {type(value).__name__}")


def bind_parameters(tree: exp.Expr, params: list[Any] | None) -> exp.Expr:
    """Replace $1..$n by literals of the given values."""
    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter | exp.Placeholder):
            index = _parameter_index(node)
            if params is None or not 1 <= index <= len(params):
                raise InvalidParameterValue(f"there is no parameter ${index}")
            return to_sql_literal(params[index - 1])
        return node
    return tree.transform(replace, copy=True)


def _parameter_index(node: exp.Expression) -> int:
    text = node.name if isinstance(node, exp.Placeholder) else node.this.name
    try:
        return int(str(text).lstrip("$"))
    except ValueError as exc:
        raise InvalidParameterValue(f"bad parameter reference: {node.sql()}") from exc
