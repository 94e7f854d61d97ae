"""Bounds computed from the clock (current_date, now()) in autocommit statements, against a
never-tiered twin: a date-valued one is pushed to the cold part whole (with its top-n), the
statement checking it still holds; a later-evaluated now() lower bound is pushed as a filter
but keeps a top-n only where the extra cold rows cannot displace a kept one."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

ROWS = 6000  # one every 15 minutes over 62.5 days


@pytest.fixture(scope="module")
def fig() -> Iterator[FigProcess]:
    server = start_fig(env={"FIG__COLD__WORKERS": "2"})
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            for name in ("ev", "twin"):
                conn.execute(f"create table {name} (id bigint primary key, "
                             "ts timestamptz not null, day date not null, status int)")
            conn.execute("insert into ev select g, now() - g * interval '15 minutes', "
                         "(now() - g * interval '15 minutes')::date, g % 7 "
                         f"from generate_series(1, {ROWS}) g")
            conn.execute("insert into twin select * from ev")
            conn.execute("select fig.tier_table('ev', 'ts', interval '10 days')")
            conn.execute("select fig.sync()")
            conn.execute("select fig.run_retention()")
        with psycopg.connect(server.hot_dsn, autocommit=True) as direct:
            row = direct.execute("select count(*) from ev").fetchone()
            assert row is not None and row[0] < ROWS / 3, "retention moved no rows"
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


SHAPES = [
    "select id, ts from {t} where day = current_date - 25 and status = 3 "
    "order by ts desc limit 5",
    "select count(*), max(id) from {t} where day = current_date - 25",
    "select id from {t} where day >= current_date - 30 and day < current_date - 20 "
    "order by id limit 7",
    "select id from {t} where day between current_date - 40 and current_date - 39 "
    "order by ts desc, id limit 3",
    "select id, day from {t} where ts < current_date - 20 order by ts desc limit 4",
    "select id from {t} where ts > now() - interval '40 days' order by ts desc limit 6",
    "select id from {t} where ts > now() - interval '40 days' order by ts limit 6",
    "select id from {t} where ts > now() - interval '40 days' order by status, id limit 6",
    "select count(*) from (select id from {t} where ts > now() - interval '40 days' "
    "limit 6) s",
    "select count(*) from {t} where ts > now() - interval '40 days' and "
    "ts < now() - interval '12 days'",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_clock_bounds_answer_as_the_twin(fig: FigProcess, shape: str) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        got = conn.execute(shape.format(t="ev")).fetchall()
        want = conn.execute(shape.format(t="twin")).fetchall()
    assert got == want
    assert got and got != [(0,)] and got != [(0, None)]


def test_a_date_bound_prunes_and_keeps_its_top_n(fig: FigProcess) -> None:
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        plan = "\n".join(r[0] for r in conn.execute(
            "explain analyze select id, ts from ev where day = current_date - 25 "
            "and status = 3 order by ts desc limit 5").fetchall())
    assert "(day = CAST(" in plan and "LIMIT 5" in plan.split("Hot part")[0], plan
    # both branches check the date once; the cold one checks for late changes too
    gates = [line for line in plan.splitlines() if "One-Time Filter:" in line]
    assert [("fig._bounds_hold(" in g, "fig._late_hold(" in g) for g in gates] == [
        (True, True), (True, False)], plan


def test_a_date_that_changed_fails_the_statement(fig: FigProcess) -> None:
    """What a statement whose date moved past midnight meets: 40001, never other rows."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        assert conn.execute("select fig._bounds_hold((current_date - 25) IS NOT DISTINCT "
                            "FROM current_date - 25)").fetchall() == [(True,)]
        with pytest.raises(psycopg.errors.SerializationFailure):
            conn.execute("select fig._bounds_hold((current_date - 25) IS NOT DISTINCT FROM "
                         "'1999-01-01'::date)")


def test_set_before_a_tiered_statement_in_one_query_is_refused(fig: FigProcess) -> None:
    """The statement's bounds would be evaluated before the SET runs (in the old TimeZone)."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="after SET"):
            conn.execute("set timezone = 'Pacific/Kiritimati'; "
                         "select count(*) from ev where day = current_date - 25")
        conn.execute("set timezone = 'Pacific/Kiritimati'")
        got = conn.execute("select count(*) from ev where day = current_date - 25").fetchall()
        want = conn.execute("select count(*) from twin where day = current_date - 25"
                            ).fetchall()
        assert got == want


BLOCK_SHAPE = "select id, ts from {t} where ts < now() - interval '12 days' and status = 2 " \
    "order by ts desc limit 5"


def test_in_a_transaction_block_a_now_bound_is_pushed_whole(fig: FigProcess) -> None:
    """In a block the statement's now() is the one Fig evaluated: the upper bound and the
    top-n go to the cold part; outside, Postgres applies the bound and no top-n is pushed."""
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        outside = "\n".join(r[0] for r in conn.execute(
            "explain " + BLOCK_SHAPE.format(t="ev")).fetchall()).split("Hot part")[0]
        with conn.transaction():
            inside = "\n".join(r[0] for r in conn.execute(
                "explain " + BLOCK_SHAPE.format(t="ev")).fetchall()).split("Hot part")[0]
            got = conn.execute(BLOCK_SHAPE.format(t="ev")).fetchall()
            want = conn.execute(BLOCK_SHAPE.format(t="twin")).fetchall()
    assert "LIMIT 5" in inside and "LIMIT 5" not in outside, (inside, outside)
    assert got == want and len(got) == 5
