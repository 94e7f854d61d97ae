"""The events table laid out by Fig itself: rows loaded into hot Postgres, tiered with
fig.tier_table (CDC's initial copy writes Iceberg), rows older than the tier boundary retired
from hot by retention, then compacted by fig.compact. Slower to build than the generator's
layout, but it is exactly what Fig produces, and it registers the table so Fig's planner can
route queries to it. The last half of the days stay hot, so split queries have two parts."""

from __future__ import annotations

import datetime as dt
import json
import time

import psycopg

from benchmarks.datagen import LAST_DAY, PG_EVENTS_DDL, DataSet
from benchmarks.fig_process import FigProcess
from benchmarks.pgload import copy_events

WAIT = "interval '60 min'"


def tier_boundary(data: DataSet) -> dt.datetime:
    """Midnight UTC starting the hot half of the days."""
    hot_days = max(1, data.scale.days // 2)
    first_hot = LAST_DAY - dt.timedelta(days=hot_days - 1)
    return dt.datetime(first_hot.year, first_hot.month, first_hot.day, tzinfo=dt.UTC)


def pin_boundary(conn: psycopg.Connection, boundary: dt.datetime) -> None:
    """Set the hot retention to now - boundary, so the boundary stays where the data set has
    it however long ago it was built (it only moves forward, by seconds, while Fig runs)."""
    conn.execute("SELECT fig.tier_table('public.events', 'ts', now() - %s)", (boundary,))


def ensure_fig_layout(fig: FigProcess, data: DataSet) -> dict[str, object]:
    """Build public.events through Fig once per data set; later calls read the marker."""
    boundary = tier_boundary(data)
    if data.marker.exists():
        with psycopg.connect(fig.dsn(), autocommit=True) as conn:
            pin_boundary(conn, boundary)
        return dict(json.loads(data.marker.read_text()))
    started = time.perf_counter()
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        tiered = conn.execute("SELECT 1 FROM fig.tiered_tables WHERE schema_name = 'public' "
                              "AND table_name = 'events'").fetchone()
        if tiered:  # an interrupted earlier build
            conn.execute("SELECT fig.untier_table('public.events')")
        conn.execute("DROP TABLE IF EXISTS events")
        conn.execute(PG_EVENTS_DDL.format(name="events"))
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        copy_events(hot, data, "hot events")
        hot.execute("ANALYZE events")
    loaded_s = time.perf_counter() - started
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        pin_boundary(conn, boundary)
        while True:
            state = conn.execute("SELECT state FROM fig.tiered_tables WHERE table_name = "
                                 "'events' AND schema_name = 'public'").fetchone()
            if state and state[0] != "copying":
                break
            time.sleep(0.5)
        conn.execute(f"SELECT fig.sync({WAIT})")
        copied_s = time.perf_counter() - started - loaded_s
        conn.execute(f"SELECT fig.run_retention({WAIT})")
        conn.execute(f"SELECT fig.compact('public.events', {WAIT})")
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        hot.execute("VACUUM ANALYZE events")  # what autovacuum would do after retention
        hot_rows = hot.execute("SELECT count(*) FROM events").fetchone()
    info = {"layout": "fig", "rows": data.scale.rows, "days": data.scale.days,
            "seed": data.seed, "hot_load_s": round(loaded_s, 1),
            "tier_and_copy_s": round(copied_s, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "boundary": boundary.isoformat(), "rows_in_hot": hot_rows[0] if hot_rows else None}
    data.marker.write_text(json.dumps(info))
    return info
