"""Iceberg and Parquet metadata, cached across queries: manifest lists by snapshot, manifests
and footers by path (Iceberg never rewrites a file in place), and what pruning each kept under
a filter."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFileContent, ManifestContent, ManifestEntry, ManifestFile
from pyiceberg.table.snapshots import Snapshot

V = TypeVar("V")


@dataclass(frozen=True)
class Footer:
    """A Parquet footer and where each Iceberg field id lives among its columns."""

    metadata: pq.FileMetaData
    names_by_field_id: dict[int, str]
    leaf_by_name: dict[str, int]
    arrow_schema: pa.Schema

    @property
    def num_row_groups(self) -> int:
        return int(self.metadata.num_row_groups)


class Lru:
    """A small thread-safe LRU map."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_or_load(self, key: Any, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                value: V = self._items[key]
                return value
        value = load()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return value


class MetadataCache:
    """Manifest lists, manifests and footers shared by every query of one engine."""

    def __init__(self, max_manifest_lists: int = 256, max_manifests: int = 4096,
                 max_footers: int = 16384) -> None:
        self._lists = Lru(max_manifest_lists)
        self._manifests = Lru(max_manifests)
        self._footers = Lru(max_footers)
        # Pruning outcomes by path and filter. A manifest's holds its kept files (references
        # to the cached entries' DataFiles): fewer of those, as a filter that changes with
        # every statement (a time relative to now()) adds one per manifest each time.
        self._manifests_kept = Lru(1024)
        self._row_groups_kept = Lru(max_footers)

    def manifests(self, io: FileIO, snapshot: Snapshot) -> list[ManifestFile]:
        return self._lists.get_or_load(snapshot.manifest_list,
                                       lambda: list(snapshot.manifests(io)))

    def entries(self, io: FileIO, manifest: ManifestFile) -> list[ManifestEntry]:
        return self._manifests.get_or_load(
            manifest.manifest_path,
            lambda: manifest.fetch_manifest_entry(io, discard_deleted=True))

    def footer(self, io: FileIO, path: str) -> Footer:
        return self._footers.get_or_load(path, lambda: read_footer(io, path))

    def manifest_kept(self, key: tuple[str, Any], prune: Callable[[], V]) -> V:
        """What pruning one manifest (key: its path, then the filter) kept: a manifest never
        changes, so neither does the outcome of one filter over it."""
        return self._manifests_kept.get_or_load(key, prune)

    def row_groups_kept(self, key: tuple[str, Any], prune: Callable[[], V]) -> V:
        """The row groups of one data file (key: its path, then the filter) pruning kept."""
        return self._row_groups_kept.get_or_load(key, prune)

    @property
    def footers_cached(self) -> int:
        return len(self._footers)

    def warm(self, io: FileIO, snapshot: Snapshot, max_files: int,
             stop: Callable[[], bool] = lambda: False) -> int:
        """Read a snapshot's manifest list, manifests and the footers of up to max_files data
        files, as the first query's pruning would (after a start it otherwise reads them all
        on the clock: 1.8 s for 60 files of the quick benchmark); the footers read."""
        read = 0
        for manifest in self.manifests(io, snapshot):
            if manifest.content != ManifestContent.DATA:
                continue
            for entry in self.entries(io, manifest):
                if read >= max_files or stop():
                    return read
                if entry.data_file.content == DataFileContent.DATA:
                    self.footer(io, entry.data_file.file_path)
                    read += 1
        return read


def read_footer(io: FileIO, path: str) -> Footer:
    """Read a Parquet footer and map field ids (from the Arrow schema metadata) to columns."""
    with io.new_input(path).open() as stream:
        metadata = pq.read_metadata(stream)
    arrow_schema = metadata.schema.to_arrow_schema()
    names: dict[int, str] = {}
    for arrow_field in arrow_schema:
        raw = (arrow_field.metadata or {}).get(b"PARQUET:field_id")
        if raw is not None:
            names[int(raw)] = arrow_field.name
    leaves = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    return Footer(metadata, names, leaves, arrow_schema)
