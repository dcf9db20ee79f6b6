"""Escalation and escape attempts against ``dsqlkit local``, and the checks that they changed
nothing. Shared by the CI suite (``test_security_attacks.py``) and the longer run
(``bench/security_attacks.py``).

A :class:`Lab` is an endpoint with DSQL's ``admin`` and an IAM-mapped role ``app``, each with
its own tables, a table the other may not read, a function, an index built by a job, and
sessions that stay open as the victims of signalling attempts. :meth:`Lab.attempt` runs one
:class:`Attack` as one of the two roles, through the endpoint (TLS, a real IAM token), and
reports whether it was refused and what it changed: the attempt must fail, and afterwards

* the backend's state must equal the state before the attacks (:meth:`Lab.snapshot`, read
  by the backend's superuser: every role's attributes, memberships and per-role settings,
  the database's, schemas', relations', columns', functions' and languages' privileges and
  owners, triggers, event triggers, rules, extensions, default privileges, index validity,
  the endpoint's tables (jobs, IAM mappings, request key), the users' tables, large objects,
  the server's configuration file and reloadable settings);
* the attacker's session must still be its role, at REPEATABLE READ (by default and in a
  transaction block), with DSQL's timeouts and no row-count setting of its own;
* no file may have appeared where an attempt tried to write one, and the sessions it tried
  to signal (the other role's, the endpoint's own) must still be there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from dsqlkit.local import LocalDSQL, catalog

ROLES = ("app", "admin")
ARN = "arn:aws:iam::123456789012:role/app"
OTHER_ARN = "arn:aws:iam::123456789012:role/other"
ISO = "default_transaction_isolation"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Attack:
    """One attempt. ``sql`` may name ``{me}``, ``{other}``, ``{schema}``, ``{own_table}``,
    ``{own_index}``, ``{own_func}``, ``{other_secret}``, ``{other_table}``, ``{victim_pid}``,
    ``{internal_pid}``, ``{file}``, ``{job_id}``, ``{backend_user}``, ``{signed_*}``, and
    ``{n}``, the attempt's number (names of objects an attempt would create are unique).

    ``kind``: ``sql`` runs it in the attacker's session (in a transaction block when
    ``block``); ``connect`` opens a session of the attacker with ``options`` as the startup
    parameter; ``login`` logs in as the user ``sql`` names, with a valid token for it."""

    name: str
    family: str
    sql: str
    roles: tuple[str, ...] = ROLES
    block: bool = False
    params: tuple[str, ...] | None = None
    kind: Literal["sql", "connect", "login"] = "sql"


def _a(name: str, family: str, sql: str, **kw: Any) -> Attack:
    return Attack(name, family, sql, **kw)


_SET_CONFIG = "set_config('lock_timeout', '0', false)"
_JOB_ROW = ("INSERT INTO sys.jobs (job_id, job_type, object_name, details) VALUES "
            "('aaaaaaaaaaaaaaaaaaaaaaaaaa', 'INDEX_BUILD', 'x', '{details}') RETURNING job_id")

ATTACKS: list[Attack] = [
    # -- the endpoint's internals: jobs, its functions and tables, its triggers
    _a("forged job", "internals", _JOB_ROW.format(details=json.dumps({
        "inline": "ALTER ROLE {me} SUPERUSER", "statement": "ALTER ROLE {me} SUPERUSER",
        "relation": "{own_table}", "mac": "AAAA"}))),
    _a("forged job without a signature", "internals", _JOB_ROW.format(details=json.dumps({
        "inline": "ALTER ROLE {me} SUPERUSER", "statement": "ALTER ROLE {me} SUPERUSER",
        "relation": "{own_table}"}))),
    _a("signed job with another statement", "internals", "{signed_tampered}"),
    _a("signed job replayed", "internals", "{signed_replayed}"),
    _a("forged IAM mapping", "internals",
       "INSERT INTO sys.iam_pg_role_mappings (pg_role_name, arn, grantor_pg_role_name) "
       f"VALUES ('{{me}}', '{OTHER_ARN}', 'grant:AAAA')"),
    _a("update sys.jobs", "internals", "UPDATE sys.jobs SET status = 'submitted'"),
    _a("delete IAM mappings", "internals", "DELETE FROM sys.iam_pg_role_mappings"),
    _a("read the request key", "internals", "SELECT * FROM dsqlkit_internal.dsqlkit_keys"),
    _a("write the job table", "internals",
       "INSERT INTO dsqlkit_internal.dsqlkit_jobs (job_id, job_type, statement, submitted_by) "
       "VALUES ('x', 'INDEX_BUILD', 'ALTER ROLE {me} SUPERUSER', '{backend_user}')"),
    _a("call the job request function", "internals",
       "SELECT dsqlkit_internal.dsqlkit_job_request('x', 'INDEX_BUILD', 'x', '{}')"),
    _a("call the build function", "internals",
       "SELECT dsqlkit_internal.dsqlkit_job_built(NULL)"),
    _a("call the IAM function", "internals",
       f"SELECT dsqlkit_internal.dsqlkit_iam('{{me}}', '{OTHER_ARN}', 'grant:x')"),
    _a("call the row counter", "internals", "SELECT dsqlkit_internal.dsqlkit_count(-100000, 0)"),
    _a("catalog 3's submission function", "internals",
       "SELECT sys.dsqlkit_submit_job('x', 'INDEX_BUILD', 'ALTER ROLE {me} SUPERUSER', NULL, "
       "'{own_table}')"),
    _a("catalog 3's IAM function", "internals",
       f"SELECT sys.dsqlkit_iam('grant', '{{me}}', '{OTHER_ARN}')"),
    _a("grant USAGE on the internal schema", "internals",
       "GRANT USAGE ON SCHEMA dsqlkit_internal TO {me}"),
    _a("a function in sys", "internals",
       "CREATE FUNCTION sys.evil{n}() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    _a("replace sys.jobs", "internals", "CREATE OR REPLACE VIEW sys.jobs AS SELECT 1 AS job_id"),
    _a("drop the submission rule", "internals", "DROP RULE dsqlkit_submit ON sys.jobs"),
    _a("take sys", "internals", "ALTER SCHEMA sys OWNER TO {me}"),
    _a("drop a limit trigger", "internals", "DROP TRIGGER dsqlkit_limits_insert ON {own_table}"),
    _a("disable the limit triggers", "internals", "ALTER TABLE {own_table} DISABLE TRIGGER ALL"),
    _a("rename a limit trigger", "internals",
       "ALTER TRIGGER dsqlkit_limits_insert ON {own_table} RENAME TO x"),
    _a("drop the event trigger", "internals", "DROP EVENT TRIGGER dsqlkit_limits"),
    _a("disable the event trigger", "internals", "ALTER EVENT TRIGGER dsqlkit_limits DISABLE"),
    _a("forge the row count", "internals",
       "SELECT set_config('dsqlkit.limits', '0:-100000:0:f', true)", block=True),
    _a("notify the job runner", "internals", "SELECT pg_notify('dsqlkit_jobs', '{job_id}')"),
    _a("listen to the job runner", "internals", "LISTEN dsqlkit_jobs"),
    _a("become the endpoint's role", "internals", "SET LOCAL ROLE dsqlkit_endpoint",
       block=True),
    _a("join the endpoint's role", "internals", "GRANT dsqlkit_endpoint TO {me}"),
    _a("let the endpoint's role log in", "internals", "ALTER ROLE dsqlkit_endpoint LOGIN"),
    _a("drop the endpoint's role", "internals", "DROP ROLE dsqlkit_endpoint"),
    _a("log in as the endpoint's role", "internals", "dsqlkit_endpoint", kind="login"),
    _a("log in as the backend's superuser", "internals", "{backend_user}", kind="login"),
    _a("mark an index invalid", "internals",
       "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{own_index}'::regclass"),
    # -- roles, memberships, SECURITY DEFINER functions
    _a("ALTER ROLE self SUPERUSER", "roles", "ALTER ROLE {me} SUPERUSER"),
    _a("ALTER ROLE self BYPASSRLS", "roles", "ALTER ROLE {me} BYPASSRLS"),
    _a("ALTER ROLE self REPLICATION", "roles", "ALTER ROLE {me} REPLICATION"),
    _a("ALTER ROLE self CREATEDB", "roles", "ALTER ROLE {me} CREATEDB"),
    _a("ALTER ROLE self CREATEROLE", "roles", "ALTER ROLE {me} CREATEROLE"),
    _a("CREATE ROLE SUPERUSER", "roles", "CREATE ROLE evil{n} SUPERUSER LOGIN"),
    _a("CREATE ROLE BYPASSRLS", "roles", "CREATE ROLE evil{n} BYPASSRLS"),
    _a("CREATE ROLE REPLICATION", "roles", "CREATE ROLE evil{n} REPLICATION"),
    _a("CREATE ROLE IN ROLE a superuser", "roles", "CREATE ROLE evil{n} IN ROLE {backend_user}"),
    _a("GRANT pg_read_server_files to self", "roles", "GRANT pg_read_server_files TO {me}"),
    _a("GRANT pg_execute_server_program to self", "roles",
       "GRANT pg_execute_server_program TO {me}"),
    _a("GRANT pg_signal_backend to self", "roles", "GRANT pg_signal_backend TO {me}"),
    _a("GRANT pg_write_all_data to self", "roles", "GRANT pg_write_all_data TO {me}"),
    _a("GRANT the superuser to self", "roles", "GRANT {backend_user} TO {me}"),
    _a("GRANT admin to self", "roles", "GRANT admin TO {me}", roles=("app",)),
    _a("ALTER another role", "roles", "ALTER ROLE {backend_user} NOLOGIN"),
    _a("SET ROLE to the superuser", "roles", "SET ROLE {backend_user}"),
    _a("SET LOCAL ROLE to the superuser", "roles", "SET LOCAL ROLE {backend_user}",
       block=True),
    _a("SET LOCAL ROLE to the other role", "roles", "SET LOCAL ROLE {other}", block=True),
    _a("SET SESSION AUTHORIZATION", "roles", "SET SESSION AUTHORIZATION {backend_user}"),
    _a("set_config role", "roles", "SELECT set_config('role', '{backend_user}', true)",
       block=True),
    _a("set_config session_authorization", "roles",
       "SELECT set_config('session_authorization', '{backend_user}', false)"),
    _a("AWS IAM GRANT the superuser", "roles",
       f"AWS IAM GRANT {{backend_user}} TO '{OTHER_ARN}'"),
    _a("AWS IAM GRANT the endpoint's role", "roles",
       f"AWS IAM GRANT dsqlkit_endpoint TO '{OTHER_ARN}'"),
    _a("AWS IAM GRANT a predefined role", "roles", f"AWS IAM GRANT pg_monitor TO '{OTHER_ARN}'"),
    _a("AWS IAM GRANT as a non-admin", "roles", f"AWS IAM GRANT app TO '{OTHER_ARN}'",
       roles=("app",)),
    _a("AWS IAM REVOKE as a non-admin", "roles", f"AWS IAM REVOKE app FROM '{ARN}'",
       roles=("app",)),
    _a("default privileges of another role", "roles",
       "ALTER DEFAULT PRIVILEGES FOR ROLE {other} GRANT ALL ON TABLES TO {me}"),
    _a("REASSIGN OWNED BY another role", "roles", "REASSIGN OWNED BY {other} TO {me}"),
    _a("DROP OWNED BY another role", "roles", "DROP OWNED BY {other}"),
    _a("take another role's table", "roles", "ALTER TABLE {other_table} OWNER TO {me}"),
    _a("give a SECURITY DEFINER function away", "roles",
       "ALTER FUNCTION {own_func} OWNER TO {other}"),
    _a("give a SECURITY DEFINER function to the superuser", "roles",
       "ALTER FUNCTION {own_func} OWNER TO {backend_user}"),
    _a("a SECURITY DEFINER function in pg_catalog", "roles",
       "CREATE FUNCTION pg_catalog.evil{n}() RETURNS int LANGUAGE sql SECURITY DEFINER "
       "AS 'SELECT 1'"),
    _a("a SECURITY DEFINER function that sets role", "roles",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS int LANGUAGE sql SECURITY DEFINER "
       "SET role = {backend_user} AS 'SELECT 1'"),
    # -- DSQL's settings rules, every spelling
    _a("SET", "settings", f"SET {ISO} = 'read committed'"),
    _a("SET LOCAL", "settings", "SET LOCAL transaction_isolation = 'read committed'",
       block=True),
    _a("SET lock_timeout", "settings", "SET lock_timeout = 0"),
    _a("RESET", "settings", f"RESET {ISO}"),
    _a("set_config", "settings", f"SELECT set_config('{ISO}', 'read committed', false)"),
    _a("set_config local", "settings",
       "SELECT set_config('transaction_isolation', 'read committed', true)", block=True),
    _a("set_config in a CTE", "settings", f"WITH x AS (SELECT {_SET_CONFIG}) SELECT * FROM x"),
    _a("set_config in FROM", "settings",
       "SELECT * FROM pg_catalog.set_config('statement_timeout', '1', false)"),
    _a("set_config in a subquery", "settings", f"SELECT 1 WHERE (SELECT {_SET_CONFIG}) = '0'"),
    _a("set_config with parameters", "settings", "SELECT set_config(%s, %s, false)",
       params=(ISO, "read committed")),
    _a("set_config with named arguments", "settings",
       "SELECT set_config(setting_name => 'lock_timeout', new_value => '0', is_local => false)"),
    _a("set_config in a SQL function body", "settings",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS text LANGUAGE sql AS "
       f"$$ SELECT set_config('{ISO}', 'read committed', false) $$"),
    _a("set_config in a BEGIN ATOMIC body", "settings",
       f"CREATE FUNCTION {{schema}}.evil{{n}}() RETURNS text LANGUAGE sql BEGIN ATOMIC "
       f"SELECT {_SET_CONFIG}; END"),
    _a("SET in a SQL function body", "settings",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS void LANGUAGE sql AS "
       "'SET lock_timeout = 0'"),
    _a("a function's SET clause", "settings",
       f"CREATE FUNCTION {{schema}}.evil{{n}}() RETURNS int LANGUAGE sql SET {ISO} = "
       "'read committed' AS 'SELECT 1'"),
    _a("ALTER FUNCTION SET", "settings", "ALTER FUNCTION {own_func} SET lock_timeout = 0"),
    _a("ALTER ROLE SET", "settings", f"ALTER ROLE {{me}} SET {ISO} = 'read committed'"),
    _a("ALTER ROLE SET the row count", "settings",
       "ALTER ROLE {me} SET dsqlkit.limits = '0:-100000:0:f'"),
    _a("ALTER DATABASE SET", "settings",
       f"ALTER DATABASE postgres SET {ISO} = 'read committed'"),
    _a("UPDATE pg_settings", "settings",
       f"UPDATE pg_settings SET setting = 'read committed' WHERE name = '{ISO}'"),
    _a("set_config through query_to_xml", "settings",
       "SELECT query_to_xml('SELECT set_config(''lock_timeout'', ''0'', false)', true, false, "
       "'')"),
    _a("set_config in a view", "settings",
       f"CREATE VIEW {{schema}}.evil{{n}} AS SELECT {_SET_CONFIG}"),
    _a("set_config in a column default", "settings",
       f"CREATE TABLE {{schema}}.evil{{n}} (id int PRIMARY KEY, "
       f"a text DEFAULT {_SET_CONFIG})"),
    _a("BEGIN ISOLATION LEVEL", "settings", "BEGIN ISOLATION LEVEL READ COMMITTED"),
    _a("SET SESSION CHARACTERISTICS", "settings",
       "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"),
    _a("SET TRANSACTION", "settings", "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
       block=True),
    _a("session_replication_role", "settings", "SET session_replication_role = replica"),
    _a("ALTER SYSTEM", "settings", f"ALTER SYSTEM SET {ISO} = 'read committed'"),
    _a("startup option isolation", "settings", f"-c {ISO}=read\\ committed", kind="connect"),
    _a("startup option lock_timeout", "settings", "-c lock_timeout=0", kind="connect"),
    _a("startup option long form", "settings", "--default-transaction-isolation=serializable",
       kind="connect"),
    _a("startup option role", "settings", "-c role={backend_user}", kind="connect"),
    _a("startup option session_authorization", "settings",
       "-c session_authorization={backend_user}", kind="connect"),
    # -- server files and programs
    _a("COPY TO PROGRAM", "files", "COPY (SELECT 1) TO PROGRAM 'touch {file}'"),
    _a("COPY FROM PROGRAM", "files", "COPY {own_table} FROM PROGRAM 'id'"),
    _a("COPY TO a file", "files", "COPY (SELECT 1) TO '{file}'"),
    _a("COPY FROM a file", "files", "COPY {own_table} FROM '/etc/hostname'"),
    _a("pg_read_file", "files", "SELECT pg_read_file('/etc/hostname')"),
    _a("pg_read_file in FROM", "files", "SELECT * FROM pg_read_file('postgresql.conf')"),
    _a("pg_read_binary_file", "files", "SELECT pg_read_binary_file('/etc/hostname')"),
    _a("pg_ls_dir", "files", "SELECT pg_ls_dir('.')"),
    _a("pg_stat_file", "files", "SELECT pg_stat_file('postgresql.conf')"),
    _a("pg_ls_waldir", "files", "SELECT * FROM pg_ls_waldir()"),
    _a("lo_import", "files", "SELECT lo_import('/etc/hostname')"),
    _a("lo_export", "files", "SELECT lo_export(1, '{file}')"),
    # -- code: languages, extensions
    _a("LANGUAGE plpgsql", "code",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS int LANGUAGE plpgsql AS "
       "$$BEGIN RETURN 1; END$$"),
    _a("LANGUAGE c", "code",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS int LANGUAGE c AS '/lib/x.so', 'f'"),
    _a("LANGUAGE internal", "code",
       "CREATE FUNCTION {schema}.evil{n}(text, text, boolean) RETURNS text LANGUAGE internal "
       "AS 'set_config_by_name'"),
    _a("LANGUAGE plpython3u", "code",
       "CREATE FUNCTION {schema}.evil{n}() RETURNS int LANGUAGE plpython3u AS 'return 1'"),
    _a("CREATE LANGUAGE", "code", "CREATE LANGUAGE plperl"),
    _a("DO", "code", "DO $$BEGIN PERFORM 1; END$$"),
    _a("CREATE EXTENSION", "code", "CREATE EXTENSION IF NOT EXISTS dblink"),
    _a("CREATE EXTENSION plpgsql-alike", "code", "CREATE EXTENSION IF NOT EXISTS plperl"),
    _a("LOAD", "code", "LOAD 'plpgsql'"),
    _a("CREATE EVENT TRIGGER", "code",
       "CREATE EVENT TRIGGER evil{n} ON ddl_command_start "
       "EXECUTE FUNCTION dsqlkit_internal.dsqlkit_on_create_table()"),
    _a("CREATE TRIGGER", "code",
       "CREATE TRIGGER evil{n} BEFORE UPDATE ON {own_table} FOR EACH ROW "
       "EXECUTE FUNCTION suppress_redundant_updates_trigger()"),
    # -- other sessions
    _a("pg_terminate_backend of the other role", "sessions",
       "SELECT pg_terminate_backend({victim_pid})"),
    _a("pg_cancel_backend of the other role", "sessions", "SELECT pg_cancel_backend({victim_pid})"),
    _a("pg_terminate_backend of the endpoint", "sessions",
       "SELECT pg_terminate_backend({internal_pid})"),
    _a("pg_cancel_backend of the endpoint", "sessions",
       "SELECT pg_cancel_backend({internal_pid})"),
    _a("pg_log_backend_memory_contexts", "sessions",
       "SELECT pg_log_backend_memory_contexts({internal_pid})"),
    # -- other roles' data
    _a("read another role's table", "data", "SELECT * FROM {other_secret}"),
    _a("write another role's table", "data", "INSERT INTO {other_secret} VALUES (2, 'x')"),
    _a("update another role's table", "data", "UPDATE {other_secret} SET s = 'x'"),
    _a("delete another role's rows", "data", "DELETE FROM {other_secret}"),
    _a("COPY another role's table", "data", "COPY {other_secret} TO STDOUT"),
    _a("lock another role's table", "data", "LOCK TABLE {other_secret}", block=True),
    _a("read pg_authid", "data", "SELECT rolname, rolpassword FROM pg_authid"),
    # -- the catalogs and the server
    _a("write pg_authid", "server",
       "UPDATE pg_authid SET rolsuper = true WHERE rolname = '{me}'"),
    _a("write pg_auth_members", "server", "DELETE FROM pg_auth_members"),
    _a("write pg_proc", "server", "UPDATE pg_proc SET prosecdef = true WHERE proname = 'evil{n}'"),
    _a("pg_reload_conf", "server", "SELECT pg_reload_conf()"),
    _a("pg_rotate_logfile", "server", "SELECT pg_rotate_logfile()"),
    _a("pg_switch_wal", "server", "SELECT pg_switch_wal()"),
    _a("CHECKPOINT", "server", "CHECKPOINT"),
    _a("CREATE DATABASE", "server", "CREATE DATABASE evil{n}"),
    _a("CREATE SCHEMA as a non-admin", "server", "CREATE SCHEMA evil{n}", roles=("app",)),
    _a("a table in public as a non-admin", "server",
       "CREATE TABLE public.evil{n} (id int PRIMARY KEY)", roles=("app",)),
    _a("a temporary table", "server", "CREATE TABLE pg_temp.evil{n} (id int PRIMARY KEY)"),
    _a("CREATE PUBLICATION", "server", "CREATE PUBLICATION evil{n} FOR ALL TABLES"),
    _a("CREATE SERVER", "server", "CREATE SERVER evil{n} FOREIGN DATA WRAPPER postgres_fdw"),
]


@dataclass
class Outcome:
    attack: Attack
    role: str
    refused: bool
    error: str
    changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.refused and not self.changed


# What the backend's superuser reads after every attempt (see the module docs).
SNAPSHOT: dict[str, str] = {
    "roles": "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
             "rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil::text, rolconfig "
             "FROM pg_roles ORDER BY 1",
    "memberships": "SELECT roleid::regrole::text, member::regrole::text, "
                   "grantor::regrole::text, admin_option, inherit_option, set_option "
                   "FROM pg_auth_members ORDER BY 1, 2, 3",
    "role and database settings": "SELECT setdatabase, setrole, setconfig "
                                  "FROM pg_db_role_setting ORDER BY 1, 2",
    "databases": "SELECT datname, datdba::regrole::text, datacl::text, datconnlimit, "
                 "datallowconn FROM pg_database ORDER BY 1",
    "schemas": "SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace "
               "ORDER BY 1",
    "relations": "SELECT c.oid::regclass::text, c.relkind, c.relowner::regrole::text, "
                 "c.relacl::text, c.relrowsecurity, c.relpersistence FROM pg_class c "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
                 "ORDER BY 1",
    "column privileges": "SELECT attrelid::regclass::text, attname, attacl::text "
                         "FROM pg_attribute WHERE attacl IS NOT NULL ORDER BY 1, 2",
    "functions": "SELECT p.oid::regprocedure::text, p.proowner::regrole::text, p.prosecdef, "
                 "p.proconfig, md5(p.prosrc), p.proacl::text, p.prolang "
                 "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                 "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    "catalog privileges": "SELECT md5(string_agg(proacl::text, ',' ORDER BY oid)), "
                          "(SELECT md5(string_agg(relacl::text, ',' ORDER BY oid)) "
                          " FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace) "
                          "FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace",
    "languages": "SELECT lanname, lanowner::regrole::text, lanpltrusted, lanacl::text "
                 "FROM pg_language ORDER BY 1",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "triggers": "SELECT tgrelid::regclass::text, tgname, tgenabled, "
                "tgfoid::regprocedure::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
    "event triggers": "SELECT evtname, evtevent, evtowner::regrole::text, "
                      "evtfoid::regprocedure::text, evtenabled FROM pg_event_trigger ORDER BY 1",
    "rules": "SELECT ev_class::regclass::text, rulename, md5(ev_action::text) FROM pg_rewrite "
             "WHERE ev_class >= 16384 ORDER BY 1, 2",
    "policies": "SELECT polrelid::regclass::text, polname FROM pg_policy ORDER BY 1, 2",
    "default privileges": "SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype, "
                          "defaclacl::text FROM pg_default_acl ORDER BY 1, 2, 3",
    "indexes": "SELECT indexrelid::regclass::text, indisvalid, indisready, indislive "
               "FROM pg_index WHERE indexrelid >= 16384 ORDER BY 1",
    "object counts": "SELECT (SELECT count(*) FROM pg_largeobject_metadata), "
                     "(SELECT count(*) FROM pg_cast), (SELECT count(*) FROM pg_operator), "
                     "(SELECT count(*) FROM pg_type), (SELECT count(*) FROM pg_foreign_server), "
                     "(SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_proc), "
                     "(SELECT count(*) FROM pg_class)",
    "endpoint tables": "SELECT (SELECT md5(string_agg(j::text, ',' ORDER BY job_id)) "
                       "        FROM dsqlkit_internal.dsqlkit_jobs j), "
                       "(SELECT md5(string_agg(m::text, ',' ORDER BY iam_oid)) "
                       " FROM dsqlkit_internal.dsqlkit_iam_mappings m), "
                       "(SELECT md5(string_agg(k::text, ',')) "
                       " FROM dsqlkit_internal.dsqlkit_keys k), "
                       "(SELECT count(*) FROM dsqlkit_internal.dsqlkit_oversize)",
    "user tables": "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM admin_t t), "
                   "(SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM admin_secret t), "
                   "(SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM app_s.app_t t), "
                   "(SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM app_s.app_secret t)",
    "server configuration": "SELECT md5(pg_read_file('postgresql.auto.conf')), "
                            "(SELECT md5(string_agg(name || '=' || setting, ',' ORDER BY name)) "
                            " FROM pg_settings WHERE context IN ('sighup', 'postmaster'))",
}

SESSION_STATE = (
    "SELECT current_user, session_user, current_setting('default_transaction_isolation'), "
    "current_setting('lock_timeout'), current_setting('statement_timeout'), "
    "current_setting('idle_in_transaction_session_timeout'), "
    "current_setting('session_replication_role'), "
    "coalesce(current_setting('dsqlkit.limits', true), ''), current_setting('search_path')")


class Lab:
    """An endpoint prepared for the attacks (see the module docs)."""

    def __init__(self, ep: LocalDSQL, *, attack_ep: LocalDSQL | None = None) -> None:
        self.ep = ep
        # The endpoint the attacks go through (bench/security_attacks.py points one without
        # the dialect at the same backend, to see what the backend refuses on its own).
        self.attack_ep = attack_ep or ep
        self.files = tempfile.mkdtemp(prefix="dsqlkit-attack-")
        # Writable by the backend's account too: a write that were allowed would land here.
        os.chmod(self.files, 0o1777)
        self.su: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
            ep.backend_dsn, autocommit=True)
        self.backend_user = str(self.su.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        self._setup()
        self.sessions = {role: self._connect(role, ep=self.attack_ep) for role in ROLES}
        self.victims = {role: self._connect(role) for role in ROLES}
        self.victim_pids = {role: int(self.victims[role].execute(
            "SELECT pg_backend_pid()").fetchone()[0]) for role in ROLES}  # type: ignore[index]
        rows = self.su.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = current_user "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchall()
        assert rows, "the endpoint's own sessions (job runner) are not there"
        self.internal_pid = int(rows[0][0])
        self.baseline = self.snapshot()
        self.session_baseline = {role: self.session_state(role) for role in ROLES}
        self.attempts = 0

    def close(self) -> None:
        for conn in [*self.sessions.values(), *self.victims.values(), self.su]:
            conn.close()
        shutil.rmtree(self.files, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup: each role's ordinary objects, made the ordinary way

    def _connect(self, role: str, *, ep: LocalDSQL | None = None,
                 **kw: Any) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect((ep or self.ep).dsn(role, **kw), autocommit=True)

    def rebaseline(self) -> None:
        """Take the current state as the reference (after an attempt that was let through)."""
        for role in ROLES:
            self.sessions[role].close()
            self.sessions[role] = self._connect(role, ep=self.attack_ep)
        self.baseline = self.snapshot()
        self.session_baseline = {role: self.session_state(role) for role in ROLES}
        shutil.rmtree(self.files, ignore_errors=True)
        os.mkdir(self.files)
        os.chmod(self.files, 0o1777)

    def _setup(self) -> None:
        with self._connect("admin") as admin:
            admin.execute("CREATE ROLE app WITH LOGIN")
            admin.execute(f"AWS IAM GRANT app TO '{ARN}'")
            admin.execute("CREATE TABLE admin_t (id int PRIMARY KEY, v int)")
            admin.execute("INSERT INTO admin_t VALUES (1, 1), (2, 2)")
            admin.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON admin_t TO app")
            admin.execute("CREATE TABLE admin_secret (id int PRIMARY KEY, s text)")
            admin.execute("INSERT INTO admin_secret VALUES (1, 'admin only')")
            admin.execute("CREATE SCHEMA app_s")
            admin.execute("GRANT USAGE, CREATE ON SCHEMA app_s TO app")
            admin.execute("CREATE FUNCTION admin_f() RETURNS int LANGUAGE sql "
                          "SECURITY DEFINER AS 'SELECT 1'")
            job = admin.execute("CREATE INDEX ASYNC admin_t_v ON admin_t (v)").fetchone()
            assert job is not None
            assert admin.execute("CALL sys.wait_for_job(%s)", [job[0]]).fetchone() == (True,)
            self.job_id = str(job[0])
        with self._connect("app") as app:
            app.execute("CREATE TABLE app_s.app_t (id int PRIMARY KEY, v int)")
            app.execute("INSERT INTO app_s.app_t VALUES (1, 1), (2, 2)")
            app.execute("CREATE TABLE app_s.app_secret (id int PRIMARY KEY, s text)")
            app.execute("INSERT INTO app_s.app_secret VALUES (1, 'app only')")
            app.execute("CREATE FUNCTION app_s.app_f() RETURNS int LANGUAGE sql "
                        "SECURITY DEFINER AS 'SELECT 1'")
            job = app.execute("CREATE INDEX ASYNC app_t_v ON app_s.app_t (v)").fetchone()
            assert job is not None
            assert app.execute("CALL sys.wait_for_job(%s)", [job[0]]).fetchone() == (True,)
        # A request signed with the endpoint's key, as the endpoint writes them: sent once
        # here, it is what a replay would send again.
        self.signed = {role: self.signed_job(f"replay{role}".ljust(26, "a"),
                                             self.context(role)["own_table"],
                                             f"{role}_replayed") for role in ROLES}
        for role in ROLES:
            with self._connect(role) as conn:
                conn.execute(self.signed[role])
                assert conn.execute("CALL sys.wait_for_job(%s)",
                                    [f"replay{role}".ljust(26, "a")]).fetchone() == (True,)

    def signed_job(self, job_id: str, table: str, index: str, *,
                   statement: str | None = None) -> str:
        """The INSERT the endpoint sends for ``CREATE INDEX ASYNC index ON table (v)``; with
        ``statement``, that statement in place of the index build, under the same MAC."""
        inline = f"CREATE INDEX {index} ON {table} (v)"
        job = f"CREATE INDEX CONCURRENTLY {index} ON {table} (v)"
        mac = catalog.sign(self.ep.server.backend_address(), "job", job_id, "INDEX_BUILD",
                           index, inline, job, table)
        details = json.dumps({"inline": statement or inline, "statement": statement or job,
                              "relation": table, "mac": mac}).replace("'", "''")
        return ("INSERT INTO sys.jobs (job_id, job_type, object_name, details) VALUES "
                f"('{job_id}', 'INDEX_BUILD', '{index}', '{details}') RETURNING job_id")

    def context(self, role: str) -> dict[str, str]:
        other = "admin" if role == "app" else "app"
        own = {"app": ("app_s", "app_s.app_t", "app_s.app_t_v", "app_s.app_f()",
                       "app_s.app_secret"),
               "admin": ("public", "admin_t", "admin_t_v", "admin_f()", "admin_secret")}
        schema, table, index, func, _ = own[role]
        return {
            "me": role, "other": other, "schema": schema, "own_table": table,
            "own_index": index, "own_func": func, "other_secret": own[other][4],
            "other_table": own[other][1], "backend_user": getattr(self, "backend_user", ""),
            "job_id": getattr(self, "job_id", ""),
        }

    # -- the checks

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return {name: self.su.execute(sql).fetchall() for name, sql in SNAPSHOT.items()}

    def session_state(self, role: str) -> tuple[Any, ...]:
        conn = self.sessions[role]
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        row = conn.execute(SESSION_STATE).fetchone()
        conn.execute("BEGIN")
        in_block = conn.execute("SHOW transaction_isolation").fetchone()
        conn.execute("ROLLBACK")
        assert row is not None and in_block is not None
        return (*row, in_block[0])

    def _changes(self, role: str, file: str) -> list[str]:
        changed = [name for name, rows in self.snapshot().items() if rows != self.baseline[name]]
        if self.session_state(role) != self.session_baseline[role]:
            changed.append("the attacker's session")
        if os.path.exists(file) or os.listdir(self.files):
            changed.append("files")
        alive = self.su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                [[*self.victim_pids.values(), self.internal_pid]]).fetchone()
        if alive != (len(self.victim_pids) + 1,):
            changed.append("signalled sessions")
        for victim in self.victims.values():
            if victim.execute("SELECT 1").fetchone() != (1,):
                changed.append("signalled sessions")
        return changed

    # -- one attempt

    def attempt(self, role: str, attack: Attack,
                transform: Callable[[str], str] | None = None) -> Outcome:
        self.attempts += 1
        file = os.path.join(self.files, f"attempt-{self.attempts}")
        values = {**self.context(role), "file": file, "n": str(self.attempts),
                  "victim_pid": str(self.victim_pids["admin" if role == "app" else "app"]),
                  "internal_pid": str(self.internal_pid),
                  "signed_replayed": self.signed[role],
                  "signed_tampered": self.signed_job(
                      "tampered".ljust(26, "a"), self.context(role)["own_table"], "tampered",
                      statement=f"ALTER ROLE {role} SUPERUSER")}
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), attack.sql)
        if transform is not None:
            text = transform(text)
        error = self._run(role, attack, text)
        return Outcome(attack, role, error is not None, error or "", self._changes(role, file))

    def _run(self, role: str, attack: Attack, text: str) -> str | None:
        """The error the attempt got, or None if it succeeded."""
        try:
            if attack.kind == "connect":
                self._connect(role, ep=self.attack_ep, options=text).close()
            elif attack.kind == "login":
                psycopg.connect(self.attack_ep.dsn(text), autocommit=True).close()
            else:
                conn = self.sessions[role]
                if attack.block:
                    conn.execute("BEGIN")
                try:
                    if attack.params is not None:
                        conn.execute(text.encode(), attack.params)  # type: ignore[arg-type]
                    else:
                        conn.execute(text.encode())
                finally:
                    if attack.block:
                        conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None) or "-"
            return f"{state} {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return None


def run_attacks(lab: Lab, attacks: Sequence[Attack],
                on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    outcomes = []
    for attack in attacks:
        for role in attack.roles:
            outcome = lab.attempt(role, attack)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes


def by_family(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = table.setdefault(o.attack.family, {r: 0 for r in ROLES})
        row[o.role] += 1
    return table


def report(outcomes: Sequence[Outcome], elapsed: float) -> list[str]:
    lines = []
    for family, counts in by_family(outcomes).items():
        lines.append(f"  {family:<12} " + "  ".join(f"{r} {n:>3}" for r, n in counts.items()))
    per_role = {r: sum(1 for o in outcomes if o.role == r) for r in ROLES}
    refused = {r: sum(1 for o in outcomes if o.role == r and o.ok) for r in ROLES}
    lines.append("  attempts     " + ", ".join(f"{r} {per_role[r]}" for r in ROLES)
                 + f" ({len(outcomes)} in {elapsed:.1f} s)")
    lines.append("  refused, nothing changed  " + ", ".join(
        f"{r} {refused[r]} of {per_role[r]}" for r in ROLES))
    for o in outcomes:
        if not o.ok:
            lines.append(f"  FAILED {o.role}: {o.attack.name}: refused={o.refused} "
                         f"{o.error} changed={o.changed}")
    return lines


def lab_endpoint() -> Iterator[LocalDSQL]:
    """An ephemeral endpoint of its own (the attacks must see no other test's jobs)."""
    with LocalDSQL(ephemeral=True, port=0) as ep:
        yield ep


def timed(fn: Callable[[], list[Outcome]]) -> tuple[list[Outcome], float]:
    started = time.monotonic()
    out = fn()
    return out, time.monotonic() - started


def sqlstates(outcomes: Sequence[Outcome]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        state = o.error.split(" ", 1)[0] if o.error else "none"
        counts[state] = counts.get(state, 0) + 1
    return dict(sorted(counts.items()))
