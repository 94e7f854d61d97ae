"""The events table laid out by Fig itself: an empty hot table tiered with fig.tier_table,
rows then loaded into hot Postgres and streamed to Iceberg by CDC, rows older than the tier
boundary retired from hot by retention, then compacted by fig.compact. Slower to build than
the generator's layout, but it is exactly what Fig produces, and it registers the table so
Fig's planner can route queries to it. The last half of the days stay hot, so split queries
have two parts."""

from __future__ import annotations

import datetime as dt
import json
import time

import psycopg

from benchmarks.datagen import LAST_DAY, PG_EVENTS_DDL, DataSet
from benchmarks.fig_process import FigProcess
from benchmarks.pgload import PEER_INDEXES, copy_events

WAIT = "interval '20 min'"
FINISH = "interval '3 min'"
STALL_S = 180.0


class LayoutError(RuntimeError):
    """Fig could not build the events table (the caller falls back to the generator)."""


def _warehouse_bytes(data: DataSet) -> int:
    # Only a progress signal: the files that make up the table come from the manifests.
    return sum(p.stat().st_size for p in data.warehouse.rglob("*") if p.is_file())


def _wait_for_copy(conn: psycopg.Connection, data: DataSet) -> None:
    """Wait for CDC's initial copy; give up when it writes nothing for STALL_S seconds."""
    last_size, last_change = -1, time.monotonic()
    while True:
        row = conn.execute("SELECT state FROM fig.tiered_tables WHERE table_name = 'events' "
                           "AND schema_name = 'public'").fetchone()
        if row and row[0] != "copying":
            if row[0] != "active":
                raise LayoutError(f"public.events is {row[0]} after tiering")
            return
        size = _warehouse_bytes(data)
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            raise LayoutError(f"CDC's initial copy of public.events wrote nothing for "
                              f"{STALL_S:.0f} s (stuck at {size:,} bytes in the warehouse)")
        time.sleep(1.0)


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
    """Build public.events through Fig once per data set; later calls read the marker. A build
    interrupted after CDC committed every row resumes at retention and compaction."""
    boundary = tier_boundary(data)
    if data.marker.exists():
        with psycopg.connect(fig.dsn(), autocommit=True) as conn:
            pin_boundary(conn, boundary)
        hot_indexes(fig)
        return dict(json.loads(data.marker.read_text()))
    started = time.perf_counter()
    info: dict[str, object] = {"layout": "fig", "rows": data.scale.rows,
                               "days": data.scale.days, "seed": data.seed}
    with psycopg.connect(fig.dsn(), autocommit=True) as conn:
        if _cold_rows(data) == data.scale.rows and _is_tiered(conn):
            info["resumed"] = "CDC had committed every row in an earlier, interrupted build"
            pin_boundary(conn, boundary)
        else:
            _stream_through_cdc(conn, fig, data, boundary, info)
        for step, statement in (
                ("retention", f"SELECT fig.run_retention({FINISH})"),
                ("compaction", f"SELECT fig.compact('public.events', {FINISH})"),
                # Retention's deletes still pass through the CDC stream: let it drain them
                # so the CDC workload starts from a caught-up stream.
                ("cdc_drained", f"SELECT fig.sync({WAIT})")):
            try:
                conn.execute(statement)
                info[step] = "done"
            except psycopg.Error as error:
                # The cold copy is complete without them: keep the layout, say what is missing.
                info[step] = f"did not finish: {str(error).strip().splitlines()[0][:200]}"
    hot_indexes(fig)
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        hot.execute("VACUUM ANALYZE events")  # what autovacuum would do after retention
        hot_rows = hot.execute("SELECT count(*) FROM events").fetchone()
    info.update({"seconds": round(time.perf_counter() - started, 1),
                 "boundary": boundary.isoformat(),
                 "rows_in_hot": hot_rows[0] if hot_rows else None})
    data.marker.write_text(json.dumps(info))
    return info


def hot_indexes(fig: FigProcess) -> None:
    """The hot events table gets the indexes the all-rows Postgres peer has (a user keeps
    them when tiering a table); without them route auto's hot part scanned 5M rows where the
    peer used an index."""
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        for statement in PEER_INDEXES:
            hot.execute(statement)


def _is_tiered(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT state FROM fig.tiered_tables WHERE schema_name = 'public' "
                       "AND table_name = 'events'").fetchone()
    return bool(row and row[0] == "active")


def _cold_rows(data: DataSet) -> int:
    """Rows in the Iceberg table by its current snapshot's summary (0 when absent)."""
    try:
        snapshot = data.events().current_snapshot()
    except Exception:  # no catalog or no table yet
        return 0
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.get("total-records", 0))


def _stream_through_cdc(conn: psycopg.Connection, fig: FigProcess, data: DataSet,
                        boundary: dt.datetime, info: dict[str, object]) -> None:
    """Tier an empty table, then load it: every row reaches Iceberg through the CDC stream,
    as rows written by an application would."""
    started = time.perf_counter()
    if _is_tiered(conn) or conn.execute("SELECT 1 FROM fig.tiered_tables WHERE table_name = "
                                        "'events' AND schema_name = 'public'").fetchone():
        conn.execute("SELECT fig.untier_table('public.events')")  # an interrupted build
    conn.execute("DROP TABLE IF EXISTS events")
    conn.execute(PG_EVENTS_DDL.format(name="events"))
    pin_boundary(conn, boundary)
    _wait_for_copy(conn, data)
    with psycopg.connect(fig.hot_dsn(), autocommit=True) as hot:
        copy_events(hot, data, "hot events (streamed by CDC)")
    info["hot_load_s"] = round(time.perf_counter() - started, 1)
    conn.execute(f"SELECT fig.sync({WAIT})")
    info["cdc_caught_up_s"] = round(time.perf_counter() - started, 1)
