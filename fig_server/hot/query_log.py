"""fig.query_log in the hot Postgres: its schema, the per-user cost view, batched inserts of
audit documents through Fig's own connection, and pruning to a bounded number of rows."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# The view's columns, as fields of the stored JSON documents.
COLUMNS = (
    ("ts", "timestamptz"), ("user_name", "text"), ("client_addr", "text"),
    ("application_name", "text"), ("database", "text"), ("statement", "text"), ("route", "text"),
    ("tables", "text[]"), ("command", "text"), ("rows", "bigint"), ("bytes_scanned", "bigint"),
    ("bytes_total", "bigint"), ("manifests_kept", "integer"), ("manifests_total", "integer"),
    ("files_kept", "integer"), ("files_total", "integer"), ("row_groups_kept", "integer"),
    ("row_groups_total", "integer"), ("duration_ms", "double precision"), ("outcome", "text"),
    ("sqlstate", "text"), ("cost_usd", "numeric"), ("calls", "integer"),
    # where a statement over tiered tables spent its time (NULL for statements relayed whole)
    ("prelude_ms", "double precision"), ("plan_ms", "double precision"),
    ("cold_ms", "double precision"), ("copy_ms", "double precision"),
    ("final_ms", "double precision"),
    # last, so that CREATE OR REPLACE VIEW adds it to an existing log: Fig's own transaction
    # begun and the semi-join key sets read (planner/semi_join.py)
    ("keys_ms", "double precision"),
)

# Rows are stored as the audit file's JSON documents (json, not jsonb: only validated on the
# way in, so a busy server's inserts stay cheap); the view reads each document once.
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS fig;
DO $$ BEGIN
    -- the first cut kept the log as a table of columns
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('fig.query_log')
               AND relkind = 'r') THEN
        DROP TABLE fig.query_log CASCADE;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS fig.query_log_docs (
    id bigserial PRIMARY KEY,
    doc json NOT NULL
);
CREATE OR REPLACE VIEW fig.query_log AS
    SELECT d.id, r.* FROM fig.query_log_docs d,
        json_to_record(d.doc) AS r(""" + ", ".join(f"{n} {k}" for n, k in COLUMNS) + """);
COMMENT ON VIEW fig.query_log IS
    'One row per statement through Fig (newest [audit] query_log_max_rows kept)';
CREATE OR REPLACE VIEW fig.query_cost_by_user AS
    SELECT user_name, sum(calls)::bigint AS queries,
           sum(bytes_scanned)::bigint AS bytes_scanned, sum(cost_usd) AS cost_usd
    FROM fig.query_log GROUP BY user_name;
REVOKE ALL ON fig.query_log_docs, fig.query_log, fig.query_cost_by_user FROM PUBLIC;
"""

COPY_SQL = "COPY fig.query_log_docs (doc) FROM STDIN"

PRUNE_SQL = ("DELETE FROM fig.query_log_docs WHERE id <= "
             "(SELECT max(id) FROM fig.query_log_docs) - %s")


def install_query_log(dsn: str, admin_role: str) -> None:
    """Create the table and view (idempotent); only the admin role (and superusers) read
    them, nobody but Fig writes them. Run after the control grants, which cover all tables."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(SCHEMA_SQL)
        if admin_role:
            admin = sql.Identifier(admin_role)
            conn.execute(sql.SQL("REVOKE ALL ON fig.query_log_docs, fig.query_log, "
                                 "fig.query_cost_by_user FROM {}").format(admin))
            conn.execute(sql.SQL("GRANT SELECT ON fig.query_log, fig.query_cost_by_user "
                                 "TO {}").format(admin))


class QueryLogSink:
    """Copies batches of audit documents (JSON text) into fig.query_log; used by one thread
    at a time (the audit writer's)."""

    def __init__(self, dsn: str, max_rows: int) -> None:
        self.dsn = dsn
        self.max_rows = max_rows
        self.prune_every = max(1, min(max_rows // 10, 10_000))
        self._since_prune = 0
        self._conn: psycopg.Connection | None = None

    def insert(self, documents: list[str]) -> None:
        """Insert the documents; on a database error the batch is logged and dropped (the
        audit file still holds it) and the connection is opened again next time."""
        try:
            conn = self._connect()
            # COPY text format: JSON lines hold no raw tab or newline; only backslashes (JSON's
            # escapes) need doubling.
            data = "\n".join(documents).replace("\\", "\\\\") + "\n"
            with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(data)
            self._since_prune += len(documents)
            if self.max_rows > 0 and self._since_prune >= self.prune_every:
                conn.execute(PRUNE_SQL, (self.max_rows,))
                self._since_prune = 0
        except psycopg.Error as exc:
            log.warning("fig.query_log: %d records not inserted: %s", len(documents), exc)
            self.close()

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True,
                                         application_name="fig audit")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
