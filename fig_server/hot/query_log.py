"""fig.query_log in the hot Postgres: its schema, the per-user cost view, batched inserts of
audit documents through Fig's own connection, and pruning to a bounded number of rows."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

COLUMNS = ("ts", "user_name", "client_addr", "application_name", "database", "statement",
           "route", "tables", "command", "rows", "bytes_scanned", "bytes_total",
           "manifests_kept", "manifests_total", "files_kept", "files_total", "row_groups_kept",
           "row_groups_total", "duration_ms", "outcome", "sqlstate", "cost_usd")

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS fig;
CREATE TABLE IF NOT EXISTS fig.query_log (
    id bigserial PRIMARY KEY,
    ts timestamptz NOT NULL,
    user_name text NOT NULL,
    client_addr text,
    application_name text,
    database text,
    statement text,
    route text NOT NULL,
    tables text[] NOT NULL DEFAULT '{}',
    command text,
    rows bigint NOT NULL DEFAULT 0,
    bytes_scanned bigint NOT NULL DEFAULT 0,
    bytes_total bigint NOT NULL DEFAULT 0,
    manifests_kept integer NOT NULL DEFAULT 0,
    manifests_total integer NOT NULL DEFAULT 0,
    files_kept integer NOT NULL DEFAULT 0,
    files_total integer NOT NULL DEFAULT 0,
    row_groups_kept integer NOT NULL DEFAULT 0,
    row_groups_total integer NOT NULL DEFAULT 0,
    duration_ms double precision NOT NULL,
    outcome text NOT NULL,
    sqlstate text,
    cost_usd numeric NOT NULL DEFAULT 0
);
COMMENT ON TABLE fig.query_log IS
    'One row per statement through Fig (newest [audit] query_log_max_rows kept)';
CREATE OR REPLACE VIEW fig.query_cost_by_user AS
    SELECT user_name, count(*) AS queries, sum(bytes_scanned)::bigint AS bytes_scanned,
           sum(cost_usd) AS cost_usd
    FROM fig.query_log GROUP BY user_name;
REVOKE ALL ON fig.query_log, fig.query_cost_by_user FROM PUBLIC;
"""

INSERT_SQL = sql.SQL(
    "INSERT INTO fig.query_log ({columns}) SELECT {columns} "
    "FROM json_populate_recordset(NULL::fig.query_log, %s::json)").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS))

PRUNE_SQL = ("DELETE FROM fig.query_log WHERE id <= "
             "(SELECT max(id) FROM fig.query_log) - %s")


def install_query_log(dsn: str, admin_role: str) -> None:
    """Create the table and view (idempotent); only the admin role (and superusers) read
    them, nobody but Fig writes them. Run after the control grants, which cover all tables."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(SCHEMA_SQL)
        if admin_role:
            admin = sql.Identifier(admin_role)
            conn.execute(sql.SQL("REVOKE ALL ON fig.query_log, fig.query_cost_by_user "
                                 "FROM {}").format(admin))
            conn.execute(sql.SQL("GRANT SELECT ON fig.query_log, fig.query_cost_by_user "
                                 "TO {}").format(admin))


class QueryLogSink:
    """Inserts batches of audit documents (JSON text) into fig.query_log; used by one thread
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
            conn.execute(INSERT_SQL, ("[" + ",".join(documents) + "]",))
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
