"""Value types of the cold stage: work units, per-query scan statistics, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class ScanStats:
    """What pruning kept at each level and what execution actually did."""

    manifests_total: int = 0
    manifests_kept: int = 0
    files_total: int = 0
    files_kept: int = 0
    row_groups_total: int = 0
    row_groups_kept: int = 0
    bytes_total: int = 0
    bytes_estimated: int = 0
    bytes_read: int = 0
    units_planned: int = 0
    units_run: int = 0
    # late materialization: row-group units whose filter columns were read first, and those
    # of them in which no row passed the filter (their other columns never read)
    units_probed: int = 0
    units_skipped: int = 0
    # units answered from the result cache (result_cache.py): nothing read for them
    units_cached: int = 0
    # rows the semi-join key sets dropped in the workers (UnitTask.keys)
    rows_reduced: int = 0
    files_from_metadata: int = 0
    stopped_early: bool = False
    stopped_after_ms: float = 0.0
    plan_ms: float = 0.0
    exec_ms: float = 0.0
    # reads workers made against storage outside DataFusion (each one request on S3)
    requests: int = 0
    bytes_fetched: int = 0

    def add(self, other: ScanStats) -> None:
        """Accumulate another table's scan into this one (multi-table queries)."""
        for name in ("manifests_total", "manifests_kept", "files_total", "files_kept",
                     "row_groups_total", "row_groups_kept", "bytes_total", "bytes_estimated",
                     "bytes_read", "units_planned", "units_run", "units_probed",
                     "units_skipped", "units_cached", "rows_reduced", "files_from_metadata",
                     "requests", "bytes_fetched"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stopped_early = self.stopped_early or other.stopped_early
        self.stopped_after_ms = max(self.stopped_after_ms, other.stopped_after_ms)


@dataclass(frozen=True)
class ColumnRead:
    """One output column of a work unit: where it lives in the file (None: absent, NULL)."""

    file_name: str | None
    name: str
    type: pa.DataType


@dataclass(frozen=True)
class WorkUnit:
    """A file, some of its row groups and the columns to read: the unit a worker runs."""

    path: str
    row_groups: tuple[int, ...]
    columns: tuple[ColumnRead, ...]
    num_rows: int
    bytes: int
    best: Any = field(default=None, compare=False)
    native: bool = False  # whole file, names agree with the table: DataFusion reads it


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs, picklable: units (run as one input), SQL, how to open files."""

    units: tuple[WorkUnit, ...]
    sql: str
    io_properties: tuple[tuple[str, str], ...]
    # Late materialization: `SELECT DISTINCT __fig_unit FROM __unit WHERE <the SQL's WHERE>`
    # and the columns it reads; a row-group unit is read whole only when a row passes it.
    probe: Probe | None = None
    # Semi-join key sets: a row is kept only when each named column holds one of its keys
    # (planner/semi_join.py); the keys' type is the column's comparison type. A column the
    # SQL does not read filters nothing (the planner's key columns are read: the join reads
    # them).
    keys: tuple[tuple[str, pa.Array], ...] = ()


@dataclass(frozen=True)
class Probe:
    """The filter of a task's SQL, run alone over the columns it reads."""

    sql: str
    columns: frozenset[str]


@dataclass(frozen=True)
class TaskOutput:
    """A task's rows (Arrow IPC stream bytes) and the storage reads it made."""

    ipc: bytes
    requests: int = 0
    bytes_fetched: int = 0
    probed: int = 0
    skipped: int = 0
    reduced: int = 0


@dataclass
class ColdResult:
    """The query's output and how it was obtained."""

    table: pa.Table
    stats: ScanStats
