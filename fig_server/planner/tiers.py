"""What Fig knows of tiered tables: names, time column, tier boundary and column types."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TieredTable:
    """One table whose old rows live in Iceberg; boundary = oldest time guaranteed in hot."""

    schema: str
    name: str
    time_column: str
    boundary: dt.datetime | None
    columns: tuple[tuple[str, str], ...]  # (column name, Postgres type as format_type prints)
    row_security: bool = False
    # The unqualified name resolves to this table under the session's search_path.
    visible: bool = True
    # Text columns whose collation orders by code point (C, POSIX, C.UTF-8): their order and
    # min/max are DataFusion's byte order too.
    byte_ordered: frozenset[str] = frozenset()
    # The table's oid (0: unknown, as in planner tests) and the records of its late changes
    # the session saw before planning (cdc/late.py): Fig waits for CDC to apply them before
    # it reads cold rows, and the hot part fails (40001) if it sees any other.
    oid: int = 0
    late: tuple[int, ...] = ()
    # The session's open transaction changed the table's rows below the boundary: cold will
    # not hold them before it commits (statements reading cold are refused).
    own_late: bool = False
    # A valid btree index, not partial, leads with the time column: whether hot holds any row
    # below the boundary is one index probe (planner/parts.py hot_rows).
    time_indexed: bool = False

    def orders_as_bytes(self, column: str) -> bool:
        return column in self.byte_ordered

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def column_type(self, column: str) -> str:
        return dict(self.columns).get(column, "")


@dataclass(frozen=True)
class TieredView:
    """A view that reads a tiered table (directly or through other views): statements that
    read it are planned with its definition in its place. kind: 'v' view, 'm' materialized."""

    schema: str
    name: str
    definition: str
    kind: str = "v"
    visible: bool = True


@dataclass(frozen=True)
class TieredFunction:
    """A user function (or procedure: kind 'p') whose body names a tiered table, a view over
    one or another such function: Postgres runs its statements itself, over hot rows only.
    reads: the first such name its body holds."""

    schema: str
    name: str
    reads: str
    kind: str = "f"


@dataclass(frozen=True)
class TieredTrigger:
    """A trigger on a table (schema, name) that runs a TieredFunction: Postgres runs it over
    hot rows only, so statements that write the table are refused."""

    trigger: str
    schema: str
    name: str
    function: str
    reads: str
    visible: bool = True
    on: frozenset[str] = frozenset({"INSERT", "UPDATE", "DELETE"})  # the writes it fires on


@dataclass(frozen=True)
class TieredSet:
    """An immutable snapshot of every tiered table and the views over them, with one
    precompiled name matcher."""

    tables: tuple[TieredTable, ...] = ()
    matcher: re.Pattern[str] | None = field(default=None, compare=False)
    byte_matcher: re.Pattern[bytes] | None = field(default=None, compare=False)
    views: tuple[TieredView, ...] = ()
    functions: tuple[TieredFunction, ...] = ()
    triggers: tuple[TieredTrigger, ...] = ()

    @classmethod
    def of(cls, tables: list[TieredTable], views: list[TieredView] | None = None,
           functions: list[TieredFunction] | None = None,
           triggers: list[TieredTrigger] | None = None) -> TieredSet:
        views = views or []
        functions = functions or []
        triggers = triggers or []
        if not tables:
            return cls()
        names = sorted({t.name for t in tables} | {v.name for v in views}
                       | {f.name for f in functions} | {t.name for t in triggers},
                       key=len, reverse=True)
        pattern = r"(?<![\w$])(?:" + "|".join(re.escape(n) for n in names) + r")(?![\w$])"
        return cls(tuple(tables), re.compile(pattern, re.IGNORECASE),
                   re.compile(pattern.encode(), re.IGNORECASE), tuple(views),
                   tuple(functions), tuple(triggers))

    def may_touch(self, sql: str) -> bool:
        """Cheap pre-check for every statement: does its text name a tiered table at all?"""
        return self.matcher is not None and self.matcher.search(sql) is not None

    def may_touch_bytes(self, buffer: bytes | bytearray, start: int, end: int) -> bool:
        """may_touch over a message's raw UTF-8 bytes (no copy, no decoding)."""
        return self.byte_matcher is not None and \
            self.byte_matcher.search(buffer, start, end) is not None

    def lookup(self, schema: str, name: str) -> TieredTable | None:
        """The tiered table a reference names (names already folded as Postgres folds
        them); an unqualified name only when the session's search_path resolves it there."""
        return _resolve(self.tables, schema, name)

    def lookup_view(self, schema: str, name: str) -> TieredView | None:
        return _resolve(self.views, schema, name)

    def lookup_trigger(self, schema: str, name: str) -> TieredTrigger | None:
        """A trigger running a function that reads a tiered table, on the table named."""
        return _resolve(self.triggers, schema, name)

    def lookup_function(self, schema: str, name: str) -> TieredFunction | None:
        """The function a call may run (an unqualified name: any schema's function of that
        name, since overloads and the search_path are Postgres's to resolve)."""
        return next((f for f in self.functions
                     if f.name == name and (not schema or f.schema == schema)), None)


def _resolve(items: tuple[Any, ...], schema: str, name: str) -> Any:
    if schema:
        return next((t for t in items if t.schema == schema and t.name == name), None)
    return next((t for t in items if t.name == name and t.visible), None)
