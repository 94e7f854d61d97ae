"""fig.attach_iceberg: a table written by pyiceberg becomes queryable through Fig by name."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from tests.conftest import FigProcess, start_fig


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig()
    (server.data_dir / "iceberg" / "warehouse").mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog("fig", uri=f"sqlite:///{server.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{server.data_dir / 'iceberg' / 'warehouse'}")
    catalog.create_namespace("lake")
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = pa.table({
        "trip_id": pa.array(range(100), pa.int64()),
        "started": pa.array([start + dt.timedelta(hours=i) for i in range(100)],
                            pa.timestamp("us", tz="UTC")),
        "city": pa.array([["Oslo", "Lima", None][i % 3] for i in range(100)]),
        "fare": pa.array([i * 1.5 for i in range(100)], pa.float64()),
    })
    table = catalog.create_table(("lake", "trips"), schema=rows.schema)
    table.append(rows)
    yield server
    server.stop()


def wait_rows(conn: psycopg.Connection, sql: str) -> list[tuple]:
    """Fig's view of tiered tables refreshes every second: poll until the rows show."""
    deadline = time.monotonic() + 10
    while True:
        rows = conn.execute(sql).fetchall()
        if (rows and rows[0][0]) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_attached_table_is_queryable_and_read_only(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        result = conn.execute("select fig.attach_iceberg('lake.trips')").fetchone()
        assert result is not None and "attached" in result[0]
        assert wait_rows(conn, "select count(*) from lake.trips") == [(100,)]
        assert conn.execute("select city, count(*), sum(fare) from lake.trips "
                            "group by city order by city nulls last").fetchall() == [
            ("Lima", 33, sum(i * 1.5 for i in range(100) if i % 3 == 1)),
            ("Oslo", 34, sum(i * 1.5 for i in range(100) if i % 3 == 0)),
            (None, 33, sum(i * 1.5 for i in range(100) if i % 3 == 2))]
        assert conn.execute("select trip_id from lake.trips where started >= "
                            "'2024-01-04 23:00+00' order by trip_id limit 2").fetchall() == [
            (95,), (96,)]
        columns = conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'lake' and table_name = 'trips' order by ordinal_position"
        ).fetchall()
        assert columns == [("trip_id", "bigint"), ("started", "timestamp with time zone"),
                           ("city", "text"), ("fare", "double precision")]
        for write in ("insert into lake.trips (trip_id) values (1000)",
                      "update lake.trips set fare = 0", "delete from lake.trips",
                      "truncate lake.trips"):
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(write)
        state = conn.execute("select state, tier_boundary::text from fig.tables "
                             "where table_name = 'lake.trips'").fetchone()
        assert state == ("attached", "infinity")


def test_attach_unknown_table_fails_clearly(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select fig.attach_iceberg('lake.nope', interval '10 seconds')")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("select fig.attach_iceberg('nodot')")
