"""The oracle suite again after mutations: updates and deletes above and below the boundary,
old rows backfilled after retention, ADD COLUMN. Every statement runs through Fig on the
tiered `events` and on the never-tiered `events_plain` with the same command tag, then every
query of the oracle suite must answer alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import FigProcess, start_fig
from tests.federation.test_oracle import QUERIES, rows_of

MUTATIONS = [
    # old rows inserted after retention (hot and, through CDC, cold: below the boundary)
    "insert into {t} select g, '{now}'::timestamptz - interval '90 days' "
    "+ (g - 30000) * interval '13 minutes', ('{now}'::timestamptz - interval '90 days' "
    "+ (g - 30000) * interval '13 minutes')::date, "
    "(array[200, 404, 500])[1 + g % 3], g % 50, 'FR', g % 17, 'backfill' "
    "from generate_series(30000, 30300) g",
    "select fig.sync()",
    # above the boundary: Postgres alone, CDC carries them
    "update {t} set note = 'hot update' where ts > now() - interval '5 days' and status = 404",
    "delete from {t} where ts > now() - interval '3 days' and user_id = 7",
    # may reach cold: both tiers (the backfilled rows are in both)
    "update {t} set amount = amount + 1, note = 'cold update' "
    "where status = 500 and user_id < 10",
    "delete from {t} where country = 'BR' and id % 4 = 0",
    "delete from {t} where id between 30000 and 30050",
    "update {t} as e set status = 201 from users u where u.id = e.user_id and u.vip "
    "and e.status = 200 and e.ts < now() - interval '60 days'",
    # schema change, then a hot write that streams the new column to cold
    "alter table {t} add column extra int",
    "update {t} set extra = 1 where ts > now() - interval '10 days'",
    "select fig.sync()",
]


@pytest.fixture(scope="module")
def mutated_fig() -> Iterator[tuple[FigProcess, dict[str, str]]]:
    fig = start_fig()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(days=120)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        for name in ("events", "events_plain"):
            conn.execute(f"""
                create table {name} (id bigint primary key, ts timestamptz not null,
                  day date not null, status int not null, user_id bigint, country text,
                  amount numeric(12,2), note text)""")
            conn.execute(f"""
                insert into {name}
                select g, %(start)s::timestamptz + g * interval '7 minutes',
                  (%(start)s::timestamptz + g * interval '7 minutes')::date,
                  (array[200,200,200,200,200,200,200,404,404,500])[1 + g %% 10],
                  g %% 50, (array['DE','FR','US','BR',null])[1 + g %% 5],
                  round((g %% 1000) / 37.0, 2), case when g %% 3 = 0 then null else 'n' || g end
                from generate_series(1, 24000) g""", {"start": start})
        conn.execute("create table users (id bigint primary key, name text, vip bool)")
        conn.execute("insert into users select g, 'user' || g, g % 4 = 0 "
                     "from generate_series(0, 60) g")
        conn.execute("select fig.tier_table('events', 'ts', interval '30 days')")
        conn.execute("select fig.sync(interval '120 seconds')")
        conn.execute("select fig.run_retention()")
        for statement in MUTATIONS:
            tags = [conn.execute(statement.format(t=t, now=now)).statusmessage
                    for t in ("events", "events_plain")]
            assert tags[0] == tags[1], statement
    values = {"d1": str((start + dt.timedelta(days=40)).date()),
              "d2": str((now - dt.timedelta(days=45)).date()),
              "d3": str((now - dt.timedelta(days=10)).date())}
    yield fig, values
    fig.stop()


@pytest.mark.parametrize("route", ["auto", "cold"])
@pytest.mark.parametrize("query", QUERIES)
def test_mutated_tiered_table_answers_like_plain_table(
        mutated_fig: tuple[FigProcess, dict[str, str]], query: str, route: str) -> None:
    fig, values = mutated_fig
    sql = query.format(**values)
    with psycopg.connect(fig.dsn, autocommit=True) as conn:
        conn.execute(f"set fig.route = '{route}'")
        conn.execute("set timezone = 'America/New_York'")
        got = rows_of(conn, sql)
        want = rows_of(conn, sql.replace("events", "events_plain"))
    assert got[0] == want[0]
    assert got[1] == want[1]
