"""Fig's Iceberg tables: creation from a Postgres table's columns and the CDC checkpoint.

Each table is partitioned by day(time column), its identifier fields are the primary key,
and every commit made by CDC carries `fig.lsn` (end LSN of the last Postgres transaction it
contains) both in the snapshot summary and in the table properties (so compaction and
snapshot expiry never lose it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import BooleanExpression
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import DataScan, Table, TableMetadata
from pyiceberg.table import Transaction as IcebergTransaction
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.table.update import TableUpdate
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import NestedField

from fig_server.storage.typemap import PgColumn, iceberg_type

LSN = "fig.lsn"
COPY_SNAPSHOT = "fig.copy-snapshot"
COPY_LSN = "fig.copy-lsn"
COPY_DONE = "fig.copy-done"
MANAGED = "fig.managed"
# The last group of a spilled transaction committed:
# "<end lsn>/<spill_bytes>x<chunks per group>#<group index>"
SPILL_MARK = "fig.spill-chunk"
ATTNUM_DOC = "pg attnum "


@dataclass(frozen=True)
class Checkpoint:
    """What Iceberg says CDC has committed for one table."""

    lsn: int
    copy_done: bool
    copy_snapshot: str
    copy_lsn: int


def attnum_doc(attnum: int) -> str:
    return f"{ATTNUM_DOC}{attnum}"


def doc_attnum(doc: str | None) -> int:
    if doc and doc.startswith(ATTNUM_DOC):
        return int(doc[len(ATTNUM_DOC):])
    return 0


def iceberg_schema(columns: Sequence[PgColumn], primary_key: Sequence[str]) -> Schema:
    fields = []
    for index, column in enumerate(columns, start=1):
        fields.append(NestedField(
            field_id=index, name=column.name,
            field_type=iceberg_type(column, element_id=len(columns) + index),
            required=column.name in primary_key, doc=attnum_doc(column.attnum)))
    ids = [index for index, c in enumerate(columns, start=1) if c.name in primary_key]
    return Schema(*fields, identifier_field_ids=ids)


# Rows per Parquet row group: small enough that a day's file has several, so row-group
# statistics prune inside a day and top-n stops after a fraction of it.
ROW_GROUP_ROWS = 64 * 1024


def create_table(catalog: Catalog, identifier: tuple[str, str], columns: Sequence[PgColumn],
                 primary_key: Sequence[str], time_column: str) -> Table:
    """Create (or replace an unfinished) Iceberg table for a Postgres table."""
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(identifier[0])
    with contextlib.suppress(NoSuchTableError):
        catalog.drop_table(identifier)
    schema = iceberg_schema(columns, primary_key)
    source_id = schema.find_field(time_column).field_id
    spec = PartitionSpec(PartitionField(source_id=source_id, field_id=1000,
                                        transform=DayTransform(), name=f"{time_column}_day"))
    order = SortOrder(SortField(source_id=source_id, transform=IdentityTransform()))
    return catalog.create_table(identifier, schema=schema, partition_spec=spec,
                                sort_order=order,
                                properties={MANAGED: "true",
                                            "write.parquet.row-group-limit": str(ROW_GROUP_ROWS)})


def read_checkpoint(table: Table) -> Checkpoint:
    props = table.properties
    return Checkpoint(
        lsn=str_to_lsn(props.get(LSN, "0/0")),
        copy_done=props.get(COPY_DONE) == "true",
        copy_snapshot=props.get(COPY_SNAPSHOT, ""),
        copy_lsn=str_to_lsn(props.get(COPY_LSN, "0/0")),
    )


def lsn_to_str(lsn: int) -> str:
    """A WAL position in Postgres's X/Y notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class Transaction(IcebergTransaction):
    """pyiceberg's Transaction with its staged metadata computed once per change.

    pyiceberg recomputes, and deep-copies, the whole table metadata at every read of
    `table_metadata`, and its copy-on-write delete reads it three times per data file: with a
    few hundred snapshots (CDC commits at every flush and expiry keeps ten minutes of them) a
    read took 24 ms, so one delete over a thousand files took minutes (found by the kill
    test: fig.sync timed out while CDC replayed a large transaction). The staged metadata is
    a function of the table's metadata and the staged updates, which pyiceberg replaces and
    never mutates (its models are frozen), so it is kept while both are the same objects."""

    _staged: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        staged = self._staged
        if staged is None or staged[0] is not self._table.metadata \
                or staged[1] is not self._updates:
            staged = (self._table.metadata, self._updates, super().table_metadata)
            self._staged = staged
        return staged[2]

    def __enter__(self) -> Transaction:
        return self

    def scan(self, row_filter: BooleanExpression) -> DataScan:
        """A scan of the table as this transaction has staged it (its own changes seen)."""
        return self._scan(row_filter=row_filter)


def transaction(table: Table) -> Transaction:
    """A transaction on `table` (use it as a context manager; it commits on exit)."""
    return Transaction(table)

