"""Arrow types of Iceberg types as Fig's cold stage hands them to DataFusion."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.types import IcebergType, StringType


def arrow_type(iceberg_type: IcebergType) -> pa.DataType:
    """The Arrow type of an Iceberg type, with plain (not large) strings and binaries."""
    if isinstance(iceberg_type, StringType):
        return pa.string()
    converted = schema_to_pyarrow(iceberg_type, include_field_ids=False)
    return _small(converted)


def _small(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):  # arrow.uuid: DataFusion reads its storage only
        return _small(t.storage_type)
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t):
        return pa.list_(_small(t.value_type))
    return t
