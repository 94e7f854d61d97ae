"""The cold queries every system runs, written once in SQL that Postgres, DuckDB and DataFusion
all accept, so each system answers exactly the same question."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    """One cold workload: a short name for tables and charts, and its SQL."""

    name: str
    title: str
    sql: str
    uses_dimension: bool = False


def cold_queries(example_day: dt.date, user_id: int) -> list[Query]:
    day = example_day.isoformat()
    return [
        Query("example", "day + status = 500, ORDER BY ts DESC LIMIT 5 (architecture doc)",
              f"SELECT * FROM events WHERE day = DATE '{day}' AND status = 500 "
              "ORDER BY ts DESC LIMIT 5"),
        Query("topn", "latest 10 events, no partition filter",
              "SELECT ts, status, user_id, amount FROM events ORDER BY ts DESC LIMIT 10"),
        Query("needle", "one user's events (filter on a non-partition column)",
              f"SELECT ts, status, amount FROM events WHERE user_id = {user_id} ORDER BY ts"),
        Query("groupby", "full GROUP BY day, status aggregate",
              "SELECT day, status, count(*) AS n, sum(amount) AS total FROM events "
              "GROUP BY day, status ORDER BY day, status"),
        Query("distinct", "count(DISTINCT user_id) over all rows",
              "SELECT count(DISTINCT user_id) AS users FROM events"),
        Query("join", "errors per region: join with the hot dimension table countries",
              "SELECT c.region, count(*) AS n, sum(e.amount) AS total FROM events e "
              "JOIN countries c ON c.code = e.country WHERE e.status = 500 "
              "GROUP BY c.region ORDER BY c.region", uses_dimension=True),
    ]


def split_queries(start: dt.datetime, boundary: dt.datetime) -> list[Query]:
    """A daily aggregate from `start` across the tier boundary, and its cold and hot parts."""
    base = ("SELECT day, count(*) AS n, sum(amount) AS total FROM events "
            f"WHERE ts >= TIMESTAMPTZ '{start.isoformat()}'")
    tail = " GROUP BY day ORDER BY day"
    edge = f"TIMESTAMPTZ '{boundary.isoformat()}'"
    return [
        Query("split", "daily aggregate across the tier boundary (SPLIT)", base + tail),
        Query("split-cold", "its cold part alone", f"{base} AND ts < {edge}{tail}"),
        Query("split-hot", "its hot part alone", f"{base} AND ts >= {edge}{tail}"),
    ]
