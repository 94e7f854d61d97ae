"""The statement audit through a real Fig: the JSON-lines file and fig.query_log, per route,
errors with their SQLSTATE, cost per user, rotation; and the cold memory limit (53200)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

PRICE_PER_GB = 1000.0
MAX_BYTES = 60_000
KEEP = 2


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={
        "FIG__AUDIT__FILE_MAX_BYTES": str(MAX_BYTES), "FIG__AUDIT__FILE_KEEP": str(KEEP),
        "FIG__AUDIT__PRICE_PER_GB": str(PRICE_PER_GB), "FIG__AUDIT__STATEMENT_MAX_CHARS": "300",
        "FIG__COLD__MEMORY_LIMIT_MB": "4", "FIG__COLD__WORKERS": "1",
        "FIG__LIMITS__MAX_RESULT_ROWS": "50000"})
    try:
        populate(server)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def populate(server: FigProcess) -> None:
    """60000 rows of `events`, all moved to cold; roles alice and bob may read them."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create table events (id bigint primary key, ts timestamptz not null, "
                     "amount int, note text)")
        conn.execute("insert into events select g, %s::timestamptz + g * interval '1 second', "
                     "g %% 100, repeat(md5(g::text), 4) from generate_series(1, 60000) g",
                     (start,))
        conn.execute("select fig.tier_table('events', 'ts', interval '1 day')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
    with psycopg.connect(server.hot_dsn, autocommit=True) as direct:
        row = direct.execute("select count(*) from events").fetchone()
        assert row is not None and row[0] == 0, "retention moved no rows"
        for role in ("alice", "bob"):
            direct.execute(f"create role {role} login")
            direct.execute(f"grant select on events to {role}")


def audit_records(fig: FigProcess) -> list[dict[str, Any]]:
    """Every complete record (the writer may be in the middle of the last line)."""
    folder = fig.data_dir / "audit"
    records = []
    for path in sorted(folder.glob("audit.jsonl*"), reverse=True):
        complete = path.read_text().rpartition("\n")[0]
        records += [json.loads(line) for line in complete.splitlines() if line]
    return records


def wait_for(fig: FigProcess, marker: str, count: int = 1) -> tuple[list[dict[str, Any]],
                                                                    list[dict[str, Any]]]:
    """Records whose statement contains marker, from the file and from fig.query_log."""
    deadline = time.monotonic() + 15
    while True:
        in_file = [r for r in audit_records(fig) if marker in r["statement"]]
        with psycopg.connect(fig.hot_dsn, row_factory=psycopg.rows.dict_row) as conn:
            in_table = conn.execute("select * from fig.query_log where statement like %s "
                                    "order by id", (f"%{marker}%",)).fetchall()
        if (len(in_file) >= count and len(in_table) >= count) or time.monotonic() > deadline:
            assert len(in_file) >= count and len(in_table) >= count, (in_file, in_table)
            return in_file, in_table
        time.sleep(0.1)


def test_relayed_statements_recorded(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True, application_name="audit-test") as conn:
        conn.execute("select g /* relay-simple */ from generate_series(1, 7) g",
                     prepare=False).fetchall()
        conn.execute("select %s::int + 1 /* relay-extended */", (41,)).fetchall()
        conn.execute("select 1 /* relay-multi */; select g from generate_series(1, 3) g")
    (simple,), (simple_row,) = wait_for(fig, "relay-simple")
    assert simple["user_name"] == "postgres" and simple["database"] == "postgres"
    assert simple["application_name"] == "audit-test"
    assert simple["client_addr"].startswith("('127.0.0.1'")
    assert (simple["route"], simple["rows"], simple["command"]) == ("relay", 7, "SELECT")
    assert (simple["outcome"], simple["sqlstate"], simple["bytes_scanned"]) == ("ok", None, 0)
    assert simple["duration_ms"] >= 0 and simple["tables"] == [] and simple["calls"] == 1
    assert simple_row["rows"] == 7 and simple_row["route"] == "relay"
    assert simple_row["application_name"] == "audit-test"
    (extended,), _ = wait_for(fig, "relay-extended")
    assert extended["statement"] == "select $1::int + 1 /* relay-extended */"
    assert (extended["rows"], extended["outcome"]) == (1, "ok")
    (multi,), _ = wait_for(fig, "relay-multi")
    assert (multi["rows"], multi["command"], multi["calls"]) == (4, "SELECT", 1)


def test_repeated_relayed_statement_grouped_with_calls(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for _ in range(50):
            conn.execute("select 2 /* relay-repeat */").fetchall()
    deadline = time.monotonic() + 15
    while True:  # the 50 calls may be written in more than one interval
        in_file, in_table = wait_for(fig, "relay-repeat")
        if sum(r["calls"] for r in in_table) >= 50 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(r["calls"] for r in in_file) == 50 == sum(r["rows"] for r in in_file)
    assert sum(r["calls"] for r in in_table) == 50
    assert len(in_file) < 50  # grouped within each write interval


def test_errors_recorded_with_sqlstate(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0 /* relay-error */")
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute("select nosuch /* cold-error */ from events where id < 100")
        conn.execute("select 1")
    (relay,), (relay_row,) = wait_for(fig, "relay-error")
    assert (relay["outcome"], relay["sqlstate"]) == ("error", "22012")
    assert (relay_row["outcome"], relay_row["sqlstate"]) == ("error", "22012")
    (cold,), _ = wait_for(fig, "cold-error")
    assert (cold["outcome"], cold["sqlstate"]) == ("error", "42703")


def test_federated_statement_recorded_with_scan(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        row = conn.execute("select sum(amount) /* fed-simple */ from events").fetchone()
        assert row is not None and row[0] == sum(g % 100 for g in range(1, 60001))
        conn.execute("select id, %s::int /* fed-extended */ from events where id < 11",
                     (1,)).fetchall()
    (simple,), (simple_row,) = wait_for(fig, "fed-simple")
    assert simple["route"] in ("COLD", "SPLIT") and simple["tables"] == ["events"]
    assert simple["rows"] == 1 and simple["outcome"] == "ok"
    assert 0 < simple["bytes_scanned"] <= simple["bytes_total"]
    assert 1 <= simple["files_kept"] <= simple["files_total"]
    assert simple["row_groups_kept"] <= simple["row_groups_total"]
    assert simple_row["bytes_scanned"] == simple["bytes_scanned"]
    assert simple_row["tables"] == ["events"]
    assert simple_row["cost_usd"] == pytest.approx(
        Decimal(simple["bytes_scanned"]) / 10**9 * Decimal(PRICE_PER_GB), rel=Decimal("1e-6"))
    (extended,), _ = wait_for(fig, "fed-extended")
    assert extended["route"] in ("COLD", "SPLIT") and extended["rows"] == 10
    # where the time went: every phase timed, together within the statement's duration
    for record, row in ((simple, simple_row), (extended, None)):
        phases = [record[name] for name in PHASES]
        assert all(ms >= 0 for ms in phases) and record["cold_ms"] > 0, record
        assert sum(phases) <= record["duration_ms"] * 1.01 + 1, record
        if row is not None:
            assert [row[name] for name in PHASES] == pytest.approx(phases)


def test_relayed_statement_has_no_phases(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("select 3 /* relay-phases */").fetchall()
    (record,), (row,) = wait_for(fig, "relay-phases")
    assert all(name not in record for name in PHASES)
    assert all(row[name] is None for name in PHASES)


PHASES = ("prelude_ms", "plan_ms", "cold_ms", "copy_ms", "final_ms", "keys_ms")


def test_cost_per_user_view(fig: FigProcess) -> None:
    for user, times in (("alice", 2), ("bob", 1)):
        dsn = fig.dsn.replace("user=postgres", f"user={user}")
        # every statement reads its files
        with psycopg.connect(dsn, autocommit=True, options="-c fig.result_cache=off") as conn:
            for _ in range(times):
                conn.execute("select max(note) /* cost-check */ from events").fetchone()
    wait_for(fig, "cost-check", 3)
    with psycopg.connect(fig.hot_dsn) as conn:
        view = {r[0]: r[1:] for r in conn.execute(
            "select user_name, queries, bytes_scanned, cost_usd from fig.query_cost_by_user")}
        logged = {r[0]: r[1:] for r in conn.execute(
            "select user_name, sum(calls), sum(bytes_scanned), sum(cost_usd) from fig.query_log "
            "group by user_name")}
    assert view == logged
    alice, bob = view["alice"], view["bob"]
    assert alice[0] == 2 and bob[0] == 1 and alice[1] == 2 * bob[1] > 0
    assert alice[2] == pytest.approx(Decimal(alice[1]) / 10**9 * Decimal(PRICE_PER_GB),
                                     rel=Decimal("1e-6"))
    with psycopg.connect(fig.dsn.replace("user=postgres", "user=bob")) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from fig.query_log")


def test_a_statement_answered_from_the_result_cache_scans_and_costs_nothing(
        fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for _ in range(2):
            conn.execute("select min(note) /* cache-cost */ from events").fetchone()
    records, _ = wait_for(fig, "cache-cost", 2)
    first, second = sorted(records, key=lambda r: r["ts"])
    assert first["bytes_scanned"] > 0 and first["cost_usd"] > 0
    assert second["bytes_scanned"] == 0 and second["cost_usd"] == 0
    assert second["files_kept"] == first["files_kept"] > 0


def test_memory_limit_gives_53200(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("set fig.route = 'cold'")
        with pytest.raises(psycopg.errors.OutOfMemory):
            conn.execute("select note, count(*) /* mem-limit */ from events group by note "
                         "order by 2 desc limit 1")
        assert conn.execute("select count(*) from events where id <= 5").fetchone() == (5,)
    (record,), _ = wait_for(fig, "mem-limit")
    assert (record["outcome"], record["sqlstate"]) == ("error", "53200")


def test_cold_result_rows_capped_with_54000(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_rows"):
            conn.execute("select id /* row-cap */ from events").fetchall()
        assert conn.execute("select count(*) from events where id > 59990").fetchone() == (10,)
    (record,), _ = wait_for(fig, "row-cap")
    assert (record["outcome"], record["sqlstate"]) == ("error", "54000")


def test_audit_file_rotates_at_configured_size(fig: FigProcess) -> None:
    padding = "x" * 400
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for index in range(400):
            conn.execute(f"select /* rotate-{index} */ '{padding}'")
    wait_for(fig, "rotate-399 */")
    folder = fig.data_dir / "audit"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in names[1:]:
        size = (folder / name).stat().st_size
        assert 0 < size <= MAX_BYTES
    record = next(r for r in audit_records(fig) if "rotate-399 */" in r["statement"])
    assert len(record["statement"]) == 300


def test_explain_analyze_gives_fig_phases(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        lines = [r[0] for r in conn.execute("explain analyze select count(*) from events "
                                            "where amount > 50").fetchall()]
    timing = [line for line in lines if line.startswith("Fig time: ")]
    assert len(timing) == 1, lines
    for phase in ("prelude", "planning", "cold", "Iceberg metadata and pruning",
                  "copy into the session"):
        assert f"{phase} " in timing[0], timing
    assert lines.index(timing[0]) < lines.index("Hot part and merge (PostgreSQL):")
    assert any(line.startswith("Execution Time:") for line in lines)  # Postgres's own step
