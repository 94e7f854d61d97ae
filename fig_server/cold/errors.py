"""Classify DataFusion's plain-text errors into Fig's SQLSTATE classes, in one place."""

from __future__ import annotations

import re

from fig_server.errors import (
    DivisionByZero,
    FeatureNotSupported,
    FigError,
    InternalError,
    OutOfMemory,
    SqlSyntaxError,
    UndefinedColumn,
    UndefinedTable,
)


class UndefinedFunction(FigError):
    sqlstate = "42883"


class DatatypeMismatch(FigError):
    sqlstate = "42804"


class InvalidTextRepresentation(FigError):
    sqlstate = "22P02"


class NumericValueOutOfRange(FigError):
    sqlstate = "22003"


_RULES: tuple[tuple[re.Pattern[str], type[FigError]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cls) for pattern, cls in (
        (r"divide by zero|division by zero", DivisionByZero),
        (r"overflow", NumericValueOutOfRange),
        (r"resources exhausted|memory", OutOfMemory),
        (r"ParserError|SQL error|syntax", SqlSyntaxError),
        (r"No field named|Schema error: .*field|column .* not found", UndefinedColumn),
        (r"table '.*' not found|table .* doesn't exist", UndefinedTable),
        (r"Invalid function|No function matches|Unknown function", UndefinedFunction),
        (r"Parser error|Cannot cast string|Cast error|parsing", InvalidTextRepresentation),
        (r"Cannot infer common|type coercion|does not support|Cannot coerce|mismatch",
         DatatypeMismatch),
        (r"not implemented|NotImplemented|Unsupported", FeatureNotSupported),
    )
)


def classify_datafusion_error(error: BaseException) -> FigError:
    """Map a DataFusion error to the FigError whose SQLSTATE Postgres would have used."""
    if isinstance(error, FigError):
        return error
    text = str(error)
    message = _first_line(text)
    for pattern, cls in _RULES:
        if pattern.search(text):
            return cls(message, detail=text if text != message else "")
    return InternalError(message, detail=text if text != message else "")


def _first_line(text: str) -> str:
    """The most specific line of DataFusion's "caused by" chain."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    meaningful = [line for line in lines if line.lower() != "caused by"]
    return meaningful[-1] if meaningful else "cold query failed"
