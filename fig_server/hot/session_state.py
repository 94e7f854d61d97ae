"""What every federated statement reads from the hot Postgres in the client's own session:
which tables are tiered (and the views over them) and the session's settings."""

from __future__ import annotations

import psycopg

# One JSON document per tiered table, then one per view that reads one (through other views
# or a function below), then one per user function whose body names one of them or such a
# function (Postgres runs a function's statements itself, where only hot rows are: the planner
# refuses statements that call one, planner/classify.py), then one per trigger running such a
# function (writes to its table are refused). Read by the catalog refresher and,
# for a boundary and a search_path consistent with the statement, inside the client's own
# backend session. `visible`: the unqualified name resolves to it under the session's
# search_path; `late`: the records of changes below the boundary cold may not hold yet
# (cdc/late.py); `own_late`: the session's open transaction made such a change (the
# trigger's transaction-local mark).
TIERED_SQL = """WITH RECURSIVE views(oid) AS (
    SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid IN (SELECT table_oid FROM fig.tiered_tables)
      AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class FROM views JOIN pg_depend d ON d.refobjid = views.oid
      AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> views.oid),
  named(name) AS (
    SELECT table_name FROM fig.tiered_tables
    UNION SELECT c.relname FROM views JOIN pg_class c ON c.oid = views.oid),
  bodies(oid, name, body) AS (
    SELECT p.oid, p.proname, CASE WHEN p.prosqlbody IS NULL THEN p.prosrc
      ELSE pg_get_functiondef(p.oid) END
    FROM pg_proc p
    WHERE p.oid >= 16384 AND p.prolang NOT IN (12, 13)  -- user functions, not C or internal
      AND p.pronamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname = 'fig')
      AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass
                      AND e.objid = p.oid AND e.deptype = 'e')),  -- nor an extension's
  readers(oid, name, reads) AS (
    SELECT b.oid, b.name, coalesce((SELECT n.name FROM named n
                                    WHERE lower(n.name) = lower(m[1]) LIMIT 1), m[1])
    FROM bodies b, regexp_match(b.body, '\\m(' ||
      (SELECT string_agg(regexp_replace(name, '(\\W)', '\\\\\\1', 'g'), '|') FROM named)
      || ')\\M', 'i') m
    WHERE m IS NOT NULL
    UNION
    SELECT b.oid, b.name, readers.reads FROM readers JOIN bodies b
      ON b.oid <> readers.oid AND b.body ~* ('\\m' ||
        regexp_replace(readers.name, '(\\W)', '\\\\\\1', 'g') || '\\M')),
  tainted(oid, reads) AS (  -- each such function once, with the first name it reads
    SELECT DISTINCT ON (oid) oid, reads FROM readers ORDER BY oid, reads),
  calling(oid) AS (  -- views calling such a function, and views over those
    SELECT r.ev_class FROM tainted JOIN pg_depend d ON d.refobjid = tainted.oid
      AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_proc'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid
    UNION
    SELECT r.ev_class FROM calling JOIN pg_depend d ON d.refobjid = calling.oid
      AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> calling.oid)
SELECT json_build_object(
  'schema', t.schema_name, 'name', t.table_name, 'time', t.time_column, 'oid', t.table_oid,
  'late', (SELECT json_agg(l.id ORDER BY l.id) FROM fig.late_changes l
           WHERE l.table_oid = t.table_oid),
  'own_late', current_setting('fig.late_' || t.table_oid, true) IS NOT DISTINCT FROM 'on',
  'boundary', CASE WHEN t.boundary = '-infinity' THEN NULL
    WHEN t.boundary = 'infinity' THEN '9999-12-31T00:00:00+00:00'  -- attached: all cold
    ELSE to_char(t.boundary AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') END,
  'rls', c.relrowsecurity,
  'time_indexed', EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam JOIN pg_attribute ta ON ta.attrelid = t.table_oid
      AND ta.attname = t.time_column
    WHERE i.indrelid = t.table_oid AND i.indkey[0] = ta.attnum AND i.indpred IS NULL
      AND i.indisvalid AND am.amname = 'btree'),
  'visible', to_regclass(quote_ident(t.table_name)) IS NOT DISTINCT FROM t.table_oid,
  'columns', json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod))
                      ORDER BY a.attnum),
  'byte_ordered', coalesce(json_agg(a.attname) FILTER (WHERE a.attcollation <> 0 AND EXISTS (
      SELECT FROM pg_collation co JOIN pg_database d ON d.datname = current_database()
      WHERE co.oid = a.attcollation AND CASE WHEN co.collname = 'default'
        THEN d.datlocprovider = 'c' AND d.datcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')
        ELSE co.collprovider = 'c' AND co.collcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')
      END)), '[]'))::text
FROM fig.tiered_tables t
JOIN pg_class c ON c.oid = t.table_oid
JOIN pg_attribute a ON a.attrelid = t.table_oid AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY t.schema_name, t.table_name, t.time_column, t.boundary, c.relrowsecurity, t.table_oid
UNION ALL
SELECT json_build_object('view', v.relkind, 'schema', n.nspname, 'name', v.relname,
  'visible', to_regclass(quote_ident(v.relname)) IS NOT DISTINCT FROM v.oid,
  'definition', pg_get_viewdef(v.oid))::text
FROM (SELECT oid FROM views UNION SELECT oid FROM calling) found
JOIN pg_class v ON v.oid = found.oid AND v.relkind IN ('v', 'm')
JOIN pg_namespace n ON n.oid = v.relnamespace
UNION ALL
SELECT json_build_object('function', p.prokind, 'schema', n.nspname, 'name', p.proname,
  'reads', found.reads)::text
FROM tainted found
JOIN pg_proc p ON p.oid = found.oid
JOIN pg_namespace n ON n.oid = p.pronamespace
UNION ALL
SELECT json_build_object('trigger', t.tgname, 'schema', n.nspname, 'name', c.relname,
  'visible', to_regclass(quote_ident(c.relname)) IS NOT DISTINCT FROM c.oid,
  'function', p.proname, 'reads', found.reads, 'on', array_remove(ARRAY[
    CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END, CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END,
    CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END], NULL))::text
FROM tainted found
JOIN pg_trigger t ON t.tgfoid = found.oid AND NOT t.tgisinternal AND t.tgenabled <> 'D'
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = found.oid"""

# What a federated statement reads in the client's own session once it holds the boundary
# lock: first its settings (one JSON array: fig.route, fig.as_of, statement_timeout in ms,
# TimeZone, client_encoding, transaction_read_only, default_transaction_isolation,
# fig.result_cache, transaction_isolation, the transaction's start), then TIERED_SQL's
# documents. A PL/pgSQL function so that Postgres plans
# the catalog query once per session instead of once per statement (0.8 ms of every
# federated statement's 2 ms prelude was planning it, and another 0.8 ms reading
# pg_settings); without a search_path of its own, so `visible` is the caller's.
SESSION_STATE_SQL = """
CREATE OR REPLACE FUNCTION fig._session_state() RETURNS SETOF text
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN NEXT json_build_array(
        coalesce(current_setting('fig.route', true), ''),
        coalesce(current_setting('fig.as_of', true), ''),
        extract(epoch FROM current_setting('statement_timeout')::interval) * 1000,
        current_setting('TimeZone'), current_setting('client_encoding'),
        current_setting('transaction_read_only'),
        current_setting('default_transaction_isolation'),
        coalesce(current_setting('fig.result_cache', true), ''),
        current_setting('transaction_isolation'), now())::text;
    RETURN QUERY """ + TIERED_SQL + """;
END $fn$;
"""


def install_session_state(dsn: str) -> None:
    """Create or replace fig._session_state (schema fig exists: cdc.control made it), under
    the lock that serializes the control schema's installs (servers starting together)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(7200)")
        try:
            conn.execute(SESSION_STATE_SQL.encode())
        finally:
            conn.execute("SELECT pg_advisory_unlock(7200)")
