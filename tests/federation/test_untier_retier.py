"""Untiering and re-tiering never lose the rows that exist only in cold.

- fig.untier_table refuses while retention has left rows only in cold, or moves them back
  to hot first (cold_rows => 'restore'), keeping every row exactly once;
- re-tiering a paused table keeps the cold history and re-copies only what hot holds;
- the initial copy's snapshot test: transactions newer than the snapshot are never skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import DateType, TimestampType, TimestamptzType

from fig_server.cdc.initial_copy import CopySnapshot, first_kept_value
from tests.conftest import FigProcess, start_fig

ROWS = 2400


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    # retention only when a test asks (fig.run_retention): a periodic run between a test's
    # hot insert below the boundary and its update would move the row out of hot first
    server = start_fig(env={"FIG__TIERING__RETENTION_INTERVAL_S": "3600"})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table hist (id bigint primary key, ts timestamptz not null, "
                     "v int not null)")
        conn.execute("insert into hist select g, %s::timestamptz + g * interval '1 hour', g "
                     "from generate_series(1, %s) g", (start, ROWS))
        conn.execute("select fig.tier_table('hist', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
    with psycopg.connect(server.hot_dsn) as direct:
        row = direct.execute("select count(*) from hist").fetchone()
        assert row is not None and row[0] < ROWS, "retention moved no rows"
    yield server
    server.stop()


def all_rows(fig: FigProcess) -> dict[int, int]:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        return dict(conn.execute("select id, v from hist").fetchall())


def iceberg_ids(fig: FigProcess) -> list[int]:
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    return sorted(catalog.load_table(("public", "hist")).scan().to_arrow()
                  .column("id").to_pylist())


def state(fig: FigProcess) -> str | None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        row = conn.execute("select state from fig.tiered_tables "
                           "where table_name = 'hist'").fetchone()
    return None if row is None else str(row[0])


def test_untier_refuses_while_rows_are_only_in_cold(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn, pytest.raises(
            psycopg.errors.ObjectNotInPrerequisiteState, match="only in the cold tier") as err:
        conn.execute("select fig.untier_table('hist')")
    assert "cold_rows => 'restore'" in (err.value.diag.message_hint or "")
    assert state(fig) == "active"
    assert len(all_rows(fig)) == ROWS


def test_retier_of_a_paused_table_keeps_its_history(fig: FigProcess) -> None:
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        # below the boundary, in hot and already in cold (retention has not run since)
        direct.execute("insert into hist values (100004, now() - interval '60 days', 4)")
        direct.execute("select fig.sync(interval '60 seconds')")
    before = all_rows(fig)
    with psycopg.connect(fig.hot_dsn, autocommit=True) as direct:
        # a change Iceberg cannot follow pauses CDC of the table ...
        direct.execute("alter table hist alter column v type text")
        direct.execute("insert into hist values (100001, now(), '1')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="paused"):
            direct.execute("select fig.sync(interval '60 seconds')")
        assert state(fig) == "paused"
        # ... and while paused, hot changes: undone type change, inserts (one below the
        # boundary), an update and a delete of hot rows
        direct.execute("set fig.unsafe_schema_change = on")  # a repair: USING is refused
        direct.execute("alter table hist alter column v type int using v::int")
        direct.execute("reset fig.unsafe_schema_change")
        direct.execute("insert into hist values (100002, now(), 2), "
                       "(100003, now() - interval '90 days', 3)")
        direct.execute("update hist set v = -v where id = %s", (ROWS,))
        direct.execute("update hist set v = 44 where id = 100004")  # its cold copy is stale
        direct.execute("delete from hist where id = %s", (ROWS - 1,))
        direct.execute("select fig.tier_table('hist', 'ts', interval '30 days')")
        direct.execute("select fig.sync(interval '120 seconds')")
    assert state(fig) == "active"
    expected = {**before, 100001: 1, 100002: 2, 100003: 3, 100004: 44, ROWS: -ROWS}
    del expected[ROWS - 1]
    assert all_rows(fig) == expected
    ids = iceberg_ids(fig)
    assert ids == sorted(expected), "cold is not hot plus the cold-only history"


def test_untier_restore_moves_the_history_back_to_hot(fig: FigProcess) -> None:
    before = all_rows(fig)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        done = conn.execute("select fig.untier_table('hist', cold_rows => 'restore')").fetchone()
        assert done is not None and "moved back to hot" in done[0]
    assert state(fig) is None
    assert all_rows(fig) == before
    with psycopg.connect(fig.hot_dsn) as direct:
        assert dict(direct.execute("select id, v from hist").fetchall()) == before


def test_first_kept_value_in_the_time_columns_type() -> None:
    midnight = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    later = dt.datetime(2026, 3, 1, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert first_kept_value(midnight, DateType()) == dt.date(2026, 3, 1)
    assert first_kept_value(later, DateType()) == dt.date(2026, 3, 2)
    assert first_kept_value(later, TimestampType()) == dt.datetime(2026, 3, 1, 3, 30)
    assert first_kept_value(later, TimestamptzType()) == later


def test_copy_snapshot_never_skips_newer_transactions() -> None:
    snap = CopySnapshot.parse("1000:1010:1003,1007")
    assert snap.contains(1005) and snap.contains(999)
    assert not snap.contains(1003) and not snap.contains(1007)
    for newer in (1010, 1011, 1020, 5_000_000):
        assert not snap.contains(newer), newer
    wrapped = CopySnapshot.parse(f"{(1 << 32) - 20}:{(1 << 32) + 5}:")
    assert wrapped.contains((1 << 32) - 10) and wrapped.contains(3)
    assert not wrapped.contains(5) and not wrapped.contains(6)
