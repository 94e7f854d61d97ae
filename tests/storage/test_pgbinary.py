"""Binary COPY of Arrow columns reads back in a real Postgres exactly as the CSV text does.

The CSV path (typemap.to_copy_csv) is the reference: for generated columns of every type
pair the binary encoder accepts, both are copied into twin tables of the same Postgres type
and every value's text is compared.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fig_server.hot.embedded import EmbeddedPostgres
from fig_server.storage import pgbinary
from fig_server.storage.typemap import to_copy_csv

INSTANTS = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))


def _decimals(precision: int, scale: int) -> st.SearchStrategy[decimal.Decimal]:
    """Every value of decimal(precision, scale), built from text (Decimal arithmetic would
    round to its context's 28 digits)."""
    unscaled = st.integers(-(10**precision - 1), 10**precision - 1)
    return unscaled.map(lambda u: decimal.Decimal(f"{u}E-{scale}"))


# Postgres type, Arrow type, values
CASES: dict[str, tuple[str, pa.DataType, st.SearchStrategy[object]]] = {
    "int2": ("int2", pa.int32(), st.integers(-(2**15), 2**15 - 1)),
    "int4": ("int4", pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "int8": ("int8", pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int8-from-int32": ("int8", pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "float4": ("float4", pa.float32(), st.floats(width=32)),
    "float8": ("float8", pa.float64(), st.floats()),
    "numeric(12,2)": ("numeric(12,2)", pa.decimal128(12, 2), _decimals(12, 2)),
    "numeric-38-10": ("numeric", pa.decimal128(38, 10), _decimals(38, 10)),
    "numeric-scale-5": ("numeric", pa.decimal128(20, 5), _decimals(20, 5)),
    "numeric-scale-0": ("numeric", pa.decimal128(18, 0), _decimals(18, 0)),
    "numeric-from-int64": ("numeric", pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "numeric-from-uint64": ("numeric", pa.uint64(), st.integers(0, 2**64 - 1)),
    "text": ("text", pa.string(), st.text(st.characters(blacklist_categories=["Cs"],
                                                        blacklist_characters="\x00"))),
    "varchar(12)": ("varchar(12)", pa.large_string(),
                    st.text(st.characters(codec="utf-8", blacklist_characters="\x00"),
                            max_size=12)),
    "bytea": ("bytea", pa.binary(), st.binary()),
    "bool": ("bool", pa.bool_(), st.booleans()),
    "date": ("date", pa.date32(), st.dates()),
    "timestamp": ("timestamp", pa.timestamp("us"), INSTANTS),
    "timestamptz": ("timestamptz", pa.timestamp("us", tz="UTC"),
                    INSTANTS.map(lambda v: v.replace(tzinfo=dt.UTC))),
    "time": ("time", pa.time64("us"), st.times()),
    "uuid": ("uuid", pa.binary(16), st.uuids().map(lambda u: u.bytes)),
}


@pytest.fixture(scope="module")
def conn(hot_pg: EmbeddedPostgres) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hot_pg.dsn, autocommit=True) as connection:
        yield connection


def _copy(conn: psycopg.Connection, table: str, pg_type: str, column: pa.Array,
          binary: bool) -> list[str | None]:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TEMP TABLE {table} (i int8, v {pg_type})")
    rows = pa.record_batch([pa.array(range(len(column)), pa.int64()), column], ["i", "v"])
    typname = pg_type.split("(")[0]
    if binary:
        coders = pgbinary.encoders(rows.schema, ["int8", typname])
        assert coders is not None
        data = pgbinary.HEADER + pgbinary.to_copy_binary(rows, coders) + pgbinary.TRAILER
        options = "FORMAT binary"
    else:
        data = to_copy_csv(pa.Table.from_batches([rows]))
        options = "FORMAT csv"
    with conn.cursor().copy(f"COPY {table} FROM STDIN ({options})") as copy:
        copy.write(data)
    return [row[0] for row in conn.execute(f"SELECT v::text FROM {table} ORDER BY i")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_binary_copy_reads_back_like_csv(conn: psycopg.Connection, case: str) -> None:
    pg_type, arrow_type, values = CASES[case]

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.one_of(st.none(), values), max_size=40), st.integers(0, 5))
    def check(items: list[object], skip: int) -> None:
        # a slice, as a batch of a larger table is: buffers start before the first row
        column = pa.array([None] * skip + items, arrow_type).slice(skip)
        assert _copy(conn, "binary_rows", pg_type, column, True) == \
            _copy(conn, "csv_rows", pg_type, column, False)

    check()


def test_special_values_read_back_like_csv(conn: psycopg.Connection) -> None:
    """The values generators reach rarely: infinities, NaN, -0, the widest numerics, the
    first and last instants, a decimal batch mixing narrow and wide values."""
    columns = {
        "float8": pa.array([math.inf, -math.inf, math.nan, -0.0, 5e-324, None]),
        "numeric": pa.array([decimal.Decimal("9" * 28 + "." + "9" * 10), decimal.Decimal(0),
                             decimal.Decimal("-0.0000000001"), None,
                             decimal.Decimal("-" + "9" * 28)], pa.decimal128(38, 10)),
        "timestamptz": pa.array([dt.datetime(1, 1, 1, tzinfo=dt.UTC),
                                 dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
                                 dt.datetime(2000, 1, 1, tzinfo=dt.UTC)],
                                pa.timestamp("us", tz="UTC")),
        "uuid": pa.array([uuid.UUID(int=0).bytes, uuid.UUID(int=2**128 - 1).bytes],
                         pa.binary(16)),
    }
    for pg_type, column in columns.items():
        assert _copy(conn, "binary_rows", pg_type, column, True) == \
            _copy(conn, "csv_rows", pg_type, column, False), pg_type


@pytest.mark.parametrize(("arrow_type", "typname"), [
    (pa.float64(), "float4"),  # narrowing rounds: Postgres's float4in decides
    (pa.timestamp("ns", tz="UTC"), "timestamptz"),  # Postgres rounds nanoseconds
    (pa.timestamp("us", tz="UTC"), "timestamp"),
    (pa.timestamp("us"), "timestamptz"),
    (pa.int64(), "float8"),
    (pa.float64(), "numeric"),
    (pa.string(), "int4"),
    (pa.string(), "jsonb"),
    (pa.decimal256(60, 2), "numeric"),
    (pa.int32(), None),  # a type outside pg_catalog (a domain, an enum)
])
def test_pairs_without_an_exact_encoding_are_sent_as_csv(arrow_type: pa.DataType,
                                                         typname: str | None) -> None:
    assert pgbinary.encoder(arrow_type, typname) is None


def test_text_is_csv_when_the_client_encoding_is_not_utf8() -> None:
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    assert pgbinary.encoders(schema, ["int8", "text"], text=True) is not None
    assert pgbinary.encoders(schema, ["int8", "text"], text=False) is None
    assert pgbinary.encoders(pa.schema([("n", pa.int64())]), ["int8"], text=False) is not None
