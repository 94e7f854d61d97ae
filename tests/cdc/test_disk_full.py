"""The warehouse's disk fills up while CDC writes to it: Postgres goes on taking writes,
fig.sync says why Iceberg is behind, and once there is space again every committed row reaches
Iceberg exactly once.

The warehouse is a tmpfs of a few MiB (mounting one needs root: CI runs as root; run as
another user the test is skipped, as root a failed mount fails it), grown with
`mount -o remount` to give the space back.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fig_server.cdc.control import install_control_schema
from fig_server.hot.embedded import EmbeddedPostgres
from tests.cdc.conftest import drop_env, make_env
from tests.cdc.helpers import (
    CdcRunner,
    catalog_of,
    cold_rows,
    hot_rows,
    sync,
    wait_active,
    wait_for,
)
from tests.conftest import make_data_dir

SMALL = "1m"
LARGE = "256m"

# Incompressible text (md5 of random), so the rows' Parquet files outgrow the small disk.
INSERT = """
INSERT INTO full_disk (id, ts, s)
SELECT g, now(), md5(random()::text) || md5(random()::text) || md5(random()::text)
  || md5(random()::text) || md5(random()::text) || md5(random()::text)
FROM generate_series(%s::bigint, %s::bigint) g"""


@pytest.fixture
def small_disk() -> Iterator[Path]:
    path = make_data_dir("fig-full-disk-") / "warehouse"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(path)],
                             capture_output=True)
    # as root the mount must work: a failure here fails the test instead of hiding it
    assert mounted.returncode == 0, mounted.stderr.decode()
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _last_error(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT coalesce(last_error, '') FROM fig.cdc_state").fetchone()
    return row[0] if row else ""


def test_a_full_warehouse_disk_delays_cdc_and_loses_nothing(
        hot_pg: EmbeddedPostgres, small_disk: Path) -> None:
    env = make_env(hot_pg, flush_interval_ms=50)
    config = dataclasses.replace(env.config, cold=dataclasses.replace(
        env.config.cold, warehouse=f"file://{small_disk}"))
    install_control_schema(env.dsn)
    conn = env.connect()
    conn.execute("CREATE TABLE full_disk (id bigint PRIMARY KEY, ts timestamptz NOT NULL, s text)")
    conn.execute(INSERT, (1, 100))
    runner = CdcRunner(config, env.dsn).start()
    try:
        conn.execute("SELECT fig.tier_table('full_disk', 'ts', interval '100 years')")
        wait_active(conn, "full_disk")
        sync(conn)
        # ~192 bytes of random hex a row: 20,000 rows take 2.2 MB in Parquet, the disk holds 1
        for start in range(101, 20_101, 2_000):
            conn.execute(INSERT, (start, start + 1_999))
        wait_for(lambda: "No space left on device" in _last_error(conn), timeout=60)

        # Postgres goes on: the same session and a new one write and read
        conn.execute(INSERT, (20_101, 20_200))
        conn.execute("DELETE FROM full_disk WHERE id % 97 = 0")
        conn.execute("UPDATE full_disk SET s = 'updated' WHERE id % 89 = 0")
        with psycopg.connect(env.dsn, autocommit=True) as other:
            row = other.execute("SELECT count(*) FROM full_disk").fetchone()
            assert row is not None and row[0] == 20_200 - 20_200 // 97

        # fig.sync says why it cannot finish
        with pytest.raises(psycopg.errors.QueryCanceled) as waited:
            sync(conn, "1s")
        detail = waited.value.diag.message_detail or ""
        assert "No space left on device" in detail, detail

        subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(small_disk)], check=True)
        sync(conn, "120s")
        assert cold_rows(catalog_of(config), "public", "full_disk", "id") == \
            hot_rows(conn, "full_disk", "id")
    finally:
        runner.stop()
        conn.close()
        drop_env(hot_pg, env)
