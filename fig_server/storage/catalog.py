"""The Iceberg catalog of the cold tier: one SQL catalog, namespace = schema, table = table."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import CommitTableResponse, Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import AddSnapshotUpdate
from sqlalchemy import bindparam, select

from fig_server import metrics
from fig_server.config import FigConfig
from fig_server.errors import ConfigurationError
from fig_server.storage import objects


class CountingCatalog(SqlCatalog):
    """The SQL catalog, counting every table commit and the data files it adds (every Iceberg
    write of every Fig process goes through here), and reading each metadata file once."""

    # metadata files remembered per catalog (a few tables, a few recent commits each)
    KEPT_METADATA = 64

    def __init__(self, name: str, **properties: str) -> None:
        super().__init__(name, **properties)
        # location -> (metadata, its FileIO)
        self._metadata = functools.lru_cache(maxsize=self.KEPT_METADATA)(self._read)
        # The location lookup, built once: building it (SQLAlchemy's column comparisons) was
        # most of a lookup's time; executed, its compiled form is SQLAlchemy's cached one.
        self._lookup = select(IcebergTables.metadata_location).where(
            IcebergTables.catalog_name == self.name,
            IcebergTables.table_namespace == bindparam("namespace"),
            IcebergTables.table_name == bindparam("name"))
        if (type_filter := self._iceberg_type_filter()) is not None:
            self._lookup = self._lookup.where(type_filter)

    def load_table(self, identifier: str | tuple[str, ...]) -> Table:
        """The table as the catalog row names it now, its metadata file read only the first
        time: a file at a metadata location never changes (each commit writes a new one), so
        the row alone says whether the remembered metadata is current. pyiceberg's own
        load_table hydrates an ORM row and reads and parses the file on every call: 1-2 ms of
        every cold part, where this lookup takes 0.05 ms."""
        namespace = Catalog.namespace_to_string(Catalog.namespace_from(identifier))
        name = Catalog.table_name_from(identifier)
        with self.engine.connect() as connection:
            location = connection.execute(
                self._lookup, {"namespace": namespace, "name": name}).scalar()
        if not location:
            return super().load_table(identifier)  # its error for a table that is gone
        metadata, io = self._metadata(location)
        return Table(identifier=(*Catalog.identifier_to_tuple(namespace), name),
                     metadata=metadata, metadata_location=location, io=io, catalog=self)

    def _read(self, location: str) -> tuple[TableMetadata, FileIO]:
        """The metadata file at a location, parsed, and the FileIO its table reads with (as
        pyiceberg's SqlCatalog makes them)."""
        metadata = FromInputFile.table_metadata(
            load_file_io(self.properties, location).new_input(location))
        return metadata, self._load_file_io(metadata.properties, location)

    def commit_table(self, table: Table, requirements: Any, updates: Any
                     ) -> CommitTableResponse:
        response = super().commit_table(table, requirements, updates)
        snapshots = [u.snapshot for u in updates if isinstance(u, AddSnapshotUpdate)]
        if snapshots:
            last = snapshots[-1].summary
            metrics.ICEBERG_COMMITS.labels(
                last.operation.value if last is not None else "unknown").inc()
        else:
            metrics.ICEBERG_COMMITS.labels("metadata").inc()
        for snapshot in snapshots:
            summary = snapshot.summary
            if summary is not None:
                metrics.PARQUET_FILES.inc(int(summary.get("added-data-files") or 0))
                metrics.PARQUET_BYTES.inc(int(summary.get("added-files-size") or 0))
                metrics.ICEBERG_ROWS.inc(int(summary.get("added-records") or 0))
        return response


def _ensure_local_folders(config: FigConfig) -> None:
    uri = config.catalog_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    warehouse = urlparse(config.warehouse)
    if warehouse.scheme in ("", "file"):
        Path(warehouse.path).mkdir(parents=True, exist_ok=True)


def warehouse_properties(config: FigConfig) -> dict[str, str]:
    """How pyiceberg and the cold workers reach the warehouse (S3 settings, when it is one)."""
    if not objects.is_object_store(config.warehouse):
        return {}
    cold = config.cold
    return objects.s3_properties(cold.s3_endpoint, cold.s3_region, cold.s3_access_key_id,
                                 cold.s3_secret_access_key)


def check_warehouse(config: FigConfig) -> None:
    """Refuse to start over an object store whose bucket does not exist: every CDC commit
    would fail. (An unreachable store is retried and reported once Fig runs.)"""
    bucket = objects.missing_bucket(warehouse_properties(config), config.warehouse)
    if bucket is not None:
        raise ConfigurationError(
            f"the warehouse bucket {bucket!r} does not exist at "
            f"{config.cold.s3_endpoint or 'the default S3 endpoint'}",
            hint="create the bucket (Fig never creates or deletes buckets), or point [cold] "
                 "warehouse at another one")


def open_catalog(config: FigConfig) -> Catalog:
    """The SQL catalog named [cold] catalog_name, creating its local folders when needed."""
    _ensure_local_folders(config)
    properties = {"uri": config.catalog_uri, "warehouse": config.warehouse,
                  **warehouse_properties(config)}
    return CountingCatalog(config.cold.catalog_name, **properties)


def table_identifier(schema: str, table: str) -> tuple[str, str]:
    """The Iceberg identifier of a Postgres table: namespace = schema, same table name."""
    return (schema, table)
