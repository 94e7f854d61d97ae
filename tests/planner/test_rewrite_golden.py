"""Golden files for routing decisions and rewrites: input SQL and expected plan side by side.

Regenerate after an intended change with FIG_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from fig_server.errors import FeatureNotSupported
from fig_server.planner.rewrite import rewrite, split_statements
from fig_server.planner.tiers import TieredSet, TieredTable

GOLDEN = Path(__file__).parent / "golden" / "rewrites.txt"
EVENTS = TieredTable(
    "public", "events", "ts", dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    (("ts", "timestamp with time zone"), ("day", "date"), ("status", "integer"),
     ("user_id", "bigint"), ("country", "text"), ("amount", "numeric(12,2)"),
     ("payload", "text")), byte_ordered=frozenset({"country"}))
NOT_YET_COLD = TieredTable("public", "fresh", "at", None, (("at", "timestamp with time zone"),
                                                            ("v", "integer")))
# retention cut at 13:00 UTC deleted every day before 2025-01-02 from hot
LINEITEM = TieredTable("public", "lineitem", "l_shipdate",
                       dt.datetime(2025, 1, 1, 13, tzinfo=dt.UTC),
                       (("l_shipdate", "date"), ("l_quantity", "numeric(15,2)")))
# with its oid known and two late changes seen before planning (cdc/late.py): every hot
# part checks that the statement sees no other
BACKFILLED = TieredTable("public", "backfilled", "at", dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                         (("at", "timestamp with time zone"), ("v", "integer")),
                         oid=16400, late=(3, 7))
# its time column leads an index: hot parts in two arms, one without the boundary filter,
# run when hot holds no row below the boundary (parts.hot_rows)
VISITS = TieredTable("public", "visits", "at", dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                     (("at", "timestamp with time zone"), ("user_id", "bigint"),
                      ("page", "text")), time_indexed=True)
TIERED = TieredSet.of([EVENTS, NOT_YET_COLD, LINEITEM, BACKFILLED, VISITS])


# Stand-in values (type, JSON text) for expressions the server would evaluate in the
# client's session, by the expression's SQL.
NOW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
EVALUATED = {
    "CURRENT_TIMESTAMP - INTERVAL '1 DAY'": ("timestamp with time zone",
                                             '"2025-02-28T00:00:00+00:00"'),
    "CURRENT_TIMESTAMP - INTERVAL '400 DAYS'": ("timestamp with time zone",
                                                '"2024-01-26T00:00:00+00:00"'),
    "CURRENT_TIMESTAMP - INTERVAL '7 DAYS'": ("timestamp with time zone",
                                              '"2025-02-22T00:00:00+00:00"'),
    "'2024-06-01'": ("", '"2024-06-01T00:00:00+00:00"'),
    "'2024-07-01'": ("", '"2024-07-01T00:00:00+00:00"'),
    "'2025-02-01'": ("", '"2025-02-01T00:00:00+00:00"'),
    "'2025-06-01'": ("", '"2025-06-01"'),
    "'2025-09-25'": ("", '"2025-09-25"'),
    "CURRENT_DATE - 100": ("date", '"2024-11-21"'),
    "200 + 0.5": ("numeric", "200.5"),
}
# Parameters as the session evaluates them with a Bind's values (route `... bound`); without
# one they stay for Postgres.
BOUND = {
    "$1": ("bigint", "55"),
    "$2": ("timestamp with time zone", '"2024-06-01T00:00:00+00:00"'),
}


def render(sql: str, route: str) -> str:
    """route: auto, hot or cold, followed by ` utc` for a session whose TimeZone is UTC
    and ` bound` for a statement planned with its Bind's values."""
    route, _, options = route.partition(" ")
    utc, bound = "utc" in options.split(), "bound" in options.split()
    try:
        plan = rewrite(sql, TIERED, route, utc=utc)
        needs = [need for need in (plan.needs if plan is not None else [])
                 if bound or not need.parameters]
        if plan is not None and plan.needs:
            constants = {}
            for need in needs:
                kind, value = (BOUND if need.parameters else EVALUATED)[need.text]
                constants[need.key] = (need.as_type or kind, value)
            plan = rewrite(sql, TIERED, route, constants, utc=utc)
    except FeatureNotSupported as error:
        return f"error {error.sqlstate}: {error.message}"
    evaluated = [f"evaluated in session: {need.text}"
                 f"{f' as {need.as_type}' if need.as_type else ''}" for need in needs]
    if plan is None:
        return "\n".join([*evaluated, "relay unchanged"])
    lines = [*evaluated, f"route {plan.route.value}{' explain' if plan.explain else ''}"
             f"{' analyze' if plan.analyze else ''}", f"backend: {plan.sql}"]
    for part in plan.parts:
        lines.append(f"cold: {part.cold_sql}")
        lines += [f"reduce {r.column} by: {r.keys_sql}" for r in part.reducers]
    if plan.write is not None:
        lines += [f"cold write {plan.write.kind}: {plan.write.part.cold_sql}",
                  f"stage: {plan.write.stage_sql}"]
    return "\n".join(lines)


def cases() -> list[tuple[str, str, str, str]]:
    """(title, route, sql, expected) blocks of the golden file."""
    out = []
    for block in GOLDEN.read_text().split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        title = lines[0].removeprefix("# title: ")
        route = lines[1].removeprefix("# route: ")
        sql = lines[2].removeprefix("sql: ")
        out.append((title, route, sql, "\n".join(lines[3:])))
    return out


@pytest.mark.parametrize(("title", "route", "sql", "expected"), cases(),
                         ids=[c[0] for c in cases()])
def test_rewrite_matches_golden(title: str, route: str, sql: str, expected: str) -> None:
    assert render(sql, route) == expected, title


def test_golden_file_is_current() -> None:
    blocks = []
    for title, route, sql, _ in cases():
        blocks.append(f"# title: {title}\n# route: {route}\nsql: {sql}\n{render(sql, route)}")
    text = "\n\n".join(blocks) + "\n"
    if os.environ.get("FIG_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text


def test_no_tiered_name_means_no_parsing_needed() -> None:
    assert not TIERED.may_touch("select * from users where name = 'x'")
    assert not TIERED.may_touch("select * from events_archive")
    assert TIERED.may_touch('SELECT * FROM "Public".EVENTS')


def test_split_statements_keeps_literals_and_dollar_quotes() -> None:
    assert split_statements("select 'a;b'; select 2;") == ["select 'a;b';", " select 2;"]
    body = "do $$ begin perform 1; end $$; select 1"
    assert split_statements(body) == [body]
