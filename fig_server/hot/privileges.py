"""Who may use Fig's control surface in the hot PostgreSQL, applied at every start."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Functions every session needs: read-your-writes, the cold-write steps Fig runs inside the
# client's own session for UPDATE/DELETE below the boundary (SECURITY DEFINER), and what
# every federated statement reads first (its settings and the tiered tables it may see).
PUBLIC_FUNCTIONS = ("sync", "request_cold_write", "confirm_cold_write", "wait_cold_write",
                    "_bounds_hold", "_late_hold", "_wait_cdc", "_session_state")


def apply_control_grants(dsn: str, admin_role: str) -> None:
    """Every session may read which tables are tiered and which have late changes pending
    (the planner reads fig.tiered_tables and fig.late_changes in the client's own session);
    with an admin role, only it may EXECUTE the control functions."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("GRANT USAGE ON SCHEMA fig TO PUBLIC")
        conn.execute("GRANT SELECT ON fig.tiered_tables, fig.late_changes TO PUBLIC")
        # Who may manage a table besides its owner and superusers (fig._authorize).
        conn.execute("INSERT INTO fig.control_settings (id, admin_role) VALUES (1, %s) "
                     "ON CONFLICT (id) DO UPDATE SET admin_role = excluded.admin_role",
                     (admin_role or None,))
        if not admin_role:
            return
        admin = sql.Identifier(admin_role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (admin_role,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(admin))
        conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA fig FROM PUBLIC")
        conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fig TO {}").format(admin))
        # Not every control function is SECURITY DEFINER: the admin role edits Fig's state.
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA fig "
                             "TO {}").format(admin))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA fig TO {}").format(admin))
        names = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'fig' AND p.proname = ANY(%s)", (list(PUBLIC_FUNCTIONS),))
        for (signature,) in names.fetchall():
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(
                sql.SQL(signature)))
    log.info("control functions of schema fig limited to role %s", admin_role or "(any)")


def set_superuser_password(dsn: str, password: str) -> None:
    """The embedded Postgres's superuser gets [auth] superuser_password (SCRAM), so password
    methods have a first role to log in with."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(password)))
