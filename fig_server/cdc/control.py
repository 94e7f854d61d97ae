"""The SQL control surface in schema `fig` of the hot Postgres: state tables, functions, views.

Everything is plain Postgres SQL and plpgsql, so it works through Fig's relay, psql or dbt.

State tables (written by the functions below and by the CDC process, fig_server.cdc.service):

``fig.tiered_tables`` (logged; one row per tiered table, the planner reads it)
    table_oid oid PK, schema_name text, table_name text, time_column text,
    hot_retention interval, boundary timestamptz (tier boundary: every row with
    time < boundary is in cold and no longer in hot; starts at -infinity and only moves
    forward), state text ('copying' | 'active' | 'paused'), tiered_at timestamptz.

``fig.table_status`` (unlogged; per table, written by the CDC process)
    table_oid, cold_lsn pg_lsn (end LSN of the last transaction committed to Iceberg),
    cold_rows, cold_files, cold_bytes, copied_rows, copy_total_rows, copy_rows_per_s,
    last_commit_at, compacted_at, last_error, updated_at.

``fig.cdc_state`` (unlogged; one row, written by the CDC process)
    slot_name, pid, applied_lsn, rows_total, rows_per_s (last minute), last_commit_at,
    last_commit_ts (commit time of the newest transaction in cold), retention_ran_at,
    last_error, last_error_at, updated_at.

``fig.cold_write_requests`` / ``fig.cold_write_rows`` (logged; written through
``fig.request_cold_write``, stamped by the CDC process, fig_server.cdc.cold_writes)
    one request per UPDATE/DELETE that reaches rows only in cold: table, kind, column names,
    then per row the old time value and the row (old row for DELETE, new row for UPDATE) as
    Postgres text in UTC/ISO; done_at, applied_rows and error once handled.

Requests from ``fig.run_retention()`` and ``fig.compact()`` reach the CDC process as
session advisory locks (visible at once in pg_locks, unlike rows of an open transaction):
class RETENTION_LOCK (key 0) and COMPACT_LOCK (key = table oid modulo 2^31 - 1). The caller
then waits for the CDC process to stamp its completion time. ``fig.wait_cold_write(id)``
does the same with class COLD_WRITE_LOCK (key = request id modulo 2^31 - 1), and
``fig.attach_iceberg(name)`` with the bigint key ATTACH_LOCK << 32 | hashtext(name), stamped in
``fig.iceberg_attachments`` (fig_server.cdc.attach).

DROP TABLE of a tiered table untiers it: the event trigger fig_untier_dropped (sql_drop)
moves its row from fig.tiered_tables to ``fig.dropped_tables``, where the CDC process finds
it and drops or keeps the Iceberg table per [tiering] drop_cold_on_drop_table.
"""

from __future__ import annotations

import psycopg

RETENTION_LOCK = 7201
COMPACT_LOCK = 7202
COLD_WRITE_LOCK = 7204
ATTACH_LOCK = 7205
UNTIER_LOCK = 7206
# Held shared by Fig's federated statements while they read a boundary and run; taken (only
# tried) by whatever moves a boundary (retention, restore).
BOUNDARY_LOCK = 7203
# Advisory lock keys are int4: a table oid or request id modulo this (as the SQL does).
KEY_MODULUS = 2147483647
SUPPORTED_TYPES = ("int2", "int4", "int8", "float4", "float8", "text", "varchar", "bpchar",
                   "name", "json", "jsonb", "bool", "date", "time", "timestamp", "timestamptz",
                   "uuid", "bytea")

_TABLES = """
CREATE SCHEMA IF NOT EXISTS fig;
CREATE TABLE IF NOT EXISTS fig.tiered_tables (
    table_oid oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    time_column text NOT NULL,
    hot_retention interval NOT NULL,
    boundary timestamptz NOT NULL DEFAULT '-infinity',
    state text NOT NULL DEFAULT 'copying',
    tiered_at timestamptz NOT NULL DEFAULT now()
);
-- The table's columns as its cold rows hold them (fig._guard_tiered_ddl compares with them).
-- Added only where missing: ALTER TABLE would wait for every session reading the table
-- (fig.sync does, for long).
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'columns'
                   AND attrelid = 'fig.tiered_tables'::regclass) THEN
        ALTER TABLE fig.tiered_tables ADD COLUMN columns jsonb;
    END IF;
END $do$;
CREATE UNLOGGED TABLE IF NOT EXISTS fig.table_status (
    table_oid oid PRIMARY KEY,
    cold_lsn pg_lsn,
    cold_rows bigint,
    cold_files bigint,
    cold_bytes bigint,
    copied_rows bigint,
    copy_total_rows bigint,
    copy_rows_per_s double precision,
    last_commit_at timestamptz,
    compacted_at timestamptz,
    last_error text,
    updated_at timestamptz
);
CREATE UNLOGGED TABLE IF NOT EXISTS fig.cdc_state (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    slot_name text,
    pid int,
    applied_lsn pg_lsn,
    rows_total bigint DEFAULT 0,
    rows_per_s double precision DEFAULT 0,
    last_commit_at timestamptz,
    last_commit_ts timestamptz,
    retention_ran_at timestamptz,
    last_error text,
    last_error_at timestamptz,
    updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS fig.cold_write_requests (
    id bigserial PRIMARY KEY,
    table_oid oid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('DELETE', 'UPDATE')),
    columns text[] NOT NULL,
    row_count bigint NOT NULL,
    requested_by name NOT NULL DEFAULT session_user,
    requested_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz,
    applied_rows bigint,
    error text
);
CREATE TABLE IF NOT EXISTS fig.cold_write_rows (
    request_id bigint NOT NULL REFERENCES fig.cold_write_requests ON DELETE CASCADE,
    old_time text,
    row_values text[] NOT NULL
);
CREATE TABLE IF NOT EXISTS fig.iceberg_attachments (
    name_hash int PRIMARY KEY,
    name text,
    done_at timestamptz,
    error text
);
CREATE TABLE IF NOT EXISTS fig.dropped_tables (
    table_oid oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cold_write_rows_request ON fig.cold_write_rows (request_id);
-- confirmed: set by fig.confirm_cold_write in the transaction of the hot statement; a request
-- is applied only once that transaction committed. Added only where missing: ALTER TABLE
-- would wait for every session reading the table (fig.sync does, for long).
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'confirmed'
                   AND attrelid = 'fig.cold_write_requests'::regclass) THEN
        ALTER TABLE fig.cold_write_requests ADD COLUMN confirmed boolean NOT NULL DEFAULT false;
        CREATE INDEX cold_write_requests_pending ON fig.cold_write_requests (id)
            WHERE done_at IS NULL;
    END IF;
END $do$;
CREATE TABLE IF NOT EXISTS fig.control_settings (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    admin_role name
);
"""

_AUTHORIZE = """
CREATE OR REPLACE FUNCTION fig._authorize(what text, rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    admin name := (SELECT admin_role FROM fig.control_settings);
BEGIN
    -- session_user: inside SECURITY DEFINER functions current_user is the definer.
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RETURN;
    END IF;
    IF admin IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = admin)
       AND pg_has_role(session_user, admin, 'MEMBER') THEN
        RETURN;
    END IF;
    IF rel IS NOT NULL AND pg_has_role(session_user,
            (SELECT relowner FROM pg_class WHERE oid = rel), 'MEMBER') THEN
        RETURN;
    END IF;
    IF rel IS NULL THEN
        RAISE EXCEPTION '%: must be a superuser or a member of Fig''s admin role', what
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'set [auth] admin_role and grant it to the roles that manage Fig';
    END IF;
    RAISE EXCEPTION '%: must be owner of table %', what, rel
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'the table''s owner, a superuser or a member of [auth] admin_role may';
END $fn$;
"""

_CHECK_COLUMNS = """
CREATE OR REPLACE FUNCTION fig._check_columns(rel regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    col record;
    base text;
BEGIN
    FOR col IN
        SELECT a.attname, t.typname, t.typtype, a.atttypmod, e.typname AS elem, e.typtype AS etype
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
    LOOP
        base := coalesce(col.elem, col.typname);
        IF coalesce(col.etype, col.typtype) = 'e' OR base = ANY (@TYPES@::text[]) THEN
            CONTINUE;
        END IF;
        IF base = 'numeric' AND col.atttypmod >= 4 AND (col.atttypmod - 4) >> 16 <= 38 THEN
            CONTINUE;
        END IF;
        RAISE EXCEPTION 'column "%" of % has type %, which has no faithful Iceberg mapping',
            col.attname, rel, format_type((SELECT atttypid FROM pg_attribute
                WHERE attrelid = rel AND attname = col.attname), col.atttypmod)
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'use numeric(p,s) with p <= 38, or change or drop the column';
    END LOOP;
END $fn$;
"""

_TIER = """
CREATE OR REPLACE FUNCTION fig._columns_of(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $fn$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'attnum', attnum, 'name', attname, 'type', format_type(atttypid, atttypmod))
               ORDER BY attnum), '[]')
    FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$fn$;

CREATE OR REPLACE FUNCTION fig.tier_table(rel regclass, time_column text, hot_retention interval)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    nsp text;
    rname text;
    time_type text;
BEGIN
    PERFORM fig._authorize('fig.tier_table', rel);
    SELECT n.nspname, c.relname INTO nsp, rname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    IF (SELECT relkind FROM pg_class WHERE oid = rel) <> 'r' THEN
        RAISE EXCEPTION 'fig.tier_table: % is not a plain table', rel
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT t.typname INTO time_type FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attname = time_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF time_type IS NULL THEN
        RAISE EXCEPTION 'fig.tier_table: column "%" of % does not exist', time_column, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF time_type NOT IN ('timestamptz', 'timestamp', 'date') THEN
        RAISE EXCEPTION 'fig.tier_table: time column "%" has type %, expected timestamptz, '
            'timestamp or date', time_column, time_type USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF hot_retention IS NULL OR hot_retention < interval '0' THEN
        RAISE EXCEPTION 'fig.tier_table: hot_retention must be a non-negative interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = rel AND indisprimary) THEN
        RAISE EXCEPTION 'fig.tier_table: % has no primary key', rel
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Fig applies updates and deletes to cold by primary key: add one';
    END IF;
    PERFORM fig._check_columns(rel);
    -- Full old rows make unchanged TOASTed values and the old time column available to CDC.
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
    INSERT INTO fig.tiered_tables AS t
        (table_oid, schema_name, table_name, time_column, hot_retention, columns)
    VALUES (rel, nsp, rname, time_column, hot_retention, fig._columns_of(rel))
    ON CONFLICT (table_oid) DO UPDATE
        SET time_column = excluded.time_column, hot_retention = excluded.hot_retention,
            columns = excluded.columns,
            state = CASE WHEN t.state = 'paused' THEN 'copying' ELSE t.state END;
    RETURN format('%s.%s is tiered on %s with %s hot retention', nsp, rname, time_column,
                  hot_retention);
END $fn$;

CREATE OR REPLACE FUNCTION fig.tier_table(rel text, time_column text, hot_retention interval)
RETURNS text LANGUAGE sql AS $fn$
    SELECT fig.tier_table(rel::regclass, time_column, hot_retention)
$fn$;

DROP FUNCTION IF EXISTS fig.untier_table(text);
DROP FUNCTION IF EXISTS fig.untier_table(text, boolean);
DROP FUNCTION IF EXISTS fig._untier(oid, text, boolean);
CREATE OR REPLACE FUNCTION fig.untier_table(rel text, cold_rows text DEFAULT 'refuse',
                                            timeout interval DEFAULT '600s')
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    found_oid oid;
BEGIN
    -- resolved here, in the caller's search_path; fig._untier runs with the definer's
    SELECT table_oid INTO found_oid FROM fig.tiered_tables
    WHERE table_oid = to_regclass(rel) OR format('%I.%I', schema_name, table_name) = rel
       OR schema_name || '.' || table_name = rel;
    IF found_oid IS NULL THEN
        RAISE EXCEPTION 'fig.untier_table: % is not tiered', rel
            USING ERRCODE = 'undefined_table';
    END IF;
    RETURN fig._untier(found_oid, rel, cold_rows, timeout);
END $fn$;

CREATE OR REPLACE FUNCTION fig._untier(relid oid, shown text, cold_rows text, timeout interval)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    tiered fig.tiered_tables;
    started timestamptz := clock_timestamp();
    lock_key int := (relid::bigint % 2147483647)::int;
    err text;
BEGIN
    PERFORM fig._authorize('fig.untier_table', relid::regclass);
    IF cold_rows IS NULL OR cold_rows NOT IN ('refuse', 'discard', 'restore') THEN
        RAISE EXCEPTION 'fig.untier_table: cold_rows must be refuse, discard or restore, not %',
            cold_rows USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO tiered FROM fig.tiered_tables WHERE table_oid = relid;
    -- Once retention has moved the boundary, rows older than it exist only in cold.
    IF tiered.state = 'attached' OR tiered.boundary = '-infinity' OR cold_rows = 'discard' THEN
        DELETE FROM fig.tiered_tables WHERE table_oid = relid;
        RETURN format('%s is no longer tiered; its cold copy will be dropped', shown);
    END IF;
    IF cold_rows = 'refuse' THEN
        RAISE EXCEPTION 'fig.untier_table: rows of % older than % are only in the cold tier',
            shown, tiered.boundary
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('move them back to hot first with fig.untier_table(%1$L, '
                      'cold_rows => %2$L), or drop them with fig.untier_table(%1$L, '
                      'cold_rows => %3$L)', shown, 'restore', 'discard');
    END IF;
    -- restore: the CDC process moves them and untiers the table in one transaction
    -- (fig_server/cdc/restore.py); this waits for the table to leave fig.tiered_tables.
    PERFORM pg_advisory_lock_shared(@UNTIER@, lock_key);
    BEGIN
        LOOP
            EXIT WHEN NOT EXISTS (SELECT 1 FROM fig.tiered_tables WHERE table_oid = relid);
            SELECT last_error INTO err FROM fig.table_status
            WHERE table_oid = relid AND updated_at >= started
              AND last_error LIKE 'fig.untier_table:%';
            IF err IS NOT NULL THEN
                RAISE EXCEPTION '%', err USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            IF clock_timestamp() > started + timeout THEN
                PERFORM fig._wait_error('fig.untier_table', timeout);
            END IF;
            PERFORM pg_sleep(0.05);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(@UNTIER@, lock_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(@UNTIER@, lock_key);
    RETURN format('%s is no longer tiered: its rows older than %s were moved back to hot',
                  shown, tiered.boundary);
END $fn$;
"""

_SYNC = """
CREATE OR REPLACE FUNCTION fig._wait_error(what text, timeout interval) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    err text;
BEGIN
    SELECT last_error INTO err FROM fig.cdc_state;
    RAISE EXCEPTION '%: the CDC process did not finish within %', what, timeout
        USING ERRCODE = 'query_canceled',
              DETAIL = coalesce('last CDC error: ' || err, 'is the CDC process running?');
END $fn$;

-- Waits until CDC has passed every change committed so far (the slot's confirmed position,
-- which moves only once Iceberg holds the changes; not a snapshot read, so it moves inside
-- REPEATABLE READ too; with rels, also the applied position CDC writes while a paused table
-- holds the slot back, which every other table has reached) and the confirmed cold writes
-- are applied. rels NULL: every table's
-- initial copies, cold writes and pauses (fig.sync); else only these tables' (a statement
-- reading late changes, cdc/late.py; a cold write, session/cold_writes.py).
-- SECURITY DEFINER: every role may wait for CDC (Fig's cold writes do, in the client's own
-- session) but only Fig reads its state tables and the replication slots.
CREATE OR REPLACE FUNCTION fig._wait_cdc(rels oid[], what text, timeout interval)
RETURNS pg_lsn LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    target pg_lsn := pg_current_wal_insert_lsn();
    deadline timestamptz := clock_timestamp() + timeout;
    reached pg_lsn;
    paused text;
BEGIN
    LOOP
        SELECT greatest(s.confirmed_flush_lsn, CASE WHEN rels IS NOT NULL THEN c.applied_lsn END)
        INTO reached
        FROM pg_replication_slots s JOIN fig.cdc_state c ON c.slot_name = s.slot_name;
        -- after reading the position: CDC records a pause before it reports a position
        -- past the change that paused the table
        SELECT string_agg(format('%s.%s: %s', t.schema_name, t.table_name, st.last_error), '; ')
        INTO paused FROM fig.tiered_tables t LEFT JOIN fig.table_status st USING (table_oid)
        WHERE t.state = 'paused' AND (rels IS NULL OR t.table_oid = ANY (rels));
        IF paused IS NOT NULL THEN
            RAISE EXCEPTION '%: CDC is paused for %', what, paused
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'fix the table, then call fig.tier_table again to re-copy it';
        END IF;
        IF reached >= target
           AND NOT EXISTS (SELECT 1 FROM fig.tiered_tables WHERE state = 'copying'
                           AND (rels IS NULL OR table_oid = ANY (rels)))
           AND NOT EXISTS (SELECT 1 FROM fig.cold_write_requests
                           WHERE confirmed AND done_at IS NULL
                             AND (rels IS NULL OR table_oid = ANY (rels))) THEN
            RETURN reached;
        END IF;
        IF clock_timestamp() > deadline THEN
            PERFORM fig._wait_error(format('%s to %s', what, target), timeout);
        END IF;
        PERFORM pg_sleep(0.005);
    END LOOP;
END $fn$;

CREATE OR REPLACE FUNCTION fig.sync(timeout interval DEFAULT '30s') RETURNS pg_lsn
LANGUAGE sql AS $fn$
    SELECT fig._wait_cdc(NULL, 'fig.sync', timeout)
$fn$;

CREATE OR REPLACE FUNCTION fig.run_retention(timeout interval DEFAULT '1 hour')
RETURNS timestamptz
LANGUAGE plpgsql AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    ran timestamptz;
BEGIN
    PERFORM pg_advisory_lock_shared(@RETENTION@, 0);
    BEGIN
        LOOP
            SELECT retention_ran_at INTO ran FROM fig.cdc_state;
            EXIT WHEN ran >= started;
            IF clock_timestamp() > started + timeout THEN
                PERFORM fig._wait_error('fig.run_retention', timeout);
            END IF;
            PERFORM pg_sleep(0.02);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(@RETENTION@, 0);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(@RETENTION@, 0);
    RETURN ran;
END $fn$;

CREATE OR REPLACE FUNCTION fig.compact(rel text, timeout interval DEFAULT '300s')
RETURNS timestamptz LANGUAGE plpgsql AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    relid oid := rel::regclass;
    lock_key int := (relid::bigint % 2147483647)::int;
    done timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fig.tiered_tables WHERE table_oid = relid) THEN
        RAISE EXCEPTION 'fig.compact: % is not tiered', rel USING ERRCODE = 'undefined_table';
    END IF;
    PERFORM fig._authorize('fig.compact', relid::regclass);
    PERFORM pg_advisory_lock_shared(@COMPACT@, lock_key);
    BEGIN
        LOOP
            SELECT compacted_at INTO done FROM fig.table_status WHERE table_oid = relid;
            EXIT WHEN done >= started;
            IF clock_timestamp() > started + timeout THEN
                PERFORM fig._wait_error('fig.compact', timeout);
            END IF;
            PERFORM pg_sleep(0.05);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(@COMPACT@, lock_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(@COMPACT@, lock_key);
    RETURN done;
END $fn$;
"""

_COLD_WRITES = """
CREATE OR REPLACE FUNCTION fig.request_cold_write(rel regclass, kind text, staging text,
                                                  set_columns text[])
RETURNS TABLE (request bigint, cold_rows bigint) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex' AS $fn$
DECLARE
    tiered fig.tiered_tables;
    pk text[];
    cols text[];
    stage text := format('pg_temp.%I', staging);
    hot_match text;
    self_match text;
    n bigint;
    new_id bigint;
BEGIN
    SELECT * INTO tiered FROM fig.tiered_tables WHERE table_oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fig.request_cold_write: % is not tiered', rel
            USING ERRCODE = 'undefined_table';
    END IF;
    -- The caller's own privileges, as its statement needs them on Postgres: the function
    -- runs as its definer, so without this any role could change any table's cold rows.
    -- Table-level only: a column-level UPDATE grant cannot vouch for the whole staged row.
    IF kind NOT IN ('DELETE', 'UPDATE') OR NOT has_table_privilege(session_user, rel, kind)
       OR NOT has_table_privilege(session_user, rel, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', tiered.table_name
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('%s of rows in the cold tier needs table-level SELECT and %s '
                                  'privileges', kind, kind);
    END IF;
    IF (SELECT relrowsecurity FROM pg_class WHERE oid = rel) THEN
        RAISE EXCEPTION '% has row-level security: its cold rows cannot be written', rel
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk
    FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att
    WHERE i.indrelid = rel AND i.indisprimary;
    IF kind = 'UPDATE' AND set_columns && pk THEN
        RAISE EXCEPTION 'UPDATE of the primary key of % cannot reach rows in the cold tier', rel
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'delete the old rows and insert the new ones';
    END IF;
    SELECT array_agg(attname::text ORDER BY attnum) INTO cols FROM pg_attribute
    WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped;
    SELECT string_agg(format('h.%1$I = w.%1$I', c), ' AND '),
           string_agg(format('d.%1$I = w.%1$I', c), ' AND ') INTO hot_match, self_match
    FROM unnest(pk) AS c;
    -- Rows still in hot are changed there by the statement itself and reach cold through CDC.
    EXECUTE format('DELETE FROM %s w WHERE EXISTS (SELECT 1 FROM ONLY %s h WHERE %s)',
                   stage, rel, hot_match);
    -- UPDATE ... FROM may join a row more than once: Postgres changes it once.
    EXECUTE format('DELETE FROM %s w USING %s d WHERE w.ctid > d.ctid AND %s',
                   stage, stage, self_match);
    IF kind = 'UPDATE' THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NULL OR %I >= $1', stage,
                       tiered.time_column, tiered.time_column) INTO n USING tiered.boundary;
        IF n > 0 THEN
            RAISE EXCEPTION 'UPDATE would move % rows of % from the cold tier to or above its '
                'tier boundary (%)', n, rel, tiered.boundary
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'delete those rows and insert them again with the new time';
        END IF;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', stage) INTO n;
    IF n = 0 THEN
        RETURN QUERY SELECT NULL::bigint, 0::bigint;
        RETURN;
    END IF;
    INSERT INTO fig.cold_write_requests AS r (table_oid, kind, columns, row_count)
    VALUES (rel, kind, cols, n) RETURNING r.id INTO new_id;
    EXECUTE format('INSERT INTO fig.cold_write_rows (request_id, old_time, row_values) '
                   'SELECT $1, fig_old_time::text, ARRAY[%s] FROM %s',
                   (SELECT string_agg(format('%I::text', c), ', ') FROM unnest(cols) AS c),
                   stage) USING new_id;
    RETURN QUERY SELECT new_id, n;
END $fn$;

-- Also a late change (fig.late_changes): until the CDC process has applied the request,
-- federated statements over the table wait for it.
CREATE OR REPLACE FUNCTION fig.confirm_cold_write(request bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    rel oid;
BEGIN
    UPDATE fig.cold_write_requests SET confirmed = true
    WHERE id = request AND requested_by = session_user AND done_at IS NULL
    RETURNING table_oid INTO rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fig.confirm_cold_write: no pending request % of this role', request
            USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO fig.late_changes (table_oid, request_id) VALUES (rel, request);
END $fn$;

CREATE OR REPLACE FUNCTION fig.wait_cold_write(request bigint, timeout interval DEFAULT '300s')
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    lock_key int := (request % 2147483647)::int;
    found_row fig.cold_write_requests;
BEGIN
    PERFORM pg_advisory_lock_shared(@COLDWRITE@, lock_key);
    BEGIN
        LOOP
            SELECT * INTO found_row FROM fig.cold_write_requests WHERE id = request;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'fig.wait_cold_write: no request %', request
                    USING ERRCODE = 'undefined_object';
            END IF;
            IF found_row.requested_by <> session_user
               AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
                RAISE EXCEPTION 'fig.wait_cold_write: request % belongs to another role', request
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF NOT found_row.confirmed THEN
                RAISE EXCEPTION 'fig.wait_cold_write: request % was not confirmed by a '
                    'committed transaction', request
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            EXIT WHEN found_row.done_at IS NOT NULL;
            IF clock_timestamp() > started + timeout THEN
                RAISE EXCEPTION 'the change is committed in hot; its cold rows are not written '
                    'yet (request %)', request
                    USING ERRCODE = 'query_canceled',
                          DETAIL = coalesce('last attempt: ' || found_row.error,
                                            'is the CDC process running?'),
                          HINT = 'the CDC process goes on trying; fig.sync() waits for it';
            END IF;
            PERFORM pg_sleep(0.01);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(@COLDWRITE@, lock_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(@COLDWRITE@, lock_key);
    RETURN found_row.applied_rows;
END $fn$;
"""

_ATTACH = """
CREATE OR REPLACE FUNCTION fig._refuse_attached_write() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION '%.% is an attached Iceberg table: it is read-only', TG_TABLE_SCHEMA,
        TG_TABLE_NAME USING ERRCODE = 'feature_not_supported',
        HINT = 'write to the Iceberg table with an Iceberg writer';
END $fn$;

CREATE OR REPLACE FUNCTION fig.attach_iceberg(iceberg_table text, timeout interval DEFAULT '60s')
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    key_hash int := hashtext(iceberg_table);
    lock_key bigint := (@ATTACH@::bigint << 32) | (hashtext(iceberg_table)::bigint & 4294967295);
    found_row fig.iceberg_attachments;
BEGIN
    IF position('.' IN coalesce(iceberg_table, '')) = 0 THEN
        RAISE EXCEPTION 'fig.attach_iceberg: expected namespace.table, got %', iceberg_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM fig._authorize('fig.attach_iceberg', NULL);
    PERFORM pg_advisory_lock_shared(lock_key);
    BEGIN
        LOOP
            SELECT * INTO found_row FROM fig.iceberg_attachments
            WHERE name_hash = key_hash AND done_at >= started;
            EXIT WHEN FOUND;
            IF clock_timestamp() > started + timeout THEN
                PERFORM fig._wait_error('fig.attach_iceberg', timeout);
            END IF;
            PERFORM pg_sleep(0.02);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(lock_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(lock_key);
    IF found_row.error IS NOT NULL THEN
        RAISE EXCEPTION 'fig.attach_iceberg(%): %', iceberg_table, found_row.error
            USING ERRCODE = CASE WHEN found_row.name IS NULL THEN 'undefined_table'
                                 ELSE 'object_not_in_prerequisite_state' END;
    END IF;
    -- Fig's endpoints refresh their list of tiered tables every 0.5 s: until then they would
    -- read the empty shadow table. Return only once they know it.
    PERFORM pg_sleep(1.0);
    RETURN format('%s is attached: its rows are read from Iceberg', iceberg_table);
END $fn$;
"""

_DROP = """
CREATE OR REPLACE FUNCTION fig._untier_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    WITH gone AS (
        DELETE FROM fig.tiered_tables t USING pg_event_trigger_dropped_objects() d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = t.table_oid AND d.objsubid = 0
        RETURNING t.table_oid, t.schema_name, t.table_name, t.state)
    INSERT INTO fig.dropped_tables (table_oid, schema_name, table_name)
    SELECT table_oid, schema_name, table_name FROM gone WHERE state <> 'attached'
    ON CONFLICT (table_oid) DO NOTHING;
END $fn$;

DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'fig_untier_dropped') THEN
        CREATE EVENT TRIGGER fig_untier_dropped ON sql_drop
            EXECUTE FUNCTION fig._untier_dropped();
    END IF;
END $do$;
"""

# Schema changes of a tiered table that would leave its old rows in cold different from what
# Postgres would hold, however they reach the hot Postgres (through Fig, whose planner refuses
# them first; a direct session; a function; a DO block), are refused at the end of the
# command, which then rolls back: a column added with a value for existing rows (DEFAULT,
# NOT NULL, GENERATED, IDENTITY), a new column reusing a name the table's columns had (CDC
# matches Iceberg fields by name), a type change computed by USING, a rename of the table.
# What CDC follows in Iceberg (a column added without a default, RENAME COLUMN, DROP COLUMN,
# widening types) or pauses the table on (other type changes) goes through, and the column
# list is recorded. SET fig.unsafe_schema_change = on skips the check, for repairs.
_DDL_GUARD = """
CREATE OR REPLACE FUNCTION fig._guard_tiered_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    t record;
    problem text;
    retyped boolean;
BEGIN
    FOR t IN
        SELECT DISTINCT tt.table_oid, tt.schema_name, tt.table_name, tt.columns
        FROM pg_event_trigger_ddl_commands() c
        JOIN fig.tiered_tables tt ON tt.table_oid = c.objid
        WHERE c.classid = 'pg_class'::regclass AND tt.state <> 'attached'
    LOOP
        SELECT EXISTS (
            SELECT 1 FROM jsonb_to_recordset(t.columns) AS r(attnum int, type text,
                                                              former boolean)
            JOIN pg_attribute a ON a.attrelid = t.table_oid AND a.attnum = r.attnum
            WHERE r.former IS NOT TRUE AND NOT a.attisdropped
              AND format_type(a.atttypid, a.atttypmod) <> r.type)
        INTO retyped;
        SELECT string_agg(change, '; ') INTO problem FROM (
            SELECT format('renamed to %I.%I', n.nspname, c.relname) AS change
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = t.table_oid
              AND (c.relname <> t.table_name OR n.nspname <> t.schema_name)
            UNION ALL
            SELECT 'a column type changed with USING'
            WHERE retyped AND current_query() ~* '\\musing\\M'
            UNION ALL
            SELECT format('column %I added with a default, NOT NULL, GENERATED or IDENTITY',
                          a.attname)
            FROM pg_attribute a
            WHERE t.columns IS NOT NULL AND a.attrelid = t.table_oid AND a.attnum > 0
              AND NOT a.attisdropped
              AND (a.atthasdef OR a.attnotnull OR a.attgenerated <> '' OR a.attidentity <> '')
              AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(t.columns) AS r(attnum int)
                              WHERE r.attnum = a.attnum)
            UNION ALL
            SELECT format('column %I added with the name of an earlier column', a.attname)
            FROM pg_attribute a
            WHERE a.attrelid = t.table_oid AND a.attnum > 0 AND NOT a.attisdropped
              AND EXISTS (SELECT 1 FROM jsonb_to_recordset(t.columns) AS r(attnum int, name text)
                          WHERE r.name = a.attname AND r.attnum <> a.attnum)
        ) changes
        WHERE coalesce(current_setting('fig.unsafe_schema_change', true), '') <> 'on';
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'ALTER TABLE of the tiered table %.%: %: its rows in cold (Iceberg) '
                'would not follow', t.schema_name, t.table_name, problem
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Untier the table first (fig.untier_table), or add a column '
                             'without a default and SET DEFAULT afterwards.';
        END IF;
        -- the columns now, and every name a column had before (renamed or dropped)
        UPDATE fig.tiered_tables SET columns = fig._columns_of(t.table_oid) || coalesce((
            SELECT jsonb_agg(jsonb_build_object('attnum', r.attnum, 'name', r.name,
                                                'former', true))
            FROM jsonb_to_recordset(t.columns) AS r(attnum int, name text)
            WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.table_oid
                              AND a.attnum = r.attnum AND a.attname = r.name
                              AND NOT a.attisdropped)), '[]')
        WHERE table_oid = t.table_oid;
    END LOOP;
END $fn$;

DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'fig_guard_tiered_ddl') THEN
        CREATE EVENT TRIGGER fig_guard_tiered_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION fig._guard_tiered_ddl();
    END IF;
END $do$;
"""

# Late changes (fig_server/cdc/late.py): a change to a row below the tier boundary that is
# still in hot (a late backfill, an update or delete of one) reaches cold only through CDC,
# about a second later; until then the rewrite, which reads such rows from cold, would miss
# it. Triggers that fire only for those rows record the table in fig.late_changes in the
# writer's own transaction; a federated statement that sees a record waits for CDC first
# (fig.sync), and one that sees a record appear while it read cold fails with 40001
# (fig._late_hold); the CDC process removes records once Iceberg holds their changes.
_LATE = """
CREATE TABLE IF NOT EXISTS fig.late_changes (
    id bigserial PRIMARY KEY,
    table_oid oid NOT NULL,
    request_id bigint,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS late_changes_table ON fig.late_changes (table_oid);
-- The writer's transaction, and the records CDC applied, kept while a running transaction's
-- snapshot may not see them: a REPEATABLE READ transaction's first read of a table's cold
-- rows fails (fig._late_before_snapshot) when Iceberg may hold a change its snapshot does not.
ALTER TABLE fig.late_changes ADD COLUMN IF NOT EXISTS xid xid8 DEFAULT pg_current_xact_id();
CREATE TABLE IF NOT EXISTS fig.late_applied (
    table_oid oid NOT NULL,
    xid xid8,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Once per table and transaction (a transaction-local setting remembers it; a rolled back
-- savepoint forgets both the setting and the record).
CREATE OR REPLACE FUNCTION fig._late_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    IF current_setting('fig.late_' || TG_RELID, true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO fig.late_changes (table_oid) SELECT TG_RELID
    WHERE EXISTS (SELECT 1 FROM fig.tiered_tables WHERE table_oid = TG_RELID);
    PERFORM set_config('fig.late_' || TG_RELID, 'on', true);
    RETURN NULL;
END $fn$;

-- The triggers for a table's boundary, compared in the time column's own type as retention
-- deletes (in UTC; a date column's first day whose midnight is at or after the boundary).
-- Replaced by retention in the transaction that moves the boundary (it holds the table's
-- EXCLUSIVE lock; CREATE OR REPLACE TRIGGER takes SHARE ROW EXCLUSIVE, readers go on);
-- only_missing: made where the table has none yet (a boundary moved before this existed).
CREATE OR REPLACE FUNCTION fig._track_late(rel regclass, boundary timestamptz,
                                           only_missing boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    col text;
    kind text;
    utc timestamp := boundary AT TIME ZONE 'UTC';
    lit text;
BEGIN
    IF boundary IS NULL OR boundary = '-infinity' OR boundary = 'infinity' THEN
        RETURN;
    END IF;
    IF only_missing AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel
                                AND tgname = 'fig_late_insert') THEN
        RETURN;
    END IF;
    SELECT t.time_column, format_type(a.atttypid, NULL) INTO col, kind
    FROM fig.tiered_tables t JOIN pg_attribute a
      ON a.attrelid = t.table_oid AND a.attname = t.time_column AND NOT a.attisdropped
    WHERE t.table_oid = rel;
    lit := CASE kind
        WHEN 'date' THEN quote_literal(to_char(utc::date + CASE WHEN utc::time = '00:00'
                                                  THEN 0 ELSE 1 END, 'YYYY-MM-DD')) || '::date'
        WHEN 'timestamp without time zone'
            THEN quote_literal(to_char(utc, 'YYYY-MM-DD HH24:MI:SS.US')) || '::timestamp'
        ELSE quote_literal(to_char(utc, 'YYYY-MM-DD HH24:MI:SS.US') || '+00') || '::timestamptz'
    END;
    EXECUTE format('CREATE OR REPLACE TRIGGER fig_late_insert AFTER INSERT ON %s FOR EACH ROW '
                   'WHEN (NEW.%I < %s) EXECUTE FUNCTION fig._late_change()', rel, col, lit);
    EXECUTE format('CREATE OR REPLACE TRIGGER fig_late_update AFTER UPDATE ON %s FOR EACH ROW '
                   'WHEN (OLD.%I < %s OR NEW.%I < %s) EXECUTE FUNCTION fig._late_change()',
                   rel, col, lit, col, lit);
    EXECUTE format('CREATE OR REPLACE TRIGGER fig_late_delete AFTER DELETE ON %s FOR EACH ROW '
                   'WHEN (OLD.%I < %s) EXECUTE FUNCTION fig._late_change()', rel, col, lit);
    EXECUTE format('CREATE OR REPLACE TRIGGER fig_late_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fig._late_change()', rel);
END $fn$;

DROP FUNCTION IF EXISTS fig._late_wait(oid[], interval);

-- In a REPEATABLE READ or SERIALIZABLE transaction, right after Fig loaded a table's Iceberg
-- metadata for the transaction's first read of its cold rows: xids are the writers of every
-- late change of the table CDC has not applied, or applied recently (read in a fresh snapshot,
-- after that load). One the transaction's snapshot does not see may be in the cold rows, which
-- must be as of that snapshot: the read fails as a serialization failure would.
CREATE OR REPLACE FUNCTION fig._late_before_snapshot(rel oid, xids xid8[]) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(xids) x
               WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot())) THEN
        RAISE EXCEPTION 'rows of % older than its tier boundary changed after this '
                        'transaction took its snapshot, and its cold rows may hold the change',
                        rel::regclass
            USING ERRCODE = 'serialization_failure', HINT = 'Run the transaction again.';
    END IF;
    RETURN true;
END $fn$;

-- On the branch of every federated statement that reads a part's cold rows (planner/parts.py
-- late_guard): no late change of the table is visible to the statement but those Fig saw,
-- and waited for, before it read the cold rows; and the statement's own transaction changed
-- none of its rows below the boundary (an earlier statement of the same simple Query or
-- transaction block: cold holds those only once it commits).
-- PARALLEL RESTRICTED (as fig._bounds_hold): evaluated by the leader, where the temp table is
-- read anyway; the default, UNSAFE, would keep Postgres from scanning the hot rows of the
-- statement in parallel (measured: a GROUP BY over 5M hot rows, 0.69 s -> 1.5 s).
CREATE OR REPLACE FUNCTION fig._late_hold(rel oid, seen bigint[]) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog
AS $fn$
BEGIN
    IF current_setting('fig.late_' || rel, true) = 'on' THEN
        RAISE EXCEPTION 'a statement reading the cold rows of % after its transaction changed '
                        'rows of it older than the tier boundary is not supported', rel::regclass
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'cold holds them only once the transaction commits: COMMIT first';
    END IF;
    IF EXISTS (SELECT 1 FROM fig.late_changes WHERE table_oid = rel AND id <> ALL (seen)) THEN
        RAISE EXCEPTION 'rows of % older than its tier boundary changed while Fig read its '
                        'cold rows', rel::regclass
            USING ERRCODE = 'serialization_failure', HINT = 'Run the statement again.';
    END IF;
    RETURN true;
END $fn$;
"""

# Called by Fig's rewritten statements (planner/bounds.py GUARD): a date Fig computed from the
# clock before reading cold rows must still be the statement's own.
_GUARDS = """
CREATE OR REPLACE FUNCTION fig._bounds_hold(unchanged boolean) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog AS $fn$
BEGIN
    IF unchanged IS NOT TRUE THEN
        RAISE EXCEPTION 'the date this statement compares with changed while Fig read its '
                        'cold rows (the clock passed midnight)'
            USING ERRCODE = 'serialization_failure', HINT = 'Run the statement again.';
    END IF;
    RETURN true;
END $fn$;
"""

_VIEWS = """
CREATE OR REPLACE VIEW fig.tables AS
SELECT format('%I.%I', t.schema_name, t.table_name) AS table_name,
       t.time_column, t.hot_retention, t.boundary AS tier_boundary, t.state,
       s.cold_rows, s.cold_files, s.cold_bytes, s.cold_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.cold_lsn) AS cdc_lag_bytes,
       s.last_commit_at,
       s.copied_rows, s.copy_total_rows, s.copy_rows_per_s,
       CASE WHEN t.state = 'copying' AND s.copy_rows_per_s > 0
            THEN make_interval(secs => greatest(s.copy_total_rows - s.copied_rows, 0)
                                       / s.copy_rows_per_s) END AS copy_eta,
       s.last_error
FROM fig.tiered_tables t LEFT JOIN fig.table_status s USING (table_oid);

CREATE OR REPLACE VIEW fig.cdc_status AS
SELECT c.slot_name, r.active AS slot_active, r.confirmed_flush_lsn,
       pg_current_wal_lsn() AS current_wal_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn) AS lag_bytes,
       CASE WHEN r.confirmed_flush_lsn >= pg_current_wal_lsn() THEN 0
            ELSE extract(epoch FROM now() - coalesce(c.last_commit_ts, c.updated_at))
       END AS lag_seconds,
       c.rows_per_s, c.rows_total, c.last_commit_at, c.pid, c.updated_at AS heartbeat_at,
       c.last_error, c.last_error_at,
       (SELECT string_agg(format('%s.%s', schema_name, table_name), ', ')
        FROM fig.tiered_tables WHERE state = 'paused') AS paused_tables
FROM fig.cdc_state c LEFT JOIN pg_replication_slots r ON r.slot_name = c.slot_name;
"""


def control_sql() -> str:
    """The whole control schema as one idempotent script."""
    types = "ARRAY[" + ", ".join(f"'{name}'" for name in SUPPORTED_TYPES) + "]"
    script = (_TABLES + _AUTHORIZE + _CHECK_COLUMNS + _TIER + _SYNC + _COLD_WRITES + _ATTACH
              + _DROP + _DDL_GUARD + _GUARDS + _LATE + _VIEWS)
    for token, value in (("@TYPES@", types), ("@RETENTION@", str(RETENTION_LOCK)),
                         ("@COMPACT@", str(COMPACT_LOCK)),
                         ("@COLDWRITE@", str(COLD_WRITE_LOCK)),
                         ("@ATTACH@", str(ATTACH_LOCK)), ("@UNTIER@", str(UNTIER_LOCK))):
        script = script.replace(token, value)
    return script


def install_control_schema(dsn: str) -> None:
    """Create or update schema `fig` in the hot Postgres (idempotent)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(7200)")
        try:
            with conn.transaction():
                conn.execute(control_sql().encode())
        finally:
            conn.execute("SELECT pg_advisory_unlock(7200)")
