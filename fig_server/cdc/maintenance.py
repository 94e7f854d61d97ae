"""Maintenance of Fig's Iceberg tables: compaction, snapshot expiry, orphan and dropped files."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from pyarrow.fs import FileSelector, FileType
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table
from pyiceberg.types import DateType, TimestamptzType

from fig_server import metrics
from fig_server.cdc.control import KEY_MODULUS
from fig_server.storage import objects
from fig_server.storage.tables import LSN, MANAGED, transaction

if TYPE_CHECKING:
    from fig_server.cdc.service import CdcProcess, TieredTable

log = logging.getLogger(__name__)
INTERVAL_S = 600.0
SMALL_FILE_BYTES = 32 * 1024 * 1024
MIN_FILES_TO_COMPACT = 8
SNAPSHOT_AGE = timedelta(minutes=10)
ORPHAN_AGE_S = 600.0


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata still references, from manifests (never folders)."""
    io = table.io
    files = {table.metadata_location}
    files.update(entry.metadata_file for entry in table.metadata.metadata_log)
    for snapshot in table.snapshots():
        files.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                files.add(entry.data_file.file_path)
    return files


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Maintenance:
    """Runs inside the CDC process, between batches, so it never races a CDC commit."""

    def __init__(self, process: CdcProcess) -> None:
        self.process = process
        self.next_run = time.monotonic() + INTERVAL_S
        self.next_drop_check = 0.0

    def maybe_run(self) -> None:
        if time.monotonic() < self.next_run:
            return
        self.next_run = time.monotonic() + INTERVAL_S
        for relid in list(self.process.appliers):
            self.run_table(relid, compact_all=False)

    def compact_requested(self, key: int) -> None:
        for relid in list(self.process.appliers):
            if relid % KEY_MODULUS == key:
                self.run_table(relid, compact_all=True)
                self.process.status.table(relid, self.process.appliers[relid].table,
                                          compacted_at="now")

    def run_table(self, relid: int, compact_all: bool) -> None:
        self.process.flush()
        applier = self.process.appliers[relid]
        table = applier.table
        self.compact(table, applier.time_column, compact_all)
        table.maintenance.expire_snapshots().older_than(
            datetime.now(UTC) - SNAPSHOT_AGE).commit()
        self.remove_orphans(table)
        table.refresh()

    def compact(self, table: Table, time_column: str, compact_all: bool) -> int:
        """Rewrite each day with several small files as one sorted file; returns days done."""
        snapshot = table.current_snapshot()
        if snapshot is None:
            return 0
        days: dict[int, list[int]] = defaultdict(list)
        for task in table.scan().plan_files():
            part = task.file.partition[0]
            if part is not None:
                days[part].append(task.file.file_size_in_bytes)
        lsn = table.properties.get(LSN, "0/0")
        field_type = table.schema().find_field(time_column).field_type
        done = 0
        for day, sizes in sorted(days.items()):
            small = [s for s in sizes if s < SMALL_FILE_BYTES]
            if len(small) < (2 if compact_all else MIN_FILES_TO_COMPACT):
                continue
            low, high = _day_bounds(day, field_type)
            time_ref = Reference(time_column)
            window = And(GreaterThanOrEqual(term=time_ref, value=literal(low)),
                         LessThan(term=time_ref, value=literal(high)))
            rows = table.scan(row_filter=window).to_arrow().sort_by(time_column)
            with transaction(table) as tx:
                tx.overwrite(rows, overwrite_filter=window, snapshot_properties={LSN: lsn})
            done += 1
        if done:
            metrics.COMPACTION_RUNS.inc()
            log.info("compacted %d days of %s", done, table.name())
        return done

    def remove_orphans(self, table: Table) -> int:
        """Delete files under the table's location that no metadata references and that are
        older than ORPHAN_AGE_S (a writer may not have committed a newer one yet)."""
        fs, root = objects.filesystem(table.io.properties, table.location())
        keep = {objects.filesystem(table.io.properties, f)[1]
                for f in referenced_files(table)}
        removed = 0
        oldest = datetime.now(UTC) - timedelta(seconds=ORPHAN_AGE_S)
        for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type != FileType.File or info.path in keep:
                continue
            if info.mtime is not None and _aware(info.mtime) < oldest:
                fs.delete_file(info.path)
                removed += 1
        return removed

    def drop_table(self, identifier: tuple[str, str]) -> None:
        """Drop an Iceberg table and delete every file its metadata references."""
        catalog = self.process.catalog
        try:
            table = catalog.load_table(identifier)
        except NoSuchTableError:
            return
        fs, folder = objects.filesystem(table.io.properties, table.location())
        _, warehouse = objects.filesystem(table.io.properties, self.process.config.warehouse)
        if folder.rstrip("/").startswith(warehouse.rstrip("/") + "/"):
            # A Fig-managed table owns its folder: removing it is one call, where reading
            # every manifest of a long-streamed table took minutes and held up CDC's start.
            catalog.drop_table(identifier)
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(folder)
            log.info("dropped cold table %s (folder %s)", ".".join(identifier), folder)
            return
        files = referenced_files(table)
        catalog.drop_table(identifier)
        for path in files:
            try:
                table.io.delete(path)
            except OSError:
                log.warning("could not delete %s", path)
        log.info("dropped cold table %s (%d files)", ".".join(identifier), len(files))

    def unmanage(self, identifier: tuple[str, str]) -> None:
        """Keep an Iceberg table Fig no longer feeds: drop_unmanaged then leaves it alone."""
        try:
            table = self.process.catalog.load_table(identifier)
        except NoSuchTableError:
            return
        with transaction(table) as tx:
            tx.set_properties({MANAGED: "false"})
        log.info("kept cold table %s (no longer managed by Fig)", ".".join(identifier))

    def drop_unmanaged(self, wanted: set[TieredTable]) -> None:
        """Drop Fig-managed Iceberg tables whose Postgres table is no longer tiered."""
        if time.monotonic() < self.next_drop_check:
            return
        self.next_drop_check = time.monotonic() + 10.0
        keep = {t.identifier for t in wanted}
        catalog = self.process.catalog
        for namespace in catalog.list_namespaces():
            for identifier in catalog.list_tables(namespace):
                ident = (identifier[0], identifier[1])
                if ident in keep:
                    continue
                try:
                    managed = catalog.load_table(ident).properties.get(MANAGED) == "true"
                except NoSuchTableError:
                    continue
                if managed:
                    self.drop_table(ident)


def _day_bounds(day: int, field_type: object) -> tuple[date, date]:
    start = date(1970, 1, 1) + timedelta(days=day)
    if isinstance(field_type, DateType):
        return start, start + timedelta(days=1)
    moment = datetime(start.year, start.month, start.day)
    if isinstance(field_type, TimestamptzType):
        moment = moment.replace(tzinfo=UTC)
    return moment, moment + timedelta(days=1)


