"""SQL fuzzer over the router: statements built with sqlglot over a tiered schema never make
`rewrite` raise anything but a FigError."""

from __future__ import annotations

import datetime as dt
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from fig_server.errors import FigError
from fig_server.planner.rewrite import rewrite, split_statements
from fig_server.planner.tiers import TieredSet, TieredTable

EXAMPLES = 2000 if os.environ.get("FIG_LONG") else 150
BOUNDARY = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
COLUMNS = (("id", "bigint"), ("ts", "timestamp with time zone"), ("status", "integer"),
           ("country", "text"), ("amount", "numeric(12,2)"), ("note", "text"))
TIERED = TieredSet.of([
    TieredTable("public", "events", "ts", BOUNDARY, COLUMNS),
    TieredTable("public", "secret", "ts", BOUNDARY, COLUMNS, row_security=True),
    TieredTable("app", "fresh", "ts", None, COLUMNS)])
TABLES = ["events", "public.events", "secret", "app.fresh", "users", "pg_class"]
NAMES = [name for name, _ in COLUMNS] + ["missing", "user_id"]

column = st.sampled_from(NAMES).map(exp.column)
literal = st.one_of(
    st.integers(-10**12, 10**12).map(exp.Literal.number),
    st.text(max_size=8).map(exp.Literal.string),
    st.sampled_from(["'2024-01-01'", "'2024-07-01 00:00:00+00'", "now()",
                     "now() - interval '30 days'", "current_date", "NULL", "'infinity'",
                     "$1", "'not a time'", "1e400", "-0.0"]).map(exp.maybe_parse))


@st.composite
def predicate(draw: st.DrawFn, depth: int = 0) -> exp.Expression:
    left, right = draw(column), draw(st.one_of(literal, column))
    kind = draw(st.sampled_from([exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE]))
    node: exp.Expression = kind(this=left, expression=right)
    choice = draw(st.integers(0, 5))
    if choice == 0:
        node = exp.Between(this=left, low=draw(literal), high=draw(literal))
    elif choice == 1:
        node = exp.In(this=left, expressions=draw(st.lists(literal, min_size=1, max_size=3)))
    elif choice == 2:
        node = exp.Is(this=left, expression=exp.Null())
    if depth < 2 and draw(st.booleans()):
        other = draw(predicate(depth + 1))
        node = draw(st.sampled_from([exp.and_, exp.or_]))(node, other)
    if draw(st.integers(0, 6)) == 0:
        node = exp.not_(node)
    return node


@st.composite
def select(draw: st.DrawFn, depth: int = 0) -> exp.Select:
    aggregates = ["count(*)", "sum(amount)", "min(ts)", "max(status)", "avg(amount)",
                  "count(distinct country)", "string_agg(note, ',')",
                  "row_number() over (order by ts)", "date_trunc('day', ts)", "*", "1"]
    items = draw(st.lists(st.one_of(column, st.sampled_from(aggregates).map(exp.maybe_parse)),
                          min_size=1, max_size=4))
    query = exp.select(*items).from_(draw(st.sampled_from(TABLES)))
    if draw(st.booleans()):
        query = query.where(draw(predicate()))
    if draw(st.booleans()):
        query = query.join(draw(st.sampled_from(TABLES)), on=draw(predicate()),
                           join_type=draw(st.sampled_from(["", "left", "full", "cross"])))
    if draw(st.booleans()):
        query = query.group_by(*draw(st.lists(column, min_size=1, max_size=2)))
        if draw(st.booleans()):
            query = query.having(exp.maybe_parse("count(*) > 1"))
    if draw(st.booleans()):
        query = query.order_by(*draw(st.lists(column, min_size=1, max_size=2)))
    if draw(st.booleans()):
        query = query.limit(draw(st.integers(0, 10**6)))
    if draw(st.booleans()):
        query = query.distinct()
    if depth < 1 and draw(st.integers(0, 3)) == 0:
        inner = draw(select(depth + 1))
        query = query.where(exp.In(this=draw(column), query=inner.subquery()))
    return query


@st.composite
def statement(draw: st.DrawFn) -> str:
    query: exp.Expression = draw(select())
    wrap = draw(st.integers(0, 9))
    if wrap == 0:
        query = exp.union(query, draw(select()), distinct=draw(st.booleans()))
    elif wrap == 1:
        query = exp.select("*").from_("c").with_("c", as_=query)
    sql = query.sql(dialect="postgres")
    prefix = draw(st.sampled_from(["", "", "", "EXPLAIN ", "EXPLAIN ANALYZE ",
                                   "EXPLAIN (ANALYZE, COSTS off) "]))
    return prefix + sql


def check(sql: str, route: str) -> None:
    try:
        for one in split_statements(sql):
            rewrite(one, TIERED, route)
    except FigError:
        pass


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statement(), st.sampled_from(["auto", "hot", "cold"]))
def test_router_raises_only_fig_errors(sql: str, route: str) -> None:
    check(sql, route)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.sampled_from(
    ["select", "*", "from", "events", "where", "ts", "<", "'2024-01-01'", "(", ")", ",",
     "union", "join", "on", "group", "by", "order", "limit", "1", ";", "with", "as", "$1",
     "insert", "into", "values", "update", "set", "delete", "explain", "analyze", "--",
     "/*", "*/", "'", '"', "e'\\", "::", "timestamptz", "count(*)", "lateral", "copy"]),
    max_size=25).map(" ".join), st.sampled_from(["auto", "cold"]))
def test_router_survives_token_soup(sql: str, route: str) -> None:
    check(sql, route)
