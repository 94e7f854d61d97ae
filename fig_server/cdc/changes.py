"""Row changes of one table within a batch, collapsed by primary key into deletes and rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fig_server.cdc.pgoutput import UNCHANGED, Value
from fig_server.errors import DataException

Row = dict[str, Value]
Key = tuple[Value, ...]


@dataclass(frozen=True)
class RowInsert:
    new: Row


@dataclass(frozen=True)
class RowUpdate:
    old: Row | None
    new: Row


@dataclass(frozen=True)
class RowDelete:
    old: Row


@dataclass(frozen=True)
class TableTruncate:
    pass


Change = RowInsert | RowUpdate | RowDelete | TableTruncate


@dataclass
class Collapsed:
    """The net effect of a batch on a table that equalled Postgres before it."""

    truncate: bool = False
    delete_keys: list[Key] = field(default_factory=list)
    old_times: list[Value] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


def _fill_unchanged(new: Row, previous: Row | None) -> Row:
    """Unchanged TOASTed values ('u') take the value of the row's previous version."""
    if not any(value is UNCHANGED for value in new.values()):
        return new
    filled = dict(new)
    for name, value in new.items():
        if value is UNCHANGED:
            if previous is None or previous.get(name, UNCHANGED) is UNCHANGED:
                raise DataException(
                    f'update without the unchanged TOASTed value of column "{name}"',
                    hint="tiered tables need REPLICA IDENTITY FULL (fig.tier_table sets it)")
            filled[name] = previous[name]
    return filled


def collapse(changes: Sequence[Change], primary_key: Sequence[str], time_column: str,
             every_key: bool = False) -> Collapsed:
    """Net deletes (keys present in Iceberg) and final rows of a sequence of changes.

    every_key: delete every key the changes touch, inserted ones too, so that applying them
    again over a table that already has them gives the same table (a replayed chunk of a
    spilled transaction)."""
    out = Collapsed()
    final: dict[Key, Row | None] = {}
    in_cold: dict[Key, bool] = {}

    def key(row: Row) -> Key:
        return tuple(row.get(name) for name in primary_key)

    for change in changes:
        if isinstance(change, RowInsert):
            k = key(change.new)
            in_cold.setdefault(k, False)
            final[k] = change.new
        elif isinstance(change, RowUpdate):
            old_key = key(change.old) if change.old is not None else key(change.new)
            in_cold.setdefault(old_key, True)
            if change.old is not None:
                out.old_times.append(change.old.get(time_column))
            previous = final.get(old_key) or change.old
            new = _fill_unchanged(change.new, previous)
            new_key = key(new)
            if new_key != old_key:
                final[old_key] = None
                in_cold.setdefault(new_key, False)
            final[new_key] = new
        elif isinstance(change, RowDelete):
            k = key(change.old)
            in_cold.setdefault(k, True)
            out.old_times.append(change.old.get(time_column))
            final[k] = None
        else:
            out.truncate = True
            final.clear()
            in_cold.clear()
            out.old_times.clear()
    out.delete_keys = [k for k, present in in_cold.items() if present or every_key]
    out.rows = [row for row in final.values() if row is not None]
    if every_key and not out.truncate:
        out.old_times.extend(row.get(time_column) for row in out.rows)
    return out
