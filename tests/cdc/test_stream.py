"""Initial copy and streaming of inserts, updates, deletes, truncate and ADD COLUMN."""

from __future__ import annotations

from fig_server.cdc.control import install_control_schema
from tests.cdc.conftest import CdcEnv
from tests.cdc.helpers import CdcRunner, catalog_of, cold_rows, hot_rows, sync, wait_active


def test_copy_then_stream(cdc_env: CdcEnv) -> None:
    install_control_schema(cdc_env.dsn)
    conn = cdc_env.connect()
    runner = CdcRunner(cdc_env.config, cdc_env.dsn).start()
    try:
        conn.execute("CREATE TABLE ev (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
                     "name text, amount numeric(12,2), tags text[], flag bool)")
        conn.execute("INSERT INTO ev SELECT g, timestamptz '2024-01-01' + g * interval '1 hour',"
                     " 'n' || g, g * 1.5, ARRAY['a', 'b,' || g], g % 2 = 0 "
                     "FROM generate_series(1, 500) g")
        from tests.cdc.helpers import wait_for
        wait_for(lambda: conn.execute("SELECT count(*) FROM fig.cdc_state").fetchone()[0])
        conn.execute("SELECT fig.tier_table('ev', 'ts', interval '3650 days')")
        wait_active(conn, "ev")
        conn.execute("INSERT INTO ev VALUES (1001, '2024-03-01', 'x', 1, NULL, NULL)")
        conn.execute("UPDATE ev SET name = 'upd' WHERE id % 10 = 0")
        conn.execute("DELETE FROM ev WHERE id % 7 = 0")
        sync(conn)
        catalog = catalog_of(cdc_env.config)
        assert cold_rows(catalog, "public", "ev", "id") == hot_rows(conn, "ev", "id")
    finally:
        runner.stop()
