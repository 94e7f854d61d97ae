"""Applies a batch of one table's changes to its Iceberg table in one Iceberg transaction."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThanOrEqual,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files, schema_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
)

from fig_server.cdc.changes import Change, Collapsed, Row, collapse
from fig_server.cdc.pgoutput import UNCHANGED
from fig_server.errors import DataException, FeatureNotSupported, FigError
from fig_server.storage.tables import (
    LSN,
    Transaction,
    attnum_doc,
    doc_attnum,
    lsn_to_str,
    transaction,
)
from fig_server.storage.typemap import PgColumn, iceberg_type, text_to_arrow

log = logging.getLogger(__name__)
ROW_NUMBER = "__fig_row_number"


@dataclass(frozen=True)
class ColumnSpec:
    """A column as Postgres currently describes it, for schema evolution."""

    name: str
    ice_type: IcebergType | None  # None: no faithful mapping
    attnum: int
    type_label: str


@dataclass(frozen=True)
class SchemaStep:
    kind: str  # add | drop | rename | widen
    name: str
    new_name: str = ""
    ice_type: IcebergType | None = None
    attnum: int = 0


def column_spec(name: str, column: PgColumn, attnum: int) -> ColumnSpec:
    """A Postgres column for plan_evolution: its Iceberg type, or None when it has none."""
    try:
        ice: IcebergType | None = iceberg_type(column)
    except FigError:
        ice = None
    label = column.elem_name + "[]" if column.is_array else column.type_name
    return ColumnSpec(name, ice, attnum, label)


class Unexpressible(FeatureNotSupported):
    """A Postgres schema change that Iceberg schema evolution cannot express."""


def _same_type(old: IcebergType, new: IcebergType) -> bool:
    """Equal types, ignoring the field ids of list elements."""
    if isinstance(old, ListType) and isinstance(new, ListType):
        return old.element_type == new.element_type
    return old == new


def _widens(old: IcebergType, new: IcebergType) -> bool:
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    return (isinstance(old, DecimalType) and isinstance(new, DecimalType)
            and new.scale == old.scale and new.precision > old.precision)


def _joinable(table: pa.Table) -> pa.Table:
    """Extension columns (uuid) as their storage, which Arrow's hash join accepts."""
    return pa.table({name: column.cast(column.type.storage_type)
                     if isinstance(column.type, pa.BaseExtensionType) else column
                     for name, column in zip(table.column_names, table.columns, strict=True)})


class TableApplier:
    """One Iceberg table fed by CDC: schema model, evolution and copy-on-write apply."""

    def __init__(self, table: Table, primary_key: Sequence[str], time_column: str) -> None:
        self.table = table
        self.primary_key = list(primary_key)
        self.time_column = time_column

    def fields(self) -> list[NestedField]:
        return list(self.table.schema().fields)

    def plan_evolution(self, columns: Sequence[ColumnSpec]) -> list[SchemaStep]:
        """Steps turning the Iceberg schema into the given columns, or Unexpressible."""
        current = {f.name: f for f in self.fields()}
        wanted = {c.name: c for c in columns}
        removed = [f for name, f in current.items() if name not in wanted]
        added = [c for name, c in wanted.items() if name not in current]
        steps: list[SchemaStep] = []
        for gone in list(removed):
            match = [c for c in added if c.attnum and c.attnum == doc_attnum(gone.doc)]
            if match:
                steps.append(SchemaStep("rename", gone.name, match[0].name))
                removed.remove(gone)
                added.remove(match[0])
        for gone in removed:
            if gone.name in self.primary_key or gone.name == self.time_column:
                raise Unexpressible(f'column "{gone.name}" is part of the primary key or the '
                                    "time column and cannot be dropped from the cold tier")
            steps.append(SchemaStep("drop", gone.name))
        for new in added:
            if new.ice_type is None:
                raise Unexpressible(f'new column "{new.name}" has type {new.type_label}, '
                                    "which has no faithful Iceberg mapping")
            steps.append(SchemaStep("add", new.name, ice_type=new.ice_type, attnum=new.attnum))
        renamed = {s.new_name: s.name for s in steps if s.kind == "rename"}
        for column in columns:
            old = current.get(renamed.get(column.name, column.name))
            if old is None or (column.ice_type is not None
                               and _same_type(old.field_type, column.ice_type)):
                continue
            if column.ice_type is None or not _widens(old.field_type, column.ice_type):
                raise Unexpressible(
                    f'column "{column.name}" changed from {old.field_type} to '
                    f"{column.type_label}: Iceberg can only widen int->long, float->double "
                    "and decimal precision")
            steps.append(SchemaStep("widen", old.name, ice_type=column.ice_type))
        return steps

    def evolve(self, steps: Sequence[SchemaStep]) -> None:
        """Commit schema steps (CDC calls this only with every earlier change committed)."""
        if not steps:
            return
        with self.table.update_schema() as update:
            for step in steps:
                if step.kind == "rename":
                    update.rename_column(step.name, step.new_name)
                elif step.kind == "drop":
                    update.delete_column(step.name)
                elif step.kind == "add":
                    assert step.ice_type is not None
                    update.add_column(step.name, step.ice_type, doc=attnum_doc(step.attnum))
                else:
                    assert step.ice_type is not None
                    update.update_column(step.name, field_type=step.ice_type)
        log.info("evolved %s: %s", self.table.name(), steps)

    def rows_to_arrow(self, rows: Sequence[Row]) -> pa.Table:
        schema = schema_to_pyarrow(self.table.schema())
        arrays = []
        for f in self.table.schema().fields:
            values = [row.get(f.name) for row in rows]
            if any(v is UNCHANGED for v in values):
                values = [None if v is UNCHANGED else v for v in values]
            try:
                arrays.append(text_to_arrow(values, f.field_type))
            except DataException as exc:
                raise DataException(f'column "{f.name}": {exc.message}') from exc
        table = pa.Table.from_arrays(arrays, names=[f.name for f in self.table.schema().fields])
        return table.cast(schema)

    def _typed(self, name: str, values: Sequence[object]) -> list[object]:
        field_type = self.table.schema().find_field(name).field_type
        return text_to_arrow(values, field_type).to_pylist()

    def _key_range(self, collapsed: Collapsed) -> tuple[pa.Table, BooleanExpression]:
        """The deleted keys as a table, and a filter of the files that may hold them: each key
        column's and the time column's range (so few files are read: pruned by metrics)."""
        schema = self.table.schema()
        keys = pa.table({name: text_to_arrow([k[i] for k in collapsed.delete_keys],
                                             schema.find_field(name).field_type)
                         for i, name in enumerate(self.primary_key)})
        bounds = [(name, keys.column(name)) for name in self.primary_key]
        times = collapsed.old_times
        if times and all(t is not None for t in times):
            bounds.append((self.time_column, text_to_arrow(
                times, schema.find_field(self.time_column).field_type)))
        expr: BooleanExpression = AlwaysTrue()
        for name, values in bounds:
            if isinstance(values.type, pa.BaseExtensionType):
                continue  # uuid: no order in Arrow; the other columns still prune
            low, high = pc.min(values).as_py(), pc.max(values).as_py()
            expr = And(expr, GreaterThanOrEqual(term=Reference(name), value=literal(low)),
                       LessThanOrEqual(term=Reference(name), value=literal(high)))
        return _joinable(keys), expr

    def delete_keys(self, tx: Transaction, collapsed: Collapsed,
                    props: dict[str, str]) -> None:
        """Copy-on-write delete of the rows with these keys, in one overwrite snapshot.

        Written here rather than with pyiceberg's Transaction.delete(In(keys)): that binds
        the whole key set again for every data file it plans (and evaluates its metrics key
        by key), so deleting 5,000 keys from a table of 1,000 files took 36 s; here the
        files are planned with ranges, and each candidate file is read once, semi-joined
        with the keys in Arrow, and rewritten without the rows found."""
        keys, candidates = self._key_range(collapsed)
        metadata = tx.table_metadata
        schema = metadata.schema()
        write_uuid, counter = uuid.uuid4(), itertools.count(0)
        replaced: list[tuple[DataFile, list[DataFile]]] = []
        for task in tx.scan(candidates).plan_files():
            if task.delete_files:  # Fig writes none; a file with them is not ours to rewrite
                raise FeatureNotSupported(f"{task.file.file_path} has delete files")
            rows = ArrowScan(metadata, self.table.io, schema, AlwaysTrue()).to_table([task])
            numbers = pa.array(range(rows.num_rows), pa.int64())
            probe = _joinable(rows.select(self.primary_key))
            hits = probe.append_column(ROW_NUMBER, numbers).join(
                keys.cast(probe.schema), self.primary_key, join_type="left semi")
            if hits.num_rows == 0:
                continue
            kept = rows.filter(pc.invert(pc.is_in(numbers, value_set=hits[ROW_NUMBER])))
            replaced.append((task.file, list(_dataframe_to_data_files(
                metadata, kept, self.table.io, write_uuid, counter)) if kept.num_rows else []))
        if not replaced:
            return
        with tx.update_snapshot(snapshot_properties=props).overwrite(write_uuid) as snapshot:
            for original, files in replaced:
                snapshot.delete_data_file(original)
                for file in files:
                    snapshot.append_data_file(file)

    def apply(self, changes: Sequence[Change], end_lsn: int, replayable: bool = False,
              marks: dict[str, str] | None = None) -> int:
        """Commit the net effect of `changes` with fig.lsn = end_lsn (and `marks`, more table
        properties, in the same commit); returns rows written. replayable: correct even if
        the table already holds these changes (collapse's every_key)."""
        collapsed = collapse(changes, self.primary_key, self.time_column, every_key=replayable)
        props = {LSN: lsn_to_str(end_lsn), **(marks or {})}
        with transaction(self.table) as tx:
            if collapsed.truncate:  # no key is left to delete
                tx.delete(AlwaysTrue(), snapshot_properties=props)
            elif collapsed.delete_keys:
                self.delete_keys(tx, collapsed, props)
            if collapsed.rows:
                tx.append(self.rows_to_arrow(collapsed.rows), snapshot_properties=props)
            tx.set_properties(props)
        return len(collapsed.rows)
