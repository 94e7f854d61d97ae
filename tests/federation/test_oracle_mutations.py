"""The oracle suite again after mutations: updates and deletes above and below the boundary,
old rows backfilled after retention, ADD COLUMN. Every statement runs through Fig on the
tiered `events` and on the never-tiered `events_plain` with the same command tag, then every
query of the oracle suite must answer alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FigProcess
from tests.federation.test_oracle import QUERIES, assert_same_answer, build_oracle

MUTATIONS = [
    # old rows inserted after retention (hot and, through CDC, cold: below the boundary)
    "insert into {t} select g, '{now}'::timestamptz - interval '90 days' "
    "+ (g - 30000) * interval '13 minutes', ('{now}'::timestamptz - interval '90 days' "
    "+ (g - 30000) * interval '13 minutes')::date, "
    "(array[200, 404, 500])[1 + g % 3], g % 50, 'FR', g % 17, 'backfill' "
    "from generate_series(30000, 30300) g",
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
    fig, values = build_oracle(MUTATIONS)
    yield fig, values
    fig.stop()


@pytest.mark.parametrize("route", ["auto", "cold"])
@pytest.mark.parametrize("query", QUERIES)
def test_mutated_tiered_table_answers_like_plain_table(
        mutated_fig: tuple[FigProcess, dict[str, str]], query: str, route: str) -> None:
    assert_same_answer(*mutated_fig, query, route)
