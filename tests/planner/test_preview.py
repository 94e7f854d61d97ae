"""planner/preview.py: which statements hot alone may answer when it holds their LIMIT's
rows (row by row over the one tiered reference, LIMIT without ORDER BY), and which never."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from fig_server.planner.preview import hot_first_rows

CASES = [
    ("SELECT * FROM events LIMIT 5", 5),
    ('SELECT "public"."events"."id" FROM "public"."events" LIMIT 2000', 2000),
    ("SELECT * FROM (WITH source AS (SELECT * FROM events) SELECT id, ts FROM source "
     "WHERE status = 404) AS model_limit_subq LIMIT 5", 5),
    ("SELECT upper(note), id + 1 FROM events WHERE ts > now() - interval '1 day' LIMIT 5", 5),
    ("SELECT * FROM events LIMIT 5 OFFSET 10", 5),
    ("SELECT * FROM events ORDER BY ts LIMIT 5", None),
    ("SELECT * FROM events LIMIT 0", None),
    ("SELECT * FROM events LIMIT ALL", None),
    ("SELECT * FROM events LIMIT $1", None),
    ("SELECT * FROM events WHERE status = $1 LIMIT 5", None),
    ("SELECT count(*) FROM events LIMIT 5", None),
    ("SELECT DISTINCT status FROM events LIMIT 5", None),
    ("SELECT status FROM events GROUP BY status LIMIT 5", None),
    ("SELECT row_number() OVER () FROM events LIMIT 5", None),
    ("SELECT * FROM events e JOIN users u ON u.id = e.user_id LIMIT 5", None),
    ("SELECT * FROM (SELECT * FROM events LIMIT 10) q LIMIT 5", None),
    ("SELECT * FROM events WHERE id NOT IN (SELECT id FROM other) LIMIT 5", None),
    ("SELECT * FROM users WHERE id IN (SELECT user_id FROM events) LIMIT 5", None),
    ("SELECT nextval('s'), * FROM events LIMIT 5", None),
    ("SELECT my_function(id) FROM events LIMIT 5", None),
    ("WITH RECURSIVE r AS (SELECT * FROM events) SELECT * FROM r LIMIT 5", None),
    ("WITH a AS (SELECT 1), b AS (SELECT * FROM events) SELECT * FROM b LIMIT 5", None),
    ("SELECT * FROM events UNION ALL SELECT * FROM events LIMIT 5", None),
    ("SELECT * FROM events LIMIT 5 FOR UPDATE", None),
]


@pytest.mark.parametrize(("sql", "rows"), CASES)
def test_hot_first_rows(sql: str, rows: int | None) -> None:
    tree = sqlglot.parse_one(sql, read="postgres")
    reference = next(t for t in tree.find_all(exp.Table) if t.name == "events")
    assert hot_first_rows(tree, reference) == rows
