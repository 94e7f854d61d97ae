"""Task results kept across queries: a cold task's output is a function of its SQL and the
files it reads, and cold files never change.

Iceberg data files are written once under unique names and never rewritten in place (a
compaction writes new files; delete files are refused by the pruner), so the same worker SQL
over the same row groups of the same files, reading the same columns as the same types, gives
the same rows. The worker SQL carries everything the session decided (its time zone, the
constants evaluated in Postgres), so a result is shared by every session that sends the same
SQL. Semi-join keys (read from hot dimension rows, which change) are part of the key by a
digest of their values; SQL that calls a function answering differently each time is never
kept.

Dashboards re-run the same statements over history that does not change: their cold tasks
come from here, and only files new since (below a moved boundary) are read. Bounded by
[cold] result_cache_mb. Only results with far fewer rows than their task read are kept (partial
aggregates, top-n candidates, a needle's rows): a plain scan's rows are as many as its files
hold and would evict every aggregate; nor is a result larger than an eighth of the cache.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

import pyarrow as pa
import sqlglot
from sqlglot import exp

from fig_server.cold.units import TaskOutput, UnitTask

# Functions whose answer may differ between two runs over the same rows.
VOLATILE_NAMES = frozenset({"random", "uuid", "now", "current_timestamp", "current_date",
                            "current_time", "clock_timestamp", "statement_timestamp",
                            "timeofday", "gen_random_uuid", "setseed"})
VOLATILE = (exp.Rand, exp.Uuid, exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime,
            exp.CurrentDatetime)


@functools.lru_cache(maxsize=1024)
def deterministic(sql: str) -> bool:
    """Does this worker SQL answer the same every time over the same rows?"""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError:
        return False
    for node in tree.walk():
        if isinstance(node, VOLATILE):
            return False
        if isinstance(node, exp.Func) and node.sql_name().lower() in VOLATILE_NAMES:
            return False
        if isinstance(node, exp.Anonymous) and str(node.this).lower() in VOLATILE_NAMES:
            return False
    return True


def keys_digest(keys: tuple[tuple[str, pa.Array], ...]) -> bytes:
    """A digest of semi-join key sets: equal digests, equal keys (names, types, values)."""
    digest = hashlib.blake2b(digest_size=20)
    for column, values in keys:
        digest.update(f"{column}\0{values.type}\0{values.offset}\0{len(values)}\0".encode())
        for buffer in values.buffers():
            digest.update(b"\1" if buffer is None else b"\2" + len(buffer).to_bytes(8, "big"))
            if buffer is not None:
                digest.update(buffer)
    return digest.digest()


def task_key(task: UnitTask, keys: bytes = b"") -> Hashable | None:
    """What a task's output depends on, or None when it must not be kept. keys: the
    keys_digest of task.keys (computed once per scan, not per task)."""
    if not deterministic(task.sql):
        return None
    if task.keys and not keys:
        keys = keys_digest(task.keys)
    return (task.sql, keys,
            tuple((unit.path, unit.row_groups, unit.columns) for unit in task.units))


# A result is kept when it has at most 1/KEPT_SHARE of the rows its task read, or only a few.
KEPT_SHARE = 4
SMALL_RESULT_ROWS = 100


class ResultCache:
    """Task outputs by task_key, least recently used out first, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(max_bytes, 0)
        self.max_entry_bytes = self.max_bytes // 8
        self._items: OrderedDict[Hashable, TaskOutput] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable | None) -> TaskOutput | None:
        if key is None or not self.max_bytes:
            return None
        with self._lock:
            output = self._items.get(key)
            if output is not None:
                self._items.move_to_end(key)
            return output

    def put(self, key: Hashable | None, output: TaskOutput, rows: int, rows_read: int) -> None:
        """Keep a task's output of `rows` rows, computed from `rows_read` rows."""
        size = len(output.ipc)
        if key is None or size > self.max_entry_bytes or \
                rows > max(rows_read // KEPT_SHARE, SMALL_RESULT_ROWS):
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.ipc)
            self._items[key] = output
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.ipc)
