"""Faults under Fig's CDC: the hot Postgres crashes (pg_ctl stop -m immediate) and comes back;
the warehouse cannot be written for a while. CDC pauses with a visible error, resumes, and
Iceberg ends equal to Postgres, row for row, nothing lost or twice."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import psycopg
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from fig_server.hot.embedded import EmbeddedPostgres
from tests.conftest import FAST_PG, FigProcess, make_config, start_fig


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table f (id bigint primary key, ts timestamptz not null, v int)")
        conn.execute("insert into f select g, now() - g * interval '1 minute', g "
                     "from generate_series(1, 1000) g")
        conn.execute("select fig.tier_table('f', 'ts', interval '3650 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
    yield server
    server.stop()


def embedded(fig: FigProcess) -> EmbeddedPostgres:
    return EmbeddedPostgres(make_config(fig.data_dir, hot={
        "port": fig.hot_port, "listen_addresses": "127.0.0.1", "settings": FAST_PG}))


def iceberg_equals_postgres(fig: FigProcess) -> None:
    catalog = SqlCatalog("fig", uri=f"sqlite:///{fig.data_dir / 'iceberg' / 'catalog.db'}",
                         warehouse=f"file://{fig.data_dir / 'iceberg' / 'warehouse'}")
    cold = catalog.load_table(("public", "f")).scan().to_arrow()
    pairs = sorted(zip(cold.column("id").to_pylist(), cold.column("v").to_pylist(),
                       strict=True))
    with psycopg.connect(fig.hot_dsn) as direct:
        hot = direct.execute("select id, v from f order by id").fetchall()
    assert pairs == [tuple(row) for row in hot]


def retry(action: str, fig: FigProcess, timeout: float = 120.0) -> None:
    """Run a statement through Fig until it succeeds (Fig's own reconnects are in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(fig.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(action)
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_hot_postgres_crash_and_restart(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("insert into f select g, now(), g from generate_series(2001, 3000) g")
        conn.execute("update f set v = -v where id % 7 = 0")
    pg = embedded(fig)
    pg.stop("immediate")  # a crash: no shutdown checkpoint, CDC cut mid-stream
    pg.start()
    retry("insert into f select g, now(), g from generate_series(3001, 3500) g", fig)
    retry("delete from f where id % 11 = 0", fig)
    retry("select fig.sync(interval '120 seconds')", fig)
    iceberg_equals_postgres(fig)


def test_unwritable_warehouse_pauses_then_resumes(fig: FigProcess) -> None:
    folder = fig.data_dir / "iceberg" / "warehouse" / "public" / "f"
    moved = folder.with_name("f.away")
    folder.rename(moved)
    folder.write_text("not a folder: every write under it fails")  # root ignores chmod
    try:
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            conn.execute("insert into f select g, now(), g from generate_series(4001, 4300) g")
            with pytest.raises(psycopg.errors.QueryCanceled, match="did not finish"):
                conn.execute("select fig.sync(interval '4 seconds')")
            error = conn.execute("select last_error from fig.cdc_status").fetchone()
            assert error is not None and "Iceberg commit failed" in str(error[0])
            conn.execute("update f set v = 0 where id between 4001 and 4010")
    finally:
        folder.unlink()
        shutil.move(moved, folder)
    retry("select fig.sync(interval '120 seconds')", fig)
    iceberg_equals_postgres(fig)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from f where id between 4001 and 4300"
                            ).fetchone() == (300,)

