"""What Fig knows of tiered tables: names, time column, tier boundary and column types."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TieredTable:
    """One table whose old rows live in Iceberg; boundary = oldest time guaranteed in hot."""

    schema: str
    name: str
    time_column: str
    boundary: dt.datetime | None
    columns: tuple[tuple[str, str], ...]  # (column name, Postgres type as format_type prints)
    row_security: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def column_type(self, column: str) -> str:
        return dict(self.columns).get(column, "")


@dataclass(frozen=True)
class TieredSet:
    """An immutable snapshot of every tiered table, with one precompiled name matcher."""

    tables: tuple[TieredTable, ...] = ()
    matcher: re.Pattern[str] | None = field(default=None, compare=False)
    byte_matcher: re.Pattern[bytes] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, tables: list[TieredTable]) -> TieredSet:
        if not tables:
            return cls()
        names = sorted({t.name for t in tables}, key=len, reverse=True)
        pattern = r"(?<![\w$])(?:" + "|".join(re.escape(n) for n in names) + r")(?![\w$])"
        return cls(tuple(tables), re.compile(pattern, re.IGNORECASE),
                   re.compile(pattern.encode(), re.IGNORECASE))

    def may_touch(self, sql: str) -> bool:
        """Cheap pre-check for every statement: does its text name a tiered table at all?"""
        return self.matcher is not None and self.matcher.search(sql) is not None

    def may_touch_bytes(self, buffer: bytes | bytearray, start: int, end: int) -> bool:
        """may_touch over a message's raw UTF-8 bytes (no copy, no decoding)."""
        return self.byte_matcher is not None and \
            self.byte_matcher.search(buffer, start, end) is not None

    def lookup(self, schema: str, name: str) -> TieredTable | None:
        """The tiered table a (possibly unqualified) reference names, if any."""
        matches = [t for t in self.tables
                   if t.name == name and (t.schema == schema or not schema)]
        if len(matches) > 1:
            matches = [t for t in matches if t.schema == "public"]
        return matches[0] if len(matches) == 1 else None
