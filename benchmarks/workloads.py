"""The cold, federated and star-schema queries every system runs, as data: a name, a title and
the SQL a person or a tool would send to Postgres, plus, where DuckDB and DataFusion cannot
read that spelling over files, the same question in their SQL (`peer_sql`). Fig (routes auto
and cold, and its cold engine in-process) and the Postgres peer always get the tool's SQL.
DuckDB and DataFusion accept every Postgres spelling used here but Metabase's
`"public"."events"."col"` (DuckDB has no schema `public`), so only those shapes have one.

Several shapes ask one question spelled differently (by name, by ordinal, by alias, with
Metabase's fully qualified columns, wrapped in dbt-style CTEs or subqueries): a speed-up that
holds only for one spelling is not a speed-up.

Every session runs in TimeZone UTC (systems.py sets it), so that date_trunc and ::date of a
timestamptz cut the same days and weeks in Postgres, Fig, DuckDB and DataFusion.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

# How rows are compared across systems (run._check_agreement).
ORDERED = "ordered"  # ORDER BY is a total order: rows must agree one by one, in order
MULTISET = "multiset"  # the same rows in any order (no ORDER BY, or ties it leaves open)
ROW_COUNT = "row count"  # LIMIT without ORDER BY: any n rows are a right answer

METABASE_PREVIEW_LIMIT = 2000  # Metabase's row limit for a table preview or an ad-hoc question
EXPORT_ROWS = 1_000_000
SPAN_DAYS = 45


@dataclass(frozen=True)
class Query:
    """One workload shape: a short name for tables and charts, its SQL, and how to check it."""

    name: str
    title: str
    sql: str
    uses_dimension: bool = False
    peer_sql: str = ""  # the same question for DuckDB and DataFusion over files, if different
    compare: str = MULTISET
    star: bool = False
    # Values a driver binds for the %s placeholders of sql (Fig and Postgres, over psycopg's
    # extended protocol); peer_sql then holds them inline, for the file readers and EXPLAIN
    params: tuple[Any, ...] = ()

    @property
    def file_sql(self) -> str:
        """What DuckDB and DataFusion run over the Parquet files."""
        return self.peer_sql or self.sql

    @property
    def inline_sql(self) -> str:
        """The statement with its values written inline (EXPLAIN, the in-process engine)."""
        return self.peer_sql if self.params else self.sql


@dataclass(frozen=True)
class Params:
    """The data set's facts the shapes need: its days, the tier boundary, rare values."""

    last_day: dt.date
    boundary: dt.datetime
    example_day: dt.date
    needle_user: int
    needle_id: int
    rows_per_day: int

    @property
    def span(self) -> tuple[str, str]:
        """45 days around the tier boundary (the start of the hot days), as UTC timestamps."""
        start = self.boundary - dt.timedelta(days=SPAN_DAYS // 2)
        return _utc(start), _utc(start + dt.timedelta(days=SPAN_DAYS))

    @property
    def export_span(self) -> tuple[str, str]:
        """Whole days centred on the boundary holding about EXPORT_ROWS rows (all at tiny)."""
        half = max(1, -(-EXPORT_ROWS // self.rows_per_day) // 2)
        return (_utc(self.boundary - dt.timedelta(days=half)),
                _utc(self.boundary + dt.timedelta(days=half)))

    @property
    def last_week(self) -> tuple[str, str]:
        end = dt.datetime.combine(self.last_day + dt.timedelta(days=1), dt.time(), dt.UTC)
        return _utc(end - dt.timedelta(days=7)), _utc(end)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def _tz(moment: str) -> str:
    """A timestamptz literal as Postgres users write it."""
    return f"TIMESTAMPTZ '{moment}'"


def _mb(column: str) -> str:
    """A column as Metabase writes it: schema, table and column, each quoted."""
    return f'"public"."events"."{column}"'


def _mb_time(moment: str) -> str:
    """A time bound as Metabase writes it for Postgres."""
    return f"timestamp with time zone '{moment.replace('+00', '.000Z')}'"


def cold_queries(p: Params) -> list[Query]:
    """Every shape over the tiered events table: the classic six, then tools' spellings."""
    return [*classic_queries(p), *spelling_queries(), *tool_queries(p), *time_queries(p),
            *driver_queries(p)]


def driver_queries(p: Params) -> list[Query]:
    """Values bound as parameters, as drivers and BI tools over JDBC send them: a user, and
    a three-day window 20 days below the tier boundary."""
    start = dt.datetime.combine((p.boundary - dt.timedelta(days=20)).date(), dt.time(), dt.UTC)
    end = start + dt.timedelta(days=3)
    window = "ts >= {} AND ts < {}"
    per_day = ("SELECT date_trunc('day', ts) AS d, count(*) AS n, sum(amount) AS total "
               "FROM events WHERE {} GROUP BY 1 ORDER BY 1")
    return [
        Query("needle-param", "one user's requests and amount, the user bound as a parameter",
              "SELECT count(*) AS n, sum(amount) AS total FROM events WHERE user_id = %s",
              peer_sql="SELECT count(*) AS n, sum(amount) AS total FROM events "
                       f"WHERE user_id = {p.needle_user}", params=(p.needle_user,)),
        Query("window-param", "three old days per day, the window bound as parameters",
              per_day.format(window.format("%s", "%s")),
              peer_sql=per_day.format(window.format(_tz(start.isoformat()),
                                                    _tz(end.isoformat()))),
              params=(start, end), compare=ORDERED),
    ]


def classic_queries(p: Params) -> list[Query]:
    day = p.example_day.isoformat()
    return [
        Query("example", "day + status = 500, ORDER BY ts DESC LIMIT 5 (architecture doc)",
              f"SELECT * FROM events WHERE day = DATE '{day}' AND status = 500 "
              "ORDER BY ts DESC LIMIT 5", compare=ORDERED),
        Query("topn", "latest 10 events, no partition filter",
              "SELECT ts, status, user_id, amount FROM events ORDER BY ts DESC LIMIT 10"),
        Query("needle", "one user's events (filter on a non-partition column)",
              f"SELECT ts, status, amount FROM events WHERE user_id = {p.needle_user} "
              "ORDER BY ts"),
        Query("groupby", "full GROUP BY day, status aggregate",
              "SELECT day, status, count(*) AS n, sum(amount) AS total FROM events "
              "GROUP BY day, status ORDER BY day, status", compare=ORDERED),
        Query("distinct", "count(DISTINCT user_id) over all rows",
              "SELECT count(DISTINCT user_id) AS users FROM events"),
        Query("join", "errors per region: join with the hot dimension table countries",
              "SELECT c.region, count(*) AS n, sum(e.amount) AS total FROM events e "
              "JOIN countries c ON c.code = e.country WHERE e.status = 500 "
              "GROUP BY c.region ORDER BY c.region", uses_dimension=True, compare=ORDERED),
    ]


def spelling_queries() -> list[Query]:
    """The `groupby` question (requests and amount per day and status), spelled five more ways."""
    plain = ("SELECT day, status, count(*) AS n, sum(amount) AS total FROM events "
             "GROUP BY day, status ORDER BY day, status")
    return [
        Query("gb-ordinal", "groupby spelled with ordinals in GROUP BY and ORDER BY",
              "SELECT day, status, count(*) AS n, sum(amount) AS total FROM events "
              "GROUP BY 1, 2 ORDER BY 1, 2", compare=ORDERED),
        Query("gb-alias", "groupby spelled with output aliases in GROUP BY and ORDER BY",
              "SELECT day AS d, status AS s, count(*) AS n, sum(amount) AS total FROM events "
              "GROUP BY d, s ORDER BY d, s", compare=ORDERED),
        Query("gb-metabase", "groupby as Metabase writes it: schema-qualified quoted columns",
              f'SELECT {_mb("day")} AS "day", {_mb("status")} AS "status", count(*) AS "count", '
              f'sum({_mb("amount")}) AS "sum" FROM "public"."events" '
              f'GROUP BY {_mb("day")}, {_mb("status")} '
              f'ORDER BY {_mb("day")} ASC, {_mb("status")} ASC',
              peer_sql=plain, compare=ORDERED),
        Query("gb-dbt-cte", "groupby as a dbt model: staging CTEs renaming columns",
              "WITH source AS (SELECT * FROM events), "
              "renamed AS (SELECT day AS event_day, status AS http_status, amount "
              "FROM source), "
              "final AS (SELECT event_day, http_status, count(*) AS n, sum(amount) AS total "
              "FROM renamed GROUP BY event_day, http_status) "
              "SELECT * FROM final ORDER BY event_day, http_status", compare=ORDERED),
        Query("gb-subquery", "groupby over nested subqueries (a compiled dbt model)",
              "SELECT day, status, count(*) AS n, sum(amount) AS total FROM ("
              "SELECT day, status, amount FROM (SELECT * FROM events) AS stg_events"
              ") AS int_events GROUP BY day, status ORDER BY day, status", compare=ORDERED),
    ]


def tool_queries(p: Params) -> list[Query]:
    """What BI tools, dbt and analysts send: previews, breakouts, casts, bins, conditionals."""
    columns = ("id", "ts", "day", "status", "user_id", "country", "amount")
    preview = ", ".join(f'{_mb(c)} AS "{c}"' for c in columns)
    per_day = "SELECT CAST(ts AS date) AS d, count(*) AS n FROM events"
    return [
        Query("mb-preview", "Metabase table preview: LIMIT without ORDER BY (row count only)",
              f'SELECT {preview} FROM "public"."events" LIMIT {METABASE_PREVIEW_LIMIT}',
              peer_sql=f"SELECT {', '.join(columns)} FROM events "
                       f"LIMIT {METABASE_PREVIEW_LIMIT}",
              compare=ROW_COUNT),
        Query("dbt-show", "dbt show: a model wrapped in a LIMIT subquery (row count only)",
              "SELECT * FROM (WITH source AS (SELECT * FROM events) "
              "SELECT id, ts, status, amount FROM source WHERE status = 404"
              ") AS model_limit_subq LIMIT 5", compare=ROW_COUNT),
        Query("mb-day", "Metabase: count by date_trunc('day', ts), fully qualified",
              f"SELECT date_trunc('day', {_mb('ts')}) AS \"ts\", count(*) AS \"count\" "
              f"FROM \"public\".\"events\" GROUP BY date_trunc('day', {_mb('ts')}) "
              f"ORDER BY date_trunc('day', {_mb('ts')}) ASC",
              peer_sql="SELECT date_trunc('day', ts) AS ts, count(*) AS count FROM events "
                       "GROUP BY date_trunc('day', ts) ORDER BY date_trunc('day', ts)",
              compare=ORDERED),
        Query("mb-week-country", "Metabase: sum by country and week breakout",
              f"SELECT {_mb('country')} AS \"country\", date_trunc('week', {_mb('ts')}) AS "
              f"\"ts\", sum({_mb('amount')}) AS \"sum\" FROM \"public\".\"events\" "
              f"GROUP BY {_mb('country')}, date_trunc('week', {_mb('ts')}) "
              f"ORDER BY {_mb('country')} ASC, date_trunc('week', {_mb('ts')}) ASC",
              peer_sql="SELECT country, date_trunc('week', ts) AS ts, sum(amount) AS sum "
                       "FROM events GROUP BY country, date_trunc('week', ts) "
                       "ORDER BY country, date_trunc('week', ts)",
              compare=ORDERED),
        Query("cast-date", "count per date with CAST(ts AS date)",
              f"{per_day} GROUP BY CAST(ts AS date) ORDER BY d", compare=ORDERED),
        Query("cast-colon", "the same with ts::date and ordinals",
              "SELECT ts::date AS d, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
              compare=ORDERED),
        Query("sum-case", "errors and not-found per country with SUM(CASE ...)",
              "SELECT country, sum(CASE WHEN status = 500 THEN 1 ELSE 0 END) AS errors, "
              "sum(CASE WHEN status = 404 THEN 1 ELSE 0 END) AS not_found, count(*) AS n "
              "FROM events GROUP BY country ORDER BY country", compare=ORDERED),
        Query("count-filter", "the same with count(*) FILTER (WHERE ...)",
              "SELECT country, count(*) FILTER (WHERE status = 500) AS errors, "
              "count(*) FILTER (WHERE status = 404) AS not_found, count(*) AS n "
              "FROM events GROUP BY country ORDER BY country", compare=ORDERED),
        Query("mb-count-where", "Metabase's count-where and sum-where (THEN 1 ELSE 0.0)",
              f"SELECT {_mb('country')} AS \"country\", SUM(CASE WHEN {_mb('status')} = 500 "
              f"THEN 1 ELSE 0.0 END) AS \"count-where\", SUM(CASE WHEN {_mb('status')} = 200 "
              f"THEN {_mb('amount')} ELSE 0.0 END) AS \"sum-where\" FROM \"public\".\"events\" "
              f"GROUP BY {_mb('country')} ORDER BY {_mb('country')} ASC",
              peer_sql="SELECT country, SUM(CASE WHEN status = 500 THEN 1 ELSE 0.0 END) AS "
                       "\"count-where\", SUM(CASE WHEN status = 200 THEN amount ELSE 0.0 END) "
                       "AS \"sum-where\" FROM events GROUP BY country ORDER BY country",
              compare=ORDERED),
        Query("bins-floor", "amount histogram: binning with floor",
              "SELECT floor(amount / 100) * 100 AS bucket, count(*) AS n FROM events "
              "GROUP BY 1 ORDER BY 1", compare=ORDERED),
        Query("distinct-beside", "count(DISTINCT user_id) beside other aggregates, per day",
              "SELECT day, count(*) AS n, count(DISTINCT user_id) AS users, "
              "sum(amount) AS total, max(amount) AS biggest FROM events "
              "GROUP BY day ORDER BY day", compare=ORDERED),
        Query("needle-id", "one event by id (a primary-key lookup)",
              f"SELECT * FROM events WHERE id = {p.needle_id}"),
        Query("needle-mb", "one user's events as Metabase filters them (LIMIT 2000)",
              f"SELECT {preview} FROM \"public\".\"events\" "
              f"WHERE {_mb('user_id')} = {p.needle_user} "
              f"ORDER BY {_mb('ts')} ASC, {_mb('id')} ASC LIMIT {METABASE_PREVIEW_LIMIT}",
              peer_sql=f"SELECT {', '.join(columns)} FROM events "
                       f"WHERE user_id = {p.needle_user} ORDER BY ts, id "
                       f"LIMIT {METABASE_PREVIEW_LIMIT}",
              compare=ORDERED),
        Query("topn-users", "top 10 users by requests, no time bound",
              "SELECT user_id, count(*) AS n FROM events GROUP BY user_id "
              "ORDER BY n DESC, user_id LIMIT 10", compare=ORDERED),
    ]


def time_queries(p: Params) -> list[Query]:
    """Time-bounded shapes: the last week, 45 days across the tier boundary, a 1M-row export."""
    week_from, week_to = p.last_week
    span_from, span_to = p.span
    export_from, export_to = p.export_span
    week = f"ts >= {_tz(week_from)} AND ts < {_tz(week_to)}"
    span = f"ts >= {_tz(span_from)} AND ts < {_tz(span_to)}"
    mb_span = (f"{_mb('ts')} >= {_mb_time(span_from)} AND {_mb('ts')} < {_mb_time(span_to)}")
    export = "SELECT id, ts, user_id, country, amount FROM events WHERE ts >= {} AND ts < {}"
    return [
        Query("topn-amount-week", "10 largest amounts in the last 7 days (time-bounded top-n)",
              f"SELECT id, ts, amount FROM events WHERE {week} "
              "ORDER BY amount DESC, id LIMIT 10", compare=ORDERED),
        Query("topn-users-45d", "top 10 users by requests over 45 days across the boundary",
              f"SELECT user_id, count(*) AS n FROM events WHERE {span} GROUP BY 1 "
              "ORDER BY 2 DESC, 1 LIMIT 10", compare=ORDERED),
        Query("span45-daily", "daily requests and amount over 45 days across the boundary",
              f"SELECT day, count(*) AS n, sum(amount) AS total FROM events WHERE {span} "
              "GROUP BY day ORDER BY day", compare=ORDERED),
        Query("span45-mb", "the same 45 days as a Metabase date_trunc('day') breakout",
              f"SELECT date_trunc('day', {_mb('ts')}) AS \"ts\", count(*) AS \"count\", "
              f"sum({_mb('amount')}) AS \"sum\" FROM \"public\".\"events\" WHERE {mb_span} "
              "GROUP BY 1 ORDER BY 1 ASC",
              peer_sql=f"SELECT date_trunc('day', ts) AS ts, count(*) AS count, "
                       f"sum(amount) AS sum FROM events WHERE {span} "
                       "GROUP BY 1 ORDER BY 1", compare=ORDERED),
        Query("export-1m", f"export ~{EXPORT_ROWS:,} rows around the boundary (quick scale; "
              "all rows at tiny)",
              export.format(_tz(export_from), _tz(export_to))),
    ]


def star_queries(p: Params) -> list[Query]:
    """The star schema: the tiered fact table events joined to the hot dimensions countries
    and users, filtered on dimension attributes, grouped."""
    span_from, span_to = p.span
    span = f"e.ts >= {_tz(span_from)} AND e.ts < {_tz(span_to)}"

    def star(name: str, title: str, sql: str) -> Query:
        return Query(name, title, sql, uses_dimension=True, compare=ORDERED, star=True)

    return [
        star("star-plan-region", "business users' requests and revenue by plan and region, "
             "45 days",
             "SELECT u.plan, c.region, count(*) AS n, sum(e.amount) AS revenue "
             "FROM events e JOIN users u ON u.user_id = e.user_id "
             f"JOIN countries c ON c.code = e.country WHERE u.segment = 'business' AND {span} "
             "GROUP BY u.plan, c.region ORDER BY u.plan, c.region"),
        star("star-europe-pro", "Europe, pro plan: revenue per country",
             "SELECT c.name AS country, count(*) AS n, sum(e.amount) AS revenue "
             "FROM events e JOIN users u ON u.user_id = e.user_id "
             "JOIN countries c ON c.code = e.country "
             "WHERE c.region = 'Europe' AND u.plan = 'pro' "
             "GROUP BY c.name ORDER BY c.name"),
        star("star-cohort", "errors per signup-month cohort (date_trunc on a dimension)",
             "SELECT date_trunc('month', u.signup_day)::date AS cohort, count(*) AS errors, "
             "count(DISTINCT e.user_id) AS users FROM events e "
             "JOIN users u ON u.user_id = e.user_id WHERE e.status = 500 "
             "GROUP BY 1 ORDER BY 1"),
        star("star-top-countries", "top 5 countries by enterprise revenue",
             "SELECT c.name, sum(e.amount) AS revenue FROM events e "
             "JOIN users u ON u.user_id = e.user_id JOIN countries c ON c.code = e.country "
             "WHERE u.plan = 'enterprise' GROUP BY c.name ORDER BY revenue DESC, c.name "
             "LIMIT 5"),
        star("star-mb-dbt", "Metabase over a dbt model: daily revenue per plan in a CTE, "
             "Asia only",
             "WITH fct AS (SELECT e.ts, e.amount, u.plan FROM events e "
             "JOIN users u ON u.user_id = e.user_id JOIN countries c ON c.code = e.country "
             "WHERE c.region = 'Asia') "
             "SELECT \"fct\".\"plan\" AS \"plan\", date_trunc('day', \"fct\".\"ts\") AS \"ts\", "
             "sum(\"fct\".\"amount\") AS \"sum\" FROM fct GROUP BY 1, 2 ORDER BY 1 ASC, 2 ASC"),
    ]


def split_queries(start: dt.datetime, boundary: dt.datetime) -> list[Query]:
    """A daily aggregate from `start` across the tier boundary, and its cold and hot parts."""
    base = ("SELECT day, count(*) AS n, sum(amount) AS total FROM events "
            f"WHERE ts >= TIMESTAMPTZ '{start.isoformat()}'")
    tail = " GROUP BY day ORDER BY day"
    edge = f"TIMESTAMPTZ '{boundary.isoformat()}'"
    return [
        Query("split", "daily aggregate across the tier boundary (SPLIT)", base + tail,
              compare=ORDERED),
        Query("split-cold", "its cold part alone", f"{base} AND ts < {edge}{tail}",
              compare=ORDERED),
        Query("split-hot", "its hot part alone", f"{base} AND ts >= {edge}{tail}",
              compare=ORDERED),
    ]
