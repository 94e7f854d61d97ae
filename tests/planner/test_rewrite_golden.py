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
     ("payload", "text")))
NOT_YET_COLD = TieredTable("public", "fresh", "at", None, (("at", "timestamp with time zone"),
                                                            ("v", "integer")))
TIERED = TieredSet.of([EVENTS, NOT_YET_COLD])


# Stand-in values for expressions the server would evaluate in the client's session.
NOW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
CONSTANTS = {
    "CURRENT_TIMESTAMP - INTERVAL '1 DAY'": NOW - dt.timedelta(days=1),
    "CURRENT_TIMESTAMP - INTERVAL '400 DAYS'": NOW - dt.timedelta(days=400),
    "'2024-06-01'": dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
    "'2024-07-01'": dt.datetime(2024, 7, 1, tzinfo=dt.UTC),
    "'2025-02-01'": dt.datetime(2025, 2, 1, tzinfo=dt.UTC),
}

VALUES = {"CURRENT_DATE - 100": "2024-11-21"}


def render(sql: str, route: str) -> str:
    try:
        plan = rewrite(sql, TIERED, route)
        needs = plan.needs if plan is not None else []
        values = plan.values_needed if plan is not None else []
        if needs or values:
            constants: dict[str, object] = {k: CONSTANTS[k] for k in needs}
            constants.update({f"{kind}:{text}": VALUES[text] for kind, text in values})
            plan = rewrite(sql, TIERED, route, constants)
            needs = needs + [f"{text} as {kind}" for kind, text in values]
    except FeatureNotSupported as error:
        return f"error {error.sqlstate}: {error.message}"
    evaluated = [f"evaluated in session: {text}" for text in needs]
    if plan is None:
        return "\n".join([*evaluated, "relay unchanged"])
    lines = [*evaluated, f"route {plan.route.value}{' explain' if plan.explain else ''}"
             f"{' analyze' if plan.analyze else ''}", f"backend: {plan.sql}"]
    lines += [f"cold: {part.cold_sql}" for part in plan.parts]
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
