"""Three-level pruning streamed as work units: manifest list -> manifests -> row groups.

Levels 1 and 2 use pyiceberg's own evaluators (partition summaries, partition values, column
metrics); level 3 feeds Parquet row-group statistics to the same metrics evaluator.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.visitors import (
    _InclusiveMetricsEvaluator,
    _StrictMetricsEvaluator,
    expression_evaluator,
    extract_field_ids,
    inclusive_projection,
    manifest_evaluator,
    strict_projection,
)
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import IcebergType, NestedField, PrimitiveType

from fig_server.cold.arrowtypes import arrow_type
from fig_server.cold.metadata import Footer, MetadataCache
from fig_server.cold.rowgroups import row_group_as_data_file, row_group_bounds
from fig_server.cold.topn import OrderKey, best_key, domain_value
from fig_server.cold.units import ColumnRead, ScanStats, WorkUnit
from fig_server.cold.worker import native_path
from fig_server.errors import FeatureNotSupported


@dataclass
class ScanSpec:
    """One table's scan: which snapshot, which rows may matter, which columns, which order."""

    name: str
    io: FileIO
    snapshot: Snapshot | None
    schema: Schema
    specs: dict[int, PartitionSpec]
    row_filter: BooleanExpression
    fields: list[NestedField]
    order: OrderKey | None = None
    # Set when the query is count(*) only and this filter is exactly its WHERE: files whose
    # partition implies it are counted from their manifest record counts, never read.
    count_filter: BooleanExpression | None = None
    # LIMIT n without ORDER BY: any n matching rows answer it, so files run one at a time,
    # in scan order, until n rows are found.
    limit: int | None = None


@dataclass(frozen=True)
class _ManifestKept:
    """One manifest's pruning under one filter: whether its partition summary may match, its
    data files that may (with data sequence numbers), and how many files and bytes it lists."""

    scanned: bool
    kept: tuple[tuple[DataFile, int], ...]
    files: int
    bytes: int


# Batches per worker slot: enough to balance uneven files, few enough to keep per-batch
# overhead (a listing table, a SQL plan, an IPC result) small.
BATCHES_PER_SLOT = 4
MAX_BATCH_FILES = 256
MAX_BATCH_BYTES = 256 << 20


class Pruner:
    """Plans one scan, yielding work units while it walks the metadata; fills in stats."""

    def __init__(self, scan: ScanSpec, cache: MetadataCache, stats: ScanStats) -> None:
        self.scan = scan
        self.cache = cache
        self.stats = stats
        # What a manifest's or a footer's pruning is cached under, besides its path: the
        # filter, as pyiceberg spells it (class names and values: two filters that print
        # alike are alike), bound to this schema.
        self._filter_key = (scan.schema.schema_id, repr(scan.row_filter))
        self._evaluator: _InclusiveMetricsEvaluator | None = None
        self._all_pass: _StrictMetricsEvaluator | None = None
        self._strict: dict[int, Callable[[Any], bool]] = {}
        self.metadata_rows = 0

    def _metrics_evaluator(self) -> _InclusiveMetricsEvaluator:
        """The filter bound to the scan's schema, on first use: a query whose pruning is all
        cached never builds it."""
        if self._evaluator is None:
            self._evaluator = _InclusiveMetricsEvaluator(self.scan.schema, self.scan.row_filter)
        return self._evaluator

    def _metrics(self, data_file: Any) -> bool:
        """Might a file (or a row group posing as one) hold a matching row, by its column
        metrics?"""
        return self._metrics_evaluator().eval(data_file)

    def batches(self, slots: int,
                stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[WorkUnit, ...]]:
        """Whole-file units grouped for one worker each (scans without ORDER BY ... LIMIT).

        Levels 1 and 2 run first (cached manifests), so the batch size is known from the
        number of files; footers are then read as batches are yielded. Files answered from
        metadata alone add to metadata_rows instead.

        Batches stay the same while files are added (the result cache keeps each batch's
        result): files go in the order they were committed, so new ones join the last
        batches, and the batch size is the power of two nearest the ideal (between 3 and 6
        batches per slot), so it changes only when the number of files doubles.
        """
        if self.scan.snapshot is None:
            return
        files = sorted(((data_file, spec_id, sequence) for data_file, spec_id, sequence
                        in self._kept_files(stop) if not self._counted(data_file, spec_id)),
                       key=lambda kept: (kept[2], kept[0].file_path))
        ideal = len(files) / (slots * BATCHES_PER_SLOT)
        size = 1 if ideal <= 1 else min(MAX_BATCH_FILES, 1 << round(math.log2(ideal)))
        batch: list[WorkUnit] = []
        batch_bytes = 0
        for data_file, _, _ in files:
            if stop():
                return
            unit = self._file_unit(data_file, native=True)
            if unit is None:
                continue
            if not unit.native:
                yield (unit,)
                continue
            batch.append(unit)
            batch_bytes += unit.bytes
            if len(batch) >= size or batch_bytes >= MAX_BATCH_BYTES:
                yield tuple(batch)
                batch, batch_bytes = [], 0
        if batch:
            yield tuple(batch)

    def _counted(self, data_file: DataFile, spec_id: int) -> bool:
        """Count a file from its record count when its partition implies the whole filter."""
        count_filter = self.scan.count_filter
        if count_filter is None:
            return False
        if spec_id not in self._strict:
            if isinstance(count_filter, AlwaysTrue):
                self._strict[spec_id] = lambda _: True
            else:
                spec, schema = self.scan.specs[spec_id], self.scan.schema
                projected = strict_projection(schema, spec)(count_filter)
                partition_schema = Schema(*spec.partition_type(schema).fields)
                self._strict[spec_id] = expression_evaluator(partition_schema, projected, True)
        if not self._strict[spec_id](data_file.partition):
            return False
        self.metadata_rows += int(data_file.record_count)
        self.stats.files_from_metadata += 1
        return True

    def units(self, stop: Callable[[], bool] = lambda: False,
              whole: Callable[[], bool] = lambda: False) -> Iterator[WorkUnit]:
        """Work units in scan order, or best-first by the ORDER BY column's bounds.

        In scan order (LIMIT without ORDER BY) each unit is a whole file, read by DataFusion
        when it is local: its LIMIT stops the read at the first batch with enough rows, where
        reading the file's row groups first took 9.6 of a 12 ms preview (dbt show, one file
        of three 65,536-row groups for 5 rows). Best-first, units are row groups until
        whole() says otherwise (see _best_first)."""
        if self.scan.snapshot is None:
            return
        files = self._kept_files(stop)
        if self.scan.order is None:
            for data_file, _, _ in files:
                if stop():
                    return
                unit = self._file_unit(data_file, native=True)
                if unit is not None:
                    yield unit
        else:
            yield from self._best_first([f for f, _, _ in files], self.scan.order, stop, whole)

    def _kept_files(self, stop: Callable[[], bool]) -> Iterator[tuple[DataFile, int, int]]:
        """Levels 1 and 2: data files whose partition values and metrics might match, with
        their spec id and data sequence number (the order they were committed in). Each
        manifest's outcome is cached by path and filter: a manifest never changes, and a new
        snapshot mostly lists the manifests of the one before, so a statement run again
        evaluates only what was committed since (pyiceberg's evaluators cost ~1.5 ms per
        statement over 60 files, most of a short statement's cold time)."""
        scan, stats = self.scan, self.stats
        assert scan.snapshot is not None
        manifests = self.cache.manifests(scan.io, scan.snapshot)
        self._totals_from_summary(scan.snapshot, manifests)
        evaluators: dict[int, tuple[Callable[[ManifestFile], bool], Callable[[Any], bool]]] = {}

        def prune(manifest: ManifestFile) -> _ManifestKept:
            spec_id = manifest.partition_spec_id
            if spec_id not in evaluators:
                evaluators[spec_id] = self._partition_evaluators(spec_id)
            keep_manifest, keep_partition = evaluators[spec_id]
            if not keep_manifest(manifest):
                return _ManifestKept(False, (), 0, 0)
            kept, files, size = [], 0, 0
            for entry in self.cache.entries(scan.io, manifest):
                data_file = entry.data_file
                if data_file.content != DataFileContent.DATA:
                    raise FeatureNotSupported("Iceberg delete files in cold scans")
                files += 1
                size += data_file.file_size_in_bytes
                if keep_partition(data_file.partition) and self._metrics(data_file):
                    kept.append((data_file, entry.sequence_number or
                                 manifest.sequence_number or 0))
            return _ManifestKept(True, tuple(kept), files, size)

        for manifest in manifests:
            if manifest.content == ManifestContent.DELETES:
                raise FeatureNotSupported("Iceberg delete files (merge-on-read) in cold scans")
            if stop():
                return
            outcome = self.cache.manifest_kept((manifest.manifest_path, self._filter_key),
                                               functools.partial(prune, manifest))
            if not outcome.scanned:
                continue
            stats.manifests_kept += 1
            if self._summary_incomplete:
                stats.files_total += outcome.files
                stats.bytes_total += outcome.bytes
            for data_file, sequence in outcome.kept:
                if stop():
                    return
                stats.files_kept += 1
                yield data_file, manifest.partition_spec_id, sequence

    _summary_incomplete = False

    def _totals_from_summary(self, snapshot: Snapshot, manifests: list[ManifestFile]) -> None:
        self.stats.manifests_total += len(manifests)
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if "total-data-files" in summary and "total-files-size" in summary:
            self.stats.files_total += int(summary["total-data-files"])
            self.stats.bytes_total += int(summary["total-files-size"])
        else:
            self._summary_incomplete = True

    def _partition_evaluators(
            self, spec_id: int) -> tuple[Callable[[ManifestFile], bool], Callable[[Any], bool]]:
        spec, schema = self.scan.specs[spec_id], self.scan.schema
        projected = inclusive_projection(schema, spec)(self.scan.row_filter)
        keep_manifest = manifest_evaluator(spec, schema, projected, True)
        partition_schema = Schema(*spec.partition_type(schema).fields)
        keep_partition = expression_evaluator(partition_schema, projected, True)
        return keep_manifest, keep_partition

    def _kept_row_groups(self, path: str, footer: Footer) -> tuple[int, ...]:
        """Level 3: row groups whose statistics might match (cached as manifests are)."""
        total = footer.num_row_groups
        self.stats.row_groups_total += total
        kept: tuple[int, ...] = self.cache.row_groups_kept((path, self._filter_key),
                                            lambda: self._matching_row_groups(footer))
        self.stats.row_groups_kept += len(kept)
        return kept

    def _matching_row_groups(self, footer: Footer) -> tuple[int, ...]:
        total = footer.num_row_groups
        if isinstance(self.scan.row_filter, AlwaysTrue):
            return tuple(range(total))
        filter_ids = extract_field_ids(self._metrics_evaluator().expr)
        if not filter_ids:
            return tuple(range(total))
        return tuple(i for i in range(total) if self._metrics(
            row_group_as_data_file(footer, i, self.scan.schema, filter_ids)))

    def _file_unit(self, data_file: DataFile, native: bool = False,
                   best: Any = None) -> WorkUnit | None:
        footer = self.cache.footer(self.scan.io, data_file.file_path)
        kept = self._kept_row_groups(data_file.file_path, footer)
        return self._unit(data_file.file_path, footer, kept, best, native) if kept else None

    def _unit(self, path: str, footer: Footer, row_groups: Sequence[int],
              best: Any = None, native: bool = False) -> WorkUnit:
        columns = self._columns(footer)
        native = native and _all_readable_by_name(columns, footer)
        names = [column.file_name for column in columns if column.file_name is not None]
        size = _chunk_bytes(footer, row_groups, names)
        rows = sum(int(footer.metadata.row_group(i).num_rows) for i in row_groups)
        self.stats.bytes_estimated += size
        self.stats.units_planned += 1
        return WorkUnit(path, tuple(row_groups), tuple(columns), rows, size, best,
                        native=native and bool(columns))

    def _columns(self, footer: Footer) -> list[ColumnRead]:
        """The scan's columns as this file names them (None: the file lacks one)."""
        columns = []
        for field in self.scan.fields:
            file_name = footer.names_by_field_id.get(field.field_id)
            if file_name is None and not footer.names_by_field_id \
                    and field.name in footer.arrow_schema.names:
                file_name = field.name  # files written without field ids: match by name
            columns.append(ColumnRead(file_name, field.name, arrow_type(field.field_type)))
        return columns

    def _best_first(self, files: list[DataFile], key: OrderKey, stop: Callable[[], bool],
                    whole: Callable[[], bool]) -> Iterator[WorkUnit]:
        """Row-group units in order of the best ORDER BY value they could hold.

        Files enter a heap keyed by their manifest bounds; a popped file is replaced by its
        row groups (footer read only then), each keyed no earlier than its file. A popped file
        is one whole-file unit instead once whole() is true (the dispatcher found the first
        units' rows too few to fill the top-n: a filter the statistics cannot prune), and
        from the start when DataFusion reads it and filters it itself (_filters_itself): a
        Metabase-style `WHERE user_id = K ORDER BY ts LIMIT 2000` read 180 row groups one by
        one in 256 ms, whole files in 76 ms.
        """
        counter = itertools.count()
        heap: list[tuple[Any, int, Any]] = [
            (self._file_best(f, key), next(counter), f) for f in files]
        heapq.heapify(heap)
        while heap and not stop():
            best, _, item = heapq.heappop(heap)
            if isinstance(item, DataFile) and (whole() or self._filters_itself(item)):
                unit = self._file_unit(item, native=True, best=best)
                if unit is not None:
                    yield unit
            elif isinstance(item, DataFile):
                footer = self.cache.footer(self.scan.io, item.file_path)
                for index in self._kept_row_groups(item.file_path, footer):
                    lower, upper, nulls, values = row_group_bounds(
                        footer, index, self.scan.schema, key.field.field_id)
                    group_best = max(best, best_key(lower, upper, nulls, values, None, key))
                    heapq.heappush(heap, (group_best, next(counter), (item.file_path, footer,
                                                                      index)))
            else:
                path, footer, index = item
                yield self._unit(path, footer, [index], best)

    def _filters_itself(self, data_file: DataFile) -> bool:
        """Will DataFusion read this file whole faster than its row groups one by one? When
        it is local and readable by name (DataFusion reads it) and the filter may drop some of
        its rows (its metrics do not show every row passes): DataFusion then reads the
        filter's columns first and the others only where a row passed, where a row-group unit
        reads every column of its rows (the architecture document's example, `day = ... AND
        status = 500 ORDER BY ts DESC LIMIT 5` over one day's file: 28 -> 11 ms). A filter
        every row passes gains nothing from it (`ts` within a week: row groups stay faster)."""
        if isinstance(self.scan.row_filter, AlwaysTrue) or native_path(data_file.file_path) is None:
            return False
        footer = self.cache.footer(self.scan.io, data_file.file_path)
        if not _all_readable_by_name(self._columns(footer), footer):
            return False
        if self._all_pass is None:
            self._all_pass = _StrictMetricsEvaluator(self.scan.schema, self.scan.row_filter)
        return not self._all_pass.eval(data_file)

    def _file_best(self, data_file: DataFile, key: OrderKey) -> Any:
        field_id, ftype = key.field.field_id, key.field.field_type

        def bound(bounds: dict[int, bytes] | None) -> Any:
            raw = (bounds or {}).get(field_id)
            # Iceberg writes bounds only for primitive fields, so a raw bound implies one.
            return domain_value(from_bytes(cast(PrimitiveType, ftype), raw), ftype) \
                if raw is not None else None

        nulls = (data_file.null_value_counts or {}).get(field_id)
        values = (data_file.value_counts or {}).get(field_id)
        nans = (data_file.nan_value_counts or {}).get(field_id)
        return best_key(bound(data_file.lower_bounds), bound(data_file.upper_bounds),
                        nulls, values, nans, key)


def _all_readable_by_name(columns: list[ColumnRead], footer: Footer) -> bool:
    """Whether DataFusion's reader reads the file itself (see _readable_by_name)."""
    return all(_readable_by_name(column, footer) for column in columns)


def _readable_by_name(column: ColumnRead, footer: Footer) -> bool:
    """Whether DataFusion's reader, matching columns by name, reads this column right: same
    name and type, or absent under that name too (then NULL); never floats, whose Parquet
    min/max leave NaN out and DataFusion 55 then drops or rewrites NaN values (seen: a
    column of -1.0 and NaN read back as -1.0 twice)."""
    if pa.types.is_floating(column.type):
        return False
    schema = footer.arrow_schema
    if column.file_name is None:
        return column.name not in schema.names
    if column.file_name != column.name or schema.get_field_index(column.name) < 0:
        return False
    return _widens_to(schema.field(column.name).type, column.type)


def _widens_to(file_type: pa.DataType, table_type: pa.DataType) -> bool:
    """Same values after DataFusion's cast: equal types, string or binary flavours, and
    Iceberg's promotions (int to long, wider decimals of the same scale)."""
    if file_type == table_type:
        return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    binaries = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    for family in (strings, binaries):
        if any(f(file_type) for f in family) and any(f(table_type) for f in family):
            return True
    if pa.types.is_int32(file_type) and pa.types.is_int64(table_type):
        return True
    if pa.types.is_decimal(file_type) and pa.types.is_decimal(table_type):
        return bool(file_type.scale == table_type.scale
                    and file_type.precision <= table_type.precision)
    return False


def _chunk_bytes(footer: Footer, row_groups: Sequence[int], names: list[str]) -> int:
    """Compressed bytes of the chosen column chunks: what reading the unit costs."""
    leaves = [footer.leaf_by_name[n] for n in names if n in footer.leaf_by_name]
    total = 0
    for index in row_groups:
        row_group = footer.metadata.row_group(index)
        total += sum(int(row_group.column(leaf).total_compressed_size) for leaf in leaves)
    return total


def empty_table(fields: list[NestedField]) -> pa.Table:
    """A table with no rows and the scan's columns, for plans that keep no unit."""
    return _empty_table(tuple((f.name, f.field_type) for f in fields))


@functools.lru_cache(maxsize=256)
def _empty_table(columns: tuple[tuple[str, IcebergType], ...]) -> pa.Table:
    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in columns]).empty_table()
