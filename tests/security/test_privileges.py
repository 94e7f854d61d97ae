"""Grants and row-level security on a tiered table, and who may run Fig's control functions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig

ADMIN = "fig_admins"


@pytest.fixture(scope="module")
def tiered() -> Iterator[FigProcess]:
    """A Fig with `sec_events` tiered (rows older than 30 days only in cold), a reader role
    with SELECT, a stranger without, and an admin role for the control functions."""
    fig = start_fig(env={"FIG__AUTH__ADMIN_ROLE": ADMIN})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute("create table sec_events (id bigint primary key, ts timestamptz not null, "
                     "owner text not null, amount int)")
        conn.execute("insert into sec_events select g, %s::timestamptz + g * interval '1 hour',"
                     " (array['reader','stranger'])[1 + g %% 2], g %% 10 "
                     "from generate_series(1, 2400) g", (start,))
        conn.execute("select fig.tier_table('sec_events', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
        for role in ("reader", "stranger", "boss"):
            conn.execute(f"drop role if exists {role}")
            conn.execute(f"create role {role} login")
        conn.execute("grant select on sec_events to reader")
        conn.execute(f"grant {ADMIN} to boss")
    with psycopg.connect(fig.hot_dsn) as direct:
        row = direct.execute("select count(*) from sec_events").fetchone()
        assert row is not None and row[0] < 1000, "retention moved no rows"
    yield fig
    fig.stop()


def as_role(fig: FigProcess, role: str, direct: bool = False) -> psycopg.Connection:
    dsn = fig.hot_dsn if direct else fig.dsn
    return psycopg.connect(dsn.replace("user=postgres", f"user={role}"), autocommit=True)


QUERIES = ["select count(*) from sec_events",
           "select id, amount from sec_events where ts < now() - interval '60 days' "
           "order by id limit 3",
           "select owner, sum(amount) from sec_events group by owner order by owner"]


@pytest.mark.parametrize("route", ["auto", "cold"])
@pytest.mark.parametrize("sql", QUERIES)
def test_no_select_grant_is_42501_like_postgres(tiered: FigProcess, route: str,
                                                sql: str) -> None:
    with as_role(tiered, "stranger", direct=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege) as direct:
        conn.execute(sql)
    with as_role(tiered, "stranger") as conn:
        conn.execute(f"set fig.route = '{route}'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as via:
            conn.execute(sql)
        assert via.value.sqlstate == "42501"
        assert str(via.value) == str(direct.value)
        # the session stays usable, as on Postgres
        assert conn.execute("select 1").fetchone() == (1,)
    with as_role(tiered, "stranger") as conn, conn.cursor() as cur, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute(sql.replace("60 days", "%s days") if "%s" not in sql else sql,
                    (60,) if "60 days" in sql else None, prepare=True)


@pytest.mark.parametrize("route", ["auto", "cold"])
def test_select_grant_reads_cold_rows(tiered: FigProcess, route: str) -> None:
    with as_role(tiered, "reader") as conn:
        conn.execute(f"set fig.route = '{route}'")
        row = conn.execute("select count(*) from sec_events "
                           "where ts < now() - interval '60 days'").fetchone()
        assert row is not None and row[0] > 0


def test_row_level_security_never_served_from_cold(tiered: FigProcess) -> None:
    with psycopg.connect(tiered.dsn, autocommit=True) as conn:
        conn.execute("alter table sec_events enable row level security")
        conn.execute("create policy own_rows on sec_events using (owner = current_user)")
    try:
        with as_role(tiered, "reader") as conn:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="row-level security"):
                conn.execute("select count(*) from sec_events")
            conn.execute("set fig.route = 'cold'")
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="row-level security"):
                conn.execute("select id from sec_events where owner = 'stranger' limit 1")
            conn.execute("set fig.route = 'hot'")
            rows = conn.execute("select distinct owner from sec_events").fetchall()
            assert rows in ([], [("reader",)])  # hot rows, with the policy applied
    finally:
        with psycopg.connect(tiered.dsn, autocommit=True) as conn:
            conn.execute("drop policy own_rows on sec_events")
            conn.execute("alter table sec_events disable row level security")


def test_control_functions_limited_to_admin_role(tiered: FigProcess) -> None:
    with psycopg.connect(tiered.dsn, autocommit=True) as conn:
        for name, owner in (("reader_own", "reader"), ("boss_own", "boss")):
            conn.execute(f"create table if not exists {name} "
                         "(id int primary key, ts timestamptz not null)")
            conn.execute(f"alter table {name} owner to {owner}")
    with as_role(tiered, "reader") as conn:
        for sql in ("select fig.tier_table('public.reader_own', 'ts', interval '1 day')",
                    "select fig.untier_table('public.sec_events')",
                    "select fig.run_retention()", "select fig.compact('public.sec_events')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for function"):
                conn.execute(sql)
        assert conn.execute("select count(*) from fig.tiered_tables").fetchone() is not None
    with as_role(tiered, "boss") as conn:
        conn.execute("select fig.tier_table('public.boss_own', 'ts', interval '1 day')")
        conn.execute("select fig.untier_table('public.boss_own')")
