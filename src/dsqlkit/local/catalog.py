"""Objects the endpoint keeps in the backend database: the roles, DSQL's ``sys`` schema, the
endpoint's own schema, and the triggers that enforce DSQL's per-transaction limits.

**Roles.** No client ever runs as a PostgreSQL superuser:

* ``admin`` (every session of DSQL's ``admin``) has exactly DSQL's admin powers: it owns and
  grants the objects it creates, creates schemas and roles (``CREATEROLE``, so PostgreSQL 16
  gives it the ADMIN option on each role it creates, and on roles that existed before), and
  is the only role ``AWS IAM GRANT`` accepts. It is not a superuser, has no REPLICATION,
  BYPASSRLS or CREATEDB, and no predefined ``pg_*`` role, so files, programs, other roles'
  data, the catalogs and the server's configuration are out of its reach, as on DSQL.
* Other roles log in only through an IAM mapping and have what they are granted.
* ``dsqlkit_endpoint`` (no login, no member, no superuser) owns the endpoint's bookkeeping:
  the schema ``dsqlkit_internal`` (its tables and functions; no client has USAGE on it), and
  ``sys``, which holds DSQL's own objects only (``sys.jobs``, ``sys.iam_pg_role_mappings``,
  ``sys.wait_for_job``, ``sys.current_session_id``). Its privileged functions are SECURITY
  DEFINER functions of this role; the one thing it may do to the catalogs is set
  ``pg_index.indisvalid``. The event trigger that puts the limit triggers on new tables is
  the only superuser-owned piece (PostgreSQL requires an event trigger's owner to be one).

**How a client's session reaches the bookkeeping.** The endpoint rewrites ``CREATE INDEX
ASYNC`` / ``ALTER TABLE ASYNC`` into an ``INSERT INTO sys.jobs`` and ``AWS IAM GRANT/REVOKE``
into an ``INSERT INTO sys.iam_pg_role_mappings``. A rule on each view turns the INSERT into
calls of functions in ``dsqlkit_internal``, bound by OID when the rule was created, so they
run without the caller having USAGE on that schema, and no client can name them. Every such
request carries an HMAC-SHA256 of its fields under a key only ``dsqlkit_endpoint`` can read
(:func:`sign`); a client sending the same INSERT with other fields is answered as PostgreSQL
answers a role without INSERT privilege. The index build itself runs as the caller (an
invoker's function), the bookkeeping as ``dsqlkit_endpoint``, and the job later runs on a
connection logged in as the role that submitted it.

**Limits.** They live in the backend, not in the proxy, because only the backend can refuse
the statement that crosses a limit atomically, including in autocommit mode where the proxy
would otherwise see the row count only after the rows were committed:

* every user table gets three statement-level triggers (INSERT, UPDATE, DELETE) that add
  the rows the statement changed, and their size, to a transaction-local setting (tagged
  with the transaction's id, so a default set for a role or a database cannot pose as a
  count); DSQL caps a transaction at 3,000 changed rows (54000 at the crossing statement);
* the first time a transaction's changes pass 10 MiB it queues a deferred constraint
  trigger, so the error comes at COMMIT, where DSQL reports it.

Created idempotently at every start, in one transaction under an advisory lock (endpoints
may share a backend), so an older data directory is upgraded in place: the objects catalog
version 3 kept in ``sys`` move to ``dsqlkit_internal`` (the limit triggers on existing tables
keep pointing at them), ``admin`` stops being a superuser, and roles a client reached
through it lose what DSQL would not have given them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading

import psycopg

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local.backend import BackendAddress

log = logging.getLogger(__name__)

ROW_LIMIT = 3000
SIZE_LIMIT = 10 * 1024 * 1024
CATALOG_VERSION = "4"

ADMIN_ROLE = "admin"
ENDPOINT_ROLE = "dsqlkit_endpoint"
INTERNAL_SCHEMA = "dsqlkit_internal"
# Roles a client may never log in as, whatever the backend says about them.
RESERVED_ROLES = frozenset({ENDPOINT_ROLE})

_TRIGGERS = ("dsqlkit_limits_insert", "dsqlkit_limits_update", "dsqlkit_limits_delete")
_LOCK_KEY = 0x64_73_71_6C  # "dsql": serialises the bootstraps of endpoints sharing a backend
_I = INTERNAL_SCHEMA
_SECDEF = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"

# Catalog version 3 kept these in sys, where any role could call them.
_MOVED_TABLES = ("dsqlkit_oversize", "dsqlkit_jobs", "dsqlkit_iam_mappings")
_MOVED_FUNCTIONS = (
    "dsqlkit_oversize_at_commit()", "dsqlkit_count(bigint, bigint)", "dsqlkit_count_new()",
    "dsqlkit_count_old()", "dsqlkit_add_limit_triggers(regclass)", "dsqlkit_on_create_table()",
)
_DROPPED_FUNCTIONS = (
    "sys.dsqlkit_record_job(text, text, text, text, text, text, oid)",
    "sys.dsqlkit_submit_job(text, text, text, text, text)",
    "sys.dsqlkit_iam(text, text, text)",
)

ROLES = [
    f"""DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ENDPOINT_ROLE}') THEN
           CREATE ROLE {ENDPOINT_ROLE} NOLOGIN;
         END IF;
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ADMIN_ROLE}') THEN
           CREATE ROLE {ADMIN_ROLE} LOGIN;
         END IF;
       END $$""",
    f"ALTER ROLE {ENDPOINT_ROLE} NOSUPERUSER NOCREATEDB NOCREATEROLE NOLOGIN NOREPLICATION "
    "NOBYPASSRLS PASSWORD NULL",
    f"ALTER ROLE {ADMIN_ROLE} NOSUPERUSER NOCREATEDB CREATEROLE LOGIN NOREPLICATION "
    "NOBYPASSRLS INHERIT",
    # Nobody may act as the endpoint's role: a client-created role of that name (an older
    # data directory) loses its members, and the ADMIN option its creator got.
    f"""DO $$ DECLARE m record; BEGIN
         FOR m IN SELECT member::regrole AS member, grantor::regrole AS grantor
                    FROM pg_auth_members WHERE roleid = '{ENDPOINT_ROLE}'::regrole LOOP
           EXECUTE format('REVOKE {ENDPOINT_ROLE} FROM %s GRANTED BY %s CASCADE',
                          m.member, m.grantor);
         END LOOP;
       END $$""",
]

DATABASE = [
    # admin creates schemas (DSQL: a non-admin CREATE SCHEMA is "permission denied for
    # database postgres") and objects in public; nobody else does, and DSQL has no temporary
    # objects (a pg_temp schema would also let a session shadow relations by name).
    f"""DO $$ BEGIN
         EXECUTE format('GRANT CREATE, CONNECT ON DATABASE %I TO {ADMIN_ROLE}',
                        current_database());
         EXECUTE format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM PUBLIC',
                        current_database());
       END $$""",
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    f"GRANT USAGE, CREATE ON SCHEMA public TO {ADMIN_ROLE}",
    # DSQL refuses PL/pgSQL (and every language but SQL); refusing it in the backend too
    # leaves clients no dynamic SQL (EXECUTE) to get round the endpoint's statement rules.
    "REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC",
    f"GRANT USAGE ON LANGUAGE plpgsql TO {ENDPOINT_ROLE}",
    # UPDATE pg_settings is set_config() by another name.
    "REVOKE UPDATE ON pg_catalog.pg_settings FROM PUBLIC",
    # Marking an asynchronous index invalid until its job is done (see the job functions).
    f"GRANT UPDATE (indisvalid) ON pg_catalog.pg_index TO {ENDPOINT_ROLE}",
    f"CREATE SCHEMA IF NOT EXISTS {_I} AUTHORIZATION {ENDPOINT_ROLE}",
    f"ALTER SCHEMA {_I} OWNER TO {ENDPOINT_ROLE}",
    f"REVOKE ALL ON SCHEMA {_I} FROM PUBLIC",
    f"COMMENT ON SCHEMA {_I} IS 'dsqlkit local catalog {CATALOG_VERSION}: the endpoint''s "
    "own objects, not part of DSQL'",
    f"CREATE SCHEMA IF NOT EXISTS sys AUTHORIZATION {ENDPOINT_ROLE}",
    f"ALTER SCHEMA sys OWNER TO {ENDPOINT_ROLE}",
    "REVOKE ALL ON SCHEMA sys FROM PUBLIC",
    "GRANT USAGE ON SCHEMA sys TO PUBLIC",
]

UPGRADE = [
    # Off while its function is replaced (it is back on before this transaction commits, so
    # no other session sees it off).
    """DO $$ BEGIN
         IF EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'dsqlkit_limits') THEN
           ALTER EVENT TRIGGER dsqlkit_limits DISABLE;
         END IF;
       END $$""",
    *(f"""DO $$ BEGIN
           IF to_regclass('sys.{t}') IS NOT NULL AND to_regclass('{_I}.{t}') IS NULL THEN
             ALTER TABLE sys.{t} SET SCHEMA {_I};
           END IF;
         END $$""" for t in _MOVED_TABLES),
    # Functions move (rather than being made again) because the limit triggers on existing
    # tables and the event trigger point at them.
    *(f"""DO $$ BEGIN
           IF to_regprocedure('sys.{f}') IS NOT NULL
              AND to_regprocedure('{_I}.{f}') IS NULL THEN
             ALTER FUNCTION sys.{f} SET SCHEMA {_I};
           END IF;
         END $$""" for f in _MOVED_FUNCTIONS),
    *(f"DROP FUNCTION IF EXISTS {f}" for f in _DROPPED_FUNCTIONS),
]

TABLES = [
    # One row per transaction that passed the size limit; the deferred trigger on it fires at
    # COMMIT. The row never survives: the trigger fails the commit that would keep it.
    f"""CREATE TABLE IF NOT EXISTS {_I}.dsqlkit_oversize (
         txid xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
         megabytes bigint NOT NULL)""",
    # DSQL's background jobs (CREATE INDEX ASYNC, ALTER TABLE ASYNC ... VALIDATE). The
    # endpoint's job runner (dsqlkit.local.jobs) LISTENs for submissions and runs them.
    f"""CREATE TABLE IF NOT EXISTS {_I}.dsqlkit_jobs (
         job_id text PRIMARY KEY,
         status text NOT NULL DEFAULT 'submitted',
         details text,
         job_type text NOT NULL,
         class_id oid,
         object_id oid,
         object_name text,
         start_time timestamptz NOT NULL DEFAULT now(),
         update_time timestamptz NOT NULL DEFAULT now(),
         relation text,
         statement text NOT NULL)""",
    # What the submission did: 'built', the index exists (invalid until the job marks it
    # valid); 'exists', IF NOT EXISTS found one; NULL, the job runs the statement.
    f"ALTER TABLE {_I}.dsqlkit_jobs ADD COLUMN IF NOT EXISTS prepared text",
    # The role that submitted the job: the runner runs the statement logged in as that role.
    f"ALTER TABLE {_I}.dsqlkit_jobs ADD COLUMN IF NOT EXISTS submitted_by name",
    # Only while a submission is in flight: the statement the caller builds at once.
    f"ALTER TABLE {_I}.dsqlkit_jobs ADD COLUMN IF NOT EXISTS inline_statement text",
    # IAM role mappings (AWS IAM GRANT / REVOKE): which IAM principals may log in as a role.
    f"""CREATE TABLE IF NOT EXISTS {_I}.dsqlkit_iam_mappings (
         iam_oid bigint GENERATED ALWAYS AS IDENTITY,
         arn text NOT NULL,
         pg_role_oid oid NOT NULL,
         grantor_pg_role_oid oid NOT NULL,
         PRIMARY KEY (arn, pg_role_oid))""",
    # The request key: HMAC-SHA256's inner and outer padded keys (see sign()).
    f"""CREATE TABLE IF NOT EXISTS {_I}.dsqlkit_keys (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         ipad bytea NOT NULL CHECK (length(ipad) = 64),
         opad bytea NOT NULL CHECK (length(opad) = 64))""",
    *(f"ALTER TABLE {_I}.{t} OWNER TO {ENDPOINT_ROLE}"
      for t in (*_MOVED_TABLES, "dsqlkit_keys")),
    *(f"REVOKE ALL ON {_I}.{t} FROM PUBLIC" for t in (*_MOVED_TABLES, "dsqlkit_keys")),
    # Triggers and rules only the endpoint puts on its tables (an older data directory let a
    # superuser admin add its own, which would run in the endpoint's name).
    f"""DO $$ DECLARE t record; BEGIN
         FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger
                   WHERE tgrelid IN (SELECT c.oid FROM pg_class c
                                      WHERE c.relnamespace = '{_I}'::regnamespace)
                     AND NOT tgisinternal AND tgname <> 'dsqlkit_oversize_check' LOOP
           EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
         END LOOP;
         FOR t IN SELECT r.rulename, r.ev_class::regclass AS rel FROM pg_rewrite r
                   JOIN pg_class c ON c.oid = r.ev_class
                   WHERE c.relnamespace IN ('{_I}'::regnamespace, 'sys'::regnamespace)
                     AND r.rulename NOT IN ('_RETURN', 'dsqlkit_submit', 'dsqlkit_iam') LOOP
           EXECUTE format('DROP RULE %I ON %s', t.rulename, t.rel);
         END LOOP;
       END $$""",
]

LIMITS = [
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_oversize_at_commit() RETURNS trigger
       LANGUAGE plpgsql {_SECDEF} AS $$
       BEGIN
         RAISE EXCEPTION USING ERRCODE = '54000',
           MESSAGE = 'transaction size limit 10mb exceeded',
           DETAIL = format('Current transaction size %smb > 10mb', NEW.megabytes);
       END $$""",
    f"""DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'dsqlkit_oversize_check'
                          AND tgrelid = '{_I}.dsqlkit_oversize'::regclass) THEN
           CREATE CONSTRAINT TRIGGER dsqlkit_oversize_check AFTER INSERT
             ON {_I}.dsqlkit_oversize DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION {_I}.dsqlkit_oversize_at_commit();
         END IF;
       END $$""",
    # The counts live in one transaction-local setting, 'xid:rows:bytes:oversize'; a value
    # from another transaction (a default set with ALTER ROLE ... SET) counts as nothing.
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_count(changed bigint, bytes bigint)
       RETURNS void LANGUAGE plpgsql {_SECDEF} AS $$
       DECLARE
         tx text := pg_current_xact_id()::text;
         v text[] := string_to_array(coalesce(current_setting('dsqlkit.limits', true), ''),
                                     ':');
         n bigint := changed;
         b bigint := bytes;
         over boolean := false;
       BEGIN
         IF cardinality(v) = 4 AND v[1] = tx THEN
           n := n + v[2]::bigint;
           b := b + v[3]::bigint;
           over := v[4] = 't';
         END IF;
         IF n > {ROW_LIMIT} THEN
           RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
         END IF;
         IF b > {SIZE_LIMIT} AND NOT over THEN
           INSERT INTO {_I}.dsqlkit_oversize (megabytes) VALUES (ceil(b / 1048576.0)::bigint);
           over := true;
         ELSIF b > {SIZE_LIMIT} THEN
           UPDATE {_I}.dsqlkit_oversize SET megabytes = ceil(b / 1048576.0)::bigint
             WHERE txid = pg_current_xact_id();
         END IF;
         PERFORM set_config('dsqlkit.limits', format('%s:%s:%s:%s', tx, n, b,
                                                     CASE WHEN over THEN 't' ELSE 'f' END),
                            true);
       END $$""",
    # SECURITY DEFINER: the DML's role has no USAGE on the endpoint's schema. Transition
    # tables carry no privileges of their own.
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_count_new() RETURNS trigger
       LANGUAGE plpgsql {_SECDEF} AS $$
       BEGIN
         PERFORM {_I}.dsqlkit_count(
           (SELECT count(*) FROM dsqlkit_new),
           (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM dsqlkit_new t));
         RETURN NULL;
       END $$""",
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_count_old() RETURNS trigger
       LANGUAGE plpgsql {_SECDEF} AS $$
       BEGIN
         PERFORM {_I}.dsqlkit_count(
           (SELECT count(*) FROM dsqlkit_old),
           (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM dsqlkit_old t));
         RETURN NULL;
       END $$""",
    # Run by the bootstrap and the event trigger, both as a superuser: the triggers go on
    # tables of any owner.
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_add_limit_triggers(rel regclass)
       RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
       BEGIN
         IF NOT EXISTS (SELECT FROM pg_trigger
                        WHERE tgrelid = rel AND tgname = 'dsqlkit_limits_insert') THEN
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_insert AFTER INSERT ON %s '
             'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
             'EXECUTE FUNCTION {_I}.dsqlkit_count_new()', rel);
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_update AFTER UPDATE ON %s '
             'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
             'EXECUTE FUNCTION {_I}.dsqlkit_count_new()', rel);
           EXECUTE format('CREATE TRIGGER dsqlkit_limits_delete AFTER DELETE ON %s '
             'REFERENCING OLD TABLE AS dsqlkit_old FOR EACH STATEMENT '
             'EXECUTE FUNCTION {_I}.dsqlkit_count_old()', rel);
         END IF;
       END $$""",
    # The one superuser-owned function (an event trigger's owner must be a superuser). Its
    # only input is PostgreSQL's list of the tables a statement created; it cannot be called.
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_on_create_table() RETURNS event_trigger
       LANGUAGE plpgsql {_SECDEF} AS $$
       DECLARE obj record;
       BEGIN
         FOR obj IN SELECT * FROM pg_event_trigger_ddl_commands()
                    WHERE object_type = 'table'
                      AND schema_name NOT IN ('sys', '{_I}', 'pg_catalog',
                                              'information_schema')
                      AND schema_name NOT LIKE 'pg_temp%' LOOP
           PERFORM {_I}.dsqlkit_add_limit_triggers(obj.objid::regclass);
         END LOOP;
       END $$""",
    f"""DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'dsqlkit_limits') THEN
           CREATE EVENT TRIGGER dsqlkit_limits ON ddl_command_end
             WHEN TAG IN ('CREATE TABLE')
             EXECUTE FUNCTION {_I}.dsqlkit_on_create_table();
         END IF;
       END $$""",
    "ALTER EVENT TRIGGER dsqlkit_limits ENABLE",
]

# HMAC-SHA256 over length-prefixed fields, as sign() computes it (in base64, which leaves an
# IAM request room in a column of type name): SECURITY DEFINER, since
# only the endpoint's role can read the key. A request that fails it is answered as
# PostgreSQL answers an INSERT without privilege on the view.
REQUESTS = [
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_verify(view_name text, fields text[],
         mac text) RETURNS void LANGUAGE plpgsql {_SECDEF} AS $$
       DECLARE
         msg text := '';
         f text;
         k {_I}.dsqlkit_keys%ROWTYPE;
       BEGIN
         FOREACH f IN ARRAY fields LOOP
           msg := msg || CASE WHEN f IS NULL THEN '-:'
                              ELSE octet_length(f)::text || ':' || f END;
         END LOOP;
         SELECT * INTO k FROM {_I}.dsqlkit_keys;
         IF mac IS NULL OR k.opad IS NULL OR mac <> encode(sha256(k.opad || sha256(
              k.ipad || convert_to(msg, 'UTF8'))), 'base64') THEN
           RAISE EXCEPTION USING ERRCODE = '42501',
             MESSAGE = format('permission denied for view %s', view_name);
         END IF;
       END $$""",
    # 1. The request, checked, as the row it will become; submitted_by is the session's
    # login role, which no SQL can change.
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_job_request(id text, kind text,
         name text, details text) RETURNS {_I}.dsqlkit_jobs
       LANGUAGE plpgsql {_SECDEF} AS $$
       DECLARE
         d jsonb;
         j {_I}.dsqlkit_jobs;
       BEGIN
         BEGIN
           d := details::jsonb;
         EXCEPTION WHEN OTHERS THEN
           d := NULL;
         END;
         IF d IS NULL OR jsonb_typeof(d) <> 'object' THEN
           d := '{{}}';
         END IF;
         PERFORM {_I}.dsqlkit_verify('jobs', ARRAY['job', id, kind, name,
           d->>'inline', d->>'statement', d->>'relation'], d->>'mac');
         IF kind NOT IN ('INDEX_BUILD', 'VALIDATE_CONSTRAINT') OR d->>'statement' IS NULL THEN
           RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'permission denied for view jobs';
         END IF;
         j.job_id := id;
         j.status := 'submitted';
         j.job_type := kind;
         j.class_id := 1259;
         j.object_name := name;
         j.start_time := now();
         j.update_time := now();
         j.relation := d->>'relation';
         j.statement := d->>'statement';
         j.inline_statement := d->>'inline';
         j.submitted_by := session_user;
         RETURN j;
       END $$""",
    # 2. The build, as the caller: its privileges and its search_path, for a statement the
    # endpoint wrote. DSQL lists the index in the catalog as soon as the statement's
    # transaction commits (invalid until built), so it is built here, in that transaction;
    # when that fails (a duplicate key, a missing column...) the job builds it with CREATE
    # INDEX CONCURRENTLY and reports the failure as DSQL does. Notices (IF NOT EXISTS) stay
    # out of the answer. A build here holds a SHARE lock on the table until the transaction
    # ends: writers wait for it, as they would for a plain CREATE INDEX (see docs/local.md).
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_job_built(j {_I}.dsqlkit_jobs)
       RETURNS {_I}.dsqlkit_jobs
       LANGUAGE plpgsql SECURITY INVOKER SET client_min_messages = warning AS $$
       DECLARE
         rel regclass;
         existing oid[];
         made oid;
         found oid;
       BEGIN
         -- dsqlkit.inline_index_builds = off (set on a role or the database, in the
         -- backend) leaves every build to the job, as CREATE INDEX CONCURRENTLY.
         IF j.job_type = 'INDEX_BUILD' AND j.inline_statement IS NOT NULL
            AND coalesce(nullif(pg_catalog.current_setting('dsqlkit.inline_index_builds',
                                                            true), ''), 'on') <> 'off' THEN
           rel := pg_catalog.to_regclass(j.relation);
         END IF;
         IF rel IS NOT NULL THEN
           existing := ARRAY(SELECT i.indexrelid FROM pg_catalog.pg_index i
                              WHERE i.indrelid = rel);
           BEGIN
             EXECUTE j.inline_statement;
             SELECT i.indexrelid INTO made FROM pg_catalog.pg_index i
              WHERE i.indrelid = rel AND i.indexrelid <> ALL (existing);
             IF made IS NOT NULL THEN
               j.prepared := 'built';
             ELSE
               SELECT c.oid INTO found FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index i
                   ON i.indexrelid = c.oid
                WHERE i.indrelid = rel AND c.relname = j.object_name;
               j.prepared := CASE WHEN found IS NOT NULL THEN 'exists' END;
             END IF;
           EXCEPTION
             WHEN insufficient_privilege THEN RAISE;
             WHEN OTHERS THEN
               made := NULL;
               found := NULL;
               j.prepared := NULL;
           END;
         END IF;
         j.object_id := coalesce(made, found);
         RETURN j;
       END $$""",
    # 3. The bookkeeping, as the endpoint's role. It marks an index invalid only on a table
    # the caller's login role may act as the owner of, and only an index that is valid now
    # (so a broken one can never be made valid by its job).
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_job_recorded(j {_I}.dsqlkit_jobs)
       RETURNS {_I}.dsqlkit_jobs LANGUAGE plpgsql {_SECDEF} AS $$
       BEGIN
         IF j.prepared IS NOT NULL AND (j.prepared NOT IN ('built', 'exists') OR NOT EXISTS (
              SELECT FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
               WHERE i.indexrelid = j.object_id
                 AND pg_has_role(session_user, t.relowner, 'USAGE')
                 AND (j.prepared <> 'built' OR (i.indisvalid AND i.indisready)))) THEN
           RAISE EXCEPTION USING ERRCODE = '42501',
             MESSAGE = 'must be owner of the index''s table';
         END IF;
         IF j.prepared = 'built' THEN
           UPDATE pg_index SET indisvalid = false WHERE indexrelid = j.object_id;
         END IF;
         IF j.prepared IS NULL THEN
           j.object_id := NULL;
         ELSE
           j.object_name := (SELECT relname FROM pg_class WHERE oid = j.object_id);
         END IF;
         j.inline_statement := NULL;
         PERFORM pg_notify('dsqlkit_jobs', j.job_id);
         RETURN j;
       END $$""",
    f"""CREATE OR REPLACE FUNCTION {_I}.dsqlkit_iam(role_name text, arn text, request text)
       RETURNS void LANGUAGE plpgsql {_SECDEF} AS $$
       DECLARE
         r pg_roles%ROWTYPE;
         action text := split_part(request, ':', 1);
       BEGIN
         PERFORM {_I}.dsqlkit_verify('iam_pg_role_mappings',
           ARRAY['iam', action, role_name, arn], split_part(request, ':', 2));
         IF session_user <> '{ADMIN_ROLE}' THEN
           RAISE EXCEPTION USING ERRCODE = '42501',
             MESSAGE = format('permission denied to grant IAM trust with role %s', role_name);
         END IF;
         SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
         IF NOT FOUND THEN
           RAISE EXCEPTION USING ERRCODE = '42704',
             MESSAGE = format('IAM role %s does not exist', role_name);
         END IF;
         IF action = 'grant' THEN
           IF NOT r.rolcanlogin THEN
             RAISE EXCEPTION USING ERRCODE = '42501',
               MESSAGE = format('role %s must have the LOGIN attribute', role_name);
           END IF;
           -- DSQL has no role with more than admin's powers: none may be mapped.
           IF r.rolsuper OR r.rolreplication OR r.rolbypassrls
              OR role_name = '{ENDPOINT_ROLE}' OR role_name LIKE 'pg\\_%' THEN
             RAISE EXCEPTION USING ERRCODE = '42501',
               MESSAGE = format('permission denied to grant IAM trust with role %s',
                                role_name);
           END IF;
           INSERT INTO {_I}.dsqlkit_iam_mappings (arn, pg_role_oid, grantor_pg_role_oid)
             SELECT arn, r.oid, (SELECT oid FROM pg_roles WHERE rolname = session_user)
             ON CONFLICT DO NOTHING;
         ELSE
           DELETE FROM {_I}.dsqlkit_iam_mappings m
             WHERE m.arn = dsqlkit_iam.arn AND m.pg_role_oid = r.oid;
         END IF;
       END $$""",
]

SYS = [
    f"""CREATE OR REPLACE VIEW sys.jobs AS
       SELECT job_id, status, details, job_type, class_id, object_id, object_name,
              start_time, update_time
         FROM {_I}.dsqlkit_jobs""",
    f"""CREATE OR REPLACE VIEW sys.iam_pg_role_mappings AS
       SELECT m.iam_oid::oid AS iam_oid, m.arn, m.pg_role_oid, r.rolname AS pg_role_name,
              m.grantor_pg_role_oid, g.rolname AS grantor_pg_role_name
         FROM {_I}.dsqlkit_iam_mappings m
         JOIN pg_roles r ON r.oid = m.pg_role_oid
         LEFT JOIN pg_roles g ON g.oid = m.grantor_pg_role_oid""",
    # The submission: one expression whose steps run in order (check, build as the caller,
    # bookkeeping); OFFSET 0 keeps it from being evaluated once per column.
    f"""CREATE OR REPLACE RULE dsqlkit_submit AS ON INSERT TO sys.jobs DO INSTEAD
       INSERT INTO {_I}.dsqlkit_jobs
       SELECT (s.j).* FROM (
         SELECT {_I}.dsqlkit_job_recorded({_I}.dsqlkit_job_built({_I}.dsqlkit_job_request(
                  new.job_id, new.job_type, new.object_name, new.details))) AS j
         OFFSET 0) s
       RETURNING job_id, status, details, job_type, class_id, object_id, object_name,
                 start_time, update_time""",
    f"""CREATE OR REPLACE RULE dsqlkit_iam AS ON INSERT TO sys.iam_pg_role_mappings
       DO INSTEAD SELECT {_I}.dsqlkit_iam(new.pg_role_name, new.arn,
                                          new.grantor_pg_role_name)""",
    """CREATE OR REPLACE FUNCTION sys.current_session_id() RETURNS text
       LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
       -- DSQL's session id, read as text by every client of it; 26 characters of the
       -- alphabet of DSQL's other ids, derived from what makes a backend session unique.
       SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz234567', get_byte(h, i) % 32 + 1, 1),
                         '' ORDER BY i)
         FROM (SELECT sha256(convert_to(format('%s/%s/%s', pg_backend_pid(),
                 (SELECT extract(epoch FROM a.backend_start)
                    FROM pg_stat_get_activity(pg_backend_pid()) a),
                 extract(epoch FROM pg_postmaster_start_time())), 'UTF8')) AS h) AS s,
              generate_series(0, 25) AS i
       $$""",
    # DSQL's procedure: CALL sys.wait_for_job('id') waits and says whether the job succeeded.
    # Committing between polls gives each poll a fresh snapshot.
    """CREATE OR REPLACE PROCEDURE sys.wait_for_job(job_id text, INOUT succeeded boolean
         DEFAULT NULL) LANGUAGE plpgsql AS $$
       DECLARE st text;
       BEGIN
         LOOP
           SELECT j.status INTO st FROM sys.jobs j WHERE j.job_id = wait_for_job.job_id;
           IF st IS NULL THEN
             RAISE EXCEPTION USING ERRCODE = '42704',
               MESSAGE = pg_catalog.format('job %s does not exist', wait_for_job.job_id);
           END IF;
           IF st IN ('completed', 'failed') THEN
             succeeded := st = 'completed';
             RETURN;
           END IF;
           COMMIT;
           PERFORM pg_catalog.pg_sleep(0.02);
         END LOOP;
       END $$""",
    f"ALTER VIEW sys.jobs OWNER TO {ENDPOINT_ROLE}",
    f"ALTER VIEW sys.iam_pg_role_mappings OWNER TO {ENDPOINT_ROLE}",
    f"ALTER FUNCTION sys.current_session_id() OWNER TO {ENDPOINT_ROLE}",
    f"ALTER PROCEDURE sys.wait_for_job(text, boolean) OWNER TO {ENDPOINT_ROLE}",
    "REVOKE ALL ON sys.jobs, sys.iam_pg_role_mappings FROM PUBLIC",
    # INSERT: only the endpoint's signed requests get through the rules (see above).
    "GRANT SELECT, INSERT ON sys.jobs, sys.iam_pg_role_mappings TO PUBLIC",
    "GRANT EXECUTE ON FUNCTION sys.current_session_id() TO PUBLIC",
    "GRANT EXECUTE ON PROCEDURE sys.wait_for_job(text, boolean) TO PUBLIC",
]

OWNERSHIP = [
    # The endpoint's functions belong to its role (callable by clients only through the
    # rules, which bind them by OID), except the event trigger's, which must be a
    # superuser's (the bootstrap's role).
    f"""DO $$ DECLARE f record; BEGIN
         FOR f IN SELECT p.oid::regprocedure AS sig, p.proname FROM pg_proc p
                   WHERE p.pronamespace = '{_I}'::regnamespace LOOP
           IF f.proname = 'dsqlkit_on_create_table' THEN
             EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f.sig, current_user);
           ELSE
             EXECUTE format('ALTER FUNCTION %s OWNER TO {ENDPOINT_ROLE}', f.sig);
           END IF;
           EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.sig);
         END LOOP;
       END $$""",
    # Reached from client sessions through the rules and the limit triggers.
    *(f"GRANT EXECUTE ON FUNCTION {_I}.{f} TO PUBLIC" for f in (
        "dsqlkit_job_request(text, text, text, text)",
        f"dsqlkit_job_built({_I}.dsqlkit_jobs)",
        f"dsqlkit_job_recorded({_I}.dsqlkit_jobs)",
        "dsqlkit_iam(text, text, text)",
    )),
]

# What a client can act as (admin, the mapped roles, and every role they are members of)
# loses what DSQL gives no role: an older data directory ran admin as a superuser, which
# could hand out anything.
_SYSTEM_ROLE = ("(%(r)s.rolname LIKE 'pg\\_%%' OR %(r)s.rolname IN (current_user, "
                f"'{ENDPOINT_ROLE}'))")
# The roles a client can act as: admin, the mapped roles, and every role they are members of
# (not following memberships into the system's roles, which the first step below revokes).
_CLIENT_CLOSURE = f"""WITH RECURSIVE client(oid) AS (
           SELECT r.oid FROM pg_roles r
            WHERE (r.rolname = '{ADMIN_ROLE}'
                   OR r.oid IN (SELECT pg_role_oid FROM {_I}.dsqlkit_iam_mappings))
              AND NOT {_SYSTEM_ROLE % {"r": "r"}}
           UNION SELECT a.roleid FROM pg_auth_members a JOIN client c ON a.member = c.oid
                   JOIN pg_roles r ON r.oid = a.roleid
                  WHERE NOT {_SYSTEM_ROLE % {"r": "r"}})"""

# What a client can act as loses what DSQL gives no role: an older data directory ran admin
# as a superuser, which could hand out anything (superuser, pg_read_server_files...).
CLIENT_ROLES = [
    f"""DELETE FROM {_I}.dsqlkit_iam_mappings m USING pg_roles r
         WHERE r.oid = m.pg_role_oid AND {_SYSTEM_ROLE % {"r": "r"}}""",
    f"""DO $$ DECLARE m record; BEGIN
         FOR m IN {_CLIENT_CLOSURE}
                  SELECT a.roleid::regrole AS role, a.member::regrole AS member,
                         a.grantor::regrole AS grantor
                    FROM pg_auth_members a JOIN client c ON a.member = c.oid
                    JOIN pg_roles r ON r.oid = a.roleid
                   WHERE {_SYSTEM_ROLE % {"r": "r"}} LOOP
           EXECUTE format('REVOKE %s FROM %s GRANTED BY %s CASCADE', m.role, m.member,
                          m.grantor);
         END LOOP;
         FOR m IN {_CLIENT_CLOSURE}
                  SELECT r.oid::regrole AS role FROM pg_roles r JOIN client c ON c.oid = r.oid
                   WHERE r.rolsuper OR r.rolreplication OR r.rolbypassrls OR r.rolcreatedb LOOP
           EXECUTE format('ALTER ROLE %s NOSUPERUSER NOREPLICATION NOBYPASSRLS NOCREATEDB',
                          m.role);
         END LOOP;
       END $$""",
    # admin manages every role a client could have made (PostgreSQL 16 gives a CREATEROLE
    # role the ADMIN option only on the roles it creates itself; admin made the older ones
    # as a superuser). Not roles with powers DSQL has no equivalent of.
    f"""DO $$ DECLARE r record; BEGIN
         FOR r IN SELECT g.oid::regrole AS role FROM pg_roles g
                   WHERE NOT (g.rolsuper OR g.rolreplication OR g.rolbypassrls)
                     AND g.rolname <> '{ADMIN_ROLE}' AND NOT {_SYSTEM_ROLE % {"r": "g"}}
                     AND NOT EXISTS (SELECT FROM pg_auth_members a
                                      WHERE a.roleid = g.oid AND a.admin_option
                                        AND a.member = '{ADMIN_ROLE}'::regrole)
                     AND NOT EXISTS (
                       WITH RECURSIVE up(oid) AS (
                         SELECT g.oid UNION SELECT a.roleid FROM pg_auth_members a
                                             JOIN up ON a.member = up.oid)
                       SELECT FROM up JOIN pg_roles p ON p.oid = up.oid
                        WHERE p.rolsuper OR p.rolreplication OR p.rolbypassrls
                           OR {_SYSTEM_ROLE % {"r": "p"}}) LOOP
           EXECUTE format('GRANT %s TO {ADMIN_ROLE} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE',
                          r.role);
         END LOOP;
       END $$""",
]

# Tables created before this catalog version (or through --backend-url) get the triggers too.
EXISTING_TABLES = [
    f"""DO $$ DECLARE r record; BEGIN
         FOR r IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r'
                    AND n.nspname NOT IN ('sys', '{_I}', 'pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg_%' LOOP
           PERFORM {_I}.dsqlkit_add_limit_triggers(r.oid::regclass);
         END LOOP;
       END $$""",
]

BOOTSTRAP = [*ROLES, *DATABASE, *UPGRADE, *TABLES, *LIMITS, *REQUESTS, *SYS, *OWNERSHIP,
             *CLIENT_ROLES, *EXISTING_TABLES]

# The request key of each backend this process bootstrapped, by (host, port, database).
_keys: dict[tuple[str, int, str], tuple[bytes, bytes]] = {}
_keys_lock = threading.Lock()


def _key_id(address: BackendAddress) -> tuple[str, int, str]:
    return (address.host, address.port, address.database)


def bootstrap(address: BackendAddress) -> None:
    """Create or upgrade the endpoint's objects, and load the request key."""
    if address.user == ADMIN_ROLE:
        raise LocalEndpointError(
            "the backend user must not be admin: admin is DSQL's client role, which the "
            "endpoint keeps without superuser powers; connect with a superuser such as postgres")
    try:
        with psycopg.connect(address.dsn(), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                               ).fetchone()
            if not row or not row[0]:
                raise LocalEndpointError(
                    f"the backend user {address.user} must be a PostgreSQL superuser: the "
                    "endpoint creates roles, an event trigger and its own schema")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
                for sql in BOOTSTRAP:
                    conn.execute(sql.encode())
                # A new key is kept only if none exists: endpoints sharing a backend sign
                # with the same one.
                ipad, opad = _new_pads()
                conn.execute(f"INSERT INTO {_I}.dsqlkit_keys (ipad, opad) VALUES (%s, %s) "
                             "ON CONFLICT DO NOTHING", [ipad, opad])
                keys = conn.execute(f"SELECT ipad, opad FROM {_I}.dsqlkit_keys").fetchone()
    except psycopg.Error as exc:
        raise LocalEndpointError(f"could not prepare the backend database: {exc}") from exc
    assert keys is not None
    with _keys_lock:
        _keys[_key_id(address)] = (bytes(keys[0]), bytes(keys[1]))


def _new_pads() -> tuple[bytes, bytes]:
    key = secrets.token_bytes(64)
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def sign(address: BackendAddress, *fields: str | None) -> str:
    """The MAC the backend's ``dsqlkit_verify`` expects for a request with these fields:
    HMAC-SHA256 over each field as ``<UTF-8 length>:<text>`` (``-:`` for NULL), in base64."""
    with _keys_lock:
        pads = _keys.get(_key_id(address))
    if pads is None:
        raise LocalEndpointError("the backend was not bootstrapped by this endpoint")
    ipad, opad = pads
    msg = "".join("-:" if f is None else f"{len(f.encode())}:{f}" for f in fields)
    inner = hashlib.sha256(ipad + msg.encode()).digest()
    return base64.b64encode(hashlib.sha256(opad + inner).digest()).decode()
