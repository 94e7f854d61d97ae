"""The generated oracle's data: `events` and `kinds` tiered after retention, each with a
never-tiered twin (`events_plain`, `kinds_plain`) holding the same rows, and a hot `users`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from tests.conftest import FigProcess
from tests.federation.test_oracle import build_oracle

# Every tiered table the generator may name, and its never-tiered twin.
TWINS = {"events": "events_plain", "kinds": "kinds_plain"}

KINDS_ROWS = 4000

KINDS_DDL = """
create table {name} (
  id bigint primary key, ts timestamptz not null, si smallint, i int, bi bigint,
  num numeric(14,3), r real, d double precision, t text, vc varchar(8), ch char(4),
  b bool, dt date, tsn timestamp, tm time, j jsonb, js json, u uuid, by bytea)"""

# Deterministic in g alone, so both tables get identical rows. The spread of ts (43 minutes
# apart over 120 days) puts three quarters of the rows below a 30-day retention.
KINDS_ROWS_SQL = """
select g, %(start)s::timestamptz + g * interval '43 minutes',
  case when g % 17 = 0 then null else (g % 300 - 150)::smallint end,
  case when g % 19 = 0 then null else g % 1000 end,
  case when g % 97 = 0 then 900000000000000000 + g when g % 23 = 0 then null
       else (g::bigint * 1000003) % 9999991 - 5000000 end,
  case when g % 13 = 0 then null else round((g % 2000) / 7.0, 3) end,
  case when g % 11 = 0 then null else ((g % 500) / 3.0)::real end,
  case when g % 211 = 0 then 'NaN'::float8 when g % 29 = 0 then null else g / 7.0 end,
  (array['alpha', 'Beta', 'gamma', 'DELTA', '', 'ünï', null, 'a_b%c', 'x y',
         'alpha2'])[1 + g % 10] || case when g % 4 = 0 then '' else (g % 6)::text end,
  'v' || (g % 37),
  (array['a', 'bb', 'ccc', 'dddd', null])[1 + g % 5],
  case g % 3 when 0 then true when 1 then false else null end,
  (%(start)s::timestamptz + g * interval '43 minutes')::date - (g % 5),
  (%(start)s::timestamptz + g * interval '43 minutes') at time zone 'UTC'
    + (g % 7) * interval '1 hour',
  case when g % 31 = 0 then null else time '00:00' + (g * 7 % 1440) * interval '1 minute' end,
  case when g % 37 = 0 then null else jsonb_build_object('k', g % 10,
       's', (array['x', 'y', 'z'])[1 + g % 3],
       'n', case when g % 4 = 0 then null else g % 7 end,
       'a', jsonb_build_array(g % 2, g % 3)) end,
  case when g % 53 = 0 then null else json_build_object('g', g % 9) end,
  case when g % 41 = 0 then null else md5(g::text)::uuid end,
  case when g % 43 = 0 then null else substring(decode(md5(g::text), 'hex') from 1 for 4) end
from generate_series(1, {rows}) g"""


@dataclass
class OracleData:
    """A running Fig with the oracle tables and the instants the generator's literals use."""

    fig: FigProcess
    now: dt.datetime  # when the rows were made; row times are relative to it
    values: dict[str, str]


def build_generated_oracle() -> OracleData:
    """Start Fig with `events` (via test_oracle.build_oracle) and add the many-typed `kinds`."""
    fig, values = build_oracle()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(days=120)
    try:
        with psycopg.connect(fig.dsn, autocommit=True) as conn:
            for name in ("kinds", "kinds_plain"):
                conn.execute(KINDS_DDL.format(name=name))
                conn.execute(f"insert into {name} "
                             + KINDS_ROWS_SQL.format(rows=KINDS_ROWS).replace("%", "%%")
                             .replace("%%(start)s", "%(start)s"), {"start": start})
            # kinds' time column leads an index, events' does not: hot parts are planned in
            # both forms (planner/parts.py hot_rows)
            conn.execute("create index kinds_ts on kinds (ts)")
            conn.execute("select fig.tier_table('kinds', 'ts', interval '30 days')")
            conn.execute("select fig.sync(interval '120 seconds')")
            conn.execute("select fig.run_retention()")
        with psycopg.connect(fig.hot_dsn) as direct:
            row = direct.execute("select count(*) from kinds").fetchone()
            assert row is not None and row[0] < KINDS_ROWS * 0.4, "retention moved no kinds rows"
    except BaseException:
        fig.stop()
        raise
    return OracleData(fig, now, values)
