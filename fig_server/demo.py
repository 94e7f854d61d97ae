"""The out-of-the-box demo: an `events` table with a year of history, 30 days hot, rest cold."""

from __future__ import annotations

import logging
import time

import psycopg

log = logging.getLogger(__name__)

CREATE = """
CREATE TABLE public.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts timestamptz NOT NULL,
    day date NOT NULL,
    status integer NOT NULL,
    user_id bigint NOT NULL,
    country text NOT NULL,
    amount numeric(12,2) NOT NULL,
    payload text
);
COMMENT ON TABLE public.events IS 'Fig demo: a year of synthetic events, 30 days hot';
"""

# Deterministic synthetic history: status ~95% 200 / 4% 404 / 1% 500, spread over 365 days.
FILL = """
INSERT INTO public.events (ts, day, status, user_id, country, amount, payload)
SELECT t, (t AT TIME ZONE 'UTC')::date,
       CASE WHEN r < 0.95 THEN 200 WHEN r < 0.99 THEN 404 ELSE 500 END,
       (random() * 100000)::bigint,
       (ARRAY['US','DE','FR','GB','BR','IN','JP','CA','AU','NL'])[1 + (random() * 9)::int],
       round((random() * 500)::numeric, 2),
       'request ' || g
FROM (SELECT date_trunc('day', now()) - interval '365 days'
             + g * (interval '365 days' / %(rows)s) AS t, random() AS r, g
      FROM generate_series(1, %(rows)s) g) s
"""
INDEXES = """
CREATE INDEX events_ts ON public.events (ts);
CREATE INDEX events_day_status ON public.events (day, status);
"""


def install_demo(dsn: str, rows: int, timeout_s: float = 1800.0) -> None:
    """Create, fill and tier the demo table once; a no-op when `events` already exists."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('public.events')").fetchone() != (None,):
            return
        log.info("demo: creating public.events with %d rows over a year", rows)
        conn.execute(CREATE)
        with conn.transaction():
            conn.execute("SELECT setseed(0.42)")
            conn.execute(FILL, {"rows": rows})
        conn.execute(INDEXES)
        conn.execute("SELECT fig.tier_table('public.events', 'ts', interval '30 days')")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = conn.execute("SELECT state FROM fig.tiered_tables "
                                 "WHERE table_oid = 'public.events'::regclass").fetchone()
            if state is not None and state[0] == "active":
                break
            time.sleep(1.0)
        conn.execute("SELECT fig.sync(interval '10 minutes')")
        conn.execute("SELECT fig.run_retention()")
        log.info("demo: public.events is tiered; rows older than 30 days are in Iceberg only")
