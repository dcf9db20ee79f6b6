"""DSQL's settings rules whatever the spelling: SET, SET LOCAL, RESET, set_config() anywhere in
a statement (and in the SQL a statement has run later), writes to pg_settings, ALTER ROLE ...
SET, ALTER DATABASE ... SET, a function's SET clause."""

from __future__ import annotations

import pytest

from dsqlkit.local.dialect import SETTING_RULES, Refusal, analyze


def refusal(sql: str) -> Refusal | None:
    statements = analyze(sql).statements
    assert len(statements) == 1, statements
    return statements[0].refusal


def not_supported(name: str) -> Refusal:
    return Refusal("0A000", f'setting configuration parameter "{name}" not supported')


ISO = "default_transaction_isolation"


@pytest.mark.parametrize(("sql", "name"), [
    # set_config, in every place an expression can be
    (f"SELECT set_config('{ISO}', 'read committed', false)", ISO),
    ("SELECT set_config('transaction_isolation', 'read committed', true)",
     "transaction_isolation"),
    ("SELECT pg_catalog.set_config('lock_timeout', '0', false)", "lock_timeout"),
    ('SELECT "set_config"(\'lock_timeout\', \'0\', false)', "lock_timeout"),
    ("SELECT SET_CONFIG('Lock_Timeout'::text, '0', false)", "lock_timeout"),
    ("SELECT set_config(setting_name => 'lock_timeout', new_value => '0', is_local => false)",
     "lock_timeout"),
    ("SELECT * FROM set_config('statement_timeout', '0', false)", "statement_timeout"),
    ("SELECT * FROM ROWS FROM (set_config('statement_timeout', '0', false)) r",
     "statement_timeout"),
    ("SELECT 1 WHERE set_config('lock_timeout', '0', false) IS NOT NULL", "lock_timeout"),
    ("SELECT (SELECT set_config('lock_timeout', '0', false))", "lock_timeout"),
    ("WITH x AS (SELECT set_config('lock_timeout', '0', false)) SELECT * FROM x",
     "lock_timeout"),
    ("SELECT 1 FROM (SELECT set_config('lock_timeout', '0', true)) s", "lock_timeout"),
    ("SELECT CASE WHEN true THEN set_config('lock_timeout', '0', false) END", "lock_timeout"),
    ("VALUES (set_config('lock_timeout', '0', false))", "lock_timeout"),
    ("INSERT INTO t (a) SELECT set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("UPDATE t SET a = set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("DELETE FROM t WHERE a = set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("EXPLAIN ANALYZE SELECT set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("PREPARE p AS SELECT set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("DECLARE c CURSOR FOR SELECT set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("COPY (SELECT set_config('lock_timeout', '0', false)) TO STDOUT", "lock_timeout"),
    ("SELECT set_config('role', 'admin', false)", "role"),
    ("SELECT set_config('session_authorization', 'postgres', false)", "session_authorization"),
    ("SELECT set_config('dsqlkit.limits', '1:-100000:0:f', true)", "dsqlkit.limits"),
    ("SELECT set_config('session_replication_role', 'replica', false)",
     "session_replication_role"),
    ("SELECT set_config($1, $2, false)", "$1"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings", "name"),
    # objects that run an expression later
    ("CREATE VIEW v AS SELECT set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("CREATE TABLE t (a text DEFAULT set_config('lock_timeout', '0', false))", "lock_timeout"),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT set_config('lock_timeout', '0', false)",
     "lock_timeout"),
    ("CREATE DOMAIN d AS text CHECK (set_config('lock_timeout', '0', false) IS NOT NULL)",
     "lock_timeout"),
    # SQL functions: the body (string, BEGIN ATOMIC, RETURN) and the SET clause
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS "
     "$$ SELECT set_config('lock_timeout', '0', false) $$", "lock_timeout"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS text AS "
     "'SELECT 1; SELECT set_config(''lock_timeout'', ''0'', false)' LANGUAGE SQL",
     "lock_timeout"),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC "
     "SELECT set_config('lock_timeout', '0', false); END", "lock_timeout"),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "RETURN set_config('lock_timeout', '0', false)", "lock_timeout"),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS "
     f"'SET {ISO} = ''read committed'''", ISO),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'RESET lock_timeout'", "lock_timeout"),
    ("CREATE FUNCTION f(n text) RETURNS text LANGUAGE sql AS "
     "'SELECT set_config(n, ''0'', false)'", "n"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET lock_timeout = 0 AS 'SELECT 1'",
     "lock_timeout"),
    (f"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET {ISO} FROM CURRENT AS 'SELECT 1'", ISO),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER SET role = admin "
     "AS 'SELECT 1'", "role"),
    ("ALTER FUNCTION f() SET lock_timeout = 0", "lock_timeout"),
    ("ALTER FUNCTION f() RESET statement_timeout", "statement_timeout"),
    # role and database defaults
    (f"ALTER ROLE app SET {ISO} = 'read committed'", ISO),
    ("ALTER USER app SET lock_timeout TO 0", "lock_timeout"),
    ("ALTER ROLE app IN DATABASE postgres SET lock_timeout = 0", "lock_timeout"),
    ("ALTER ROLE CURRENT_USER SET role = admin", "role"),
    ("ALTER ROLE app SET dsqlkit.limits = '1:-100000:0:f'", "dsqlkit.limits"),
    ("ALTER ROLE app RESET lock_timeout", "lock_timeout"),
    # pg_settings is set_config() by another name
    (f"UPDATE pg_settings SET setting = 'read committed' WHERE name = '{ISO}'", ISO),
    ("UPDATE pg_catalog.pg_settings SET setting = '0' WHERE 'lock_timeout' = name",
     "lock_timeout"),
    ("UPDATE pg_settings SET setting = '0' WHERE name IN ('lock_timeout')", "pg_settings"),
    ("WITH u AS (UPDATE pg_settings SET setting = '0' WHERE name = 'lock_timeout' "
     "RETURNING 1) SELECT * FROM u", "lock_timeout"),
    # SQL given as text: checked when it is a literal
    ("SELECT query_to_xml('SELECT set_config(''lock_timeout'', ''0'', false)', true, false, '')",
     "lock_timeout"),
    ("SELECT * FROM ts_stat('SELECT set_config(''lock_timeout'', ''0'', false)::tsvector')",
     "lock_timeout"),
    ("SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''lock_timeout'', ''0'', false)')",
     "lock_timeout"),
    # the statement forms
    (f"SET {ISO} = 'read committed'", ISO),
    ("SET LOCAL lock_timeout = 0", "lock_timeout"),
    ("SET SESSION statement_timeout TO DEFAULT", "statement_timeout"),
    ("RESET transaction_isolation", "transaction_isolation"),
    ("SET session_authorization = postgres", "session_authorization"),
])
def test_a_setting_dsql_refuses_is_refused_whatever_the_spelling(sql: str, name: str) -> None:
    assert refusal(sql) == not_supported(name)
    rule = analyze(sql).statements[0].rule
    assert rule in SETTING_RULES


@pytest.mark.parametrize(("sql", "answer"), [
    ("SELECT query_to_xml($1, true, false, '')", "function query_to_xml not supported"),
    ("SELECT query_to_xmlschema(q, true, false, '') FROM t", "function query_to_xmlschema not "
     "supported"),
    ("SELECT * FROM ts_stat(current_setting('x'))", "function ts_stat not supported"),
    ("SELECT pg_notify('dsqlkit_jobs', 'x')", "function pg_notify not supported"),
    ("ALTER DATABASE postgres SET lock_timeout = 0", "unsupported statement: AlterDatabaseSet"),
    ("ALTER DATABASE postgres RESET ALL", "unsupported statement: AlterDatabaseSet"),
    ("ALTER SYSTEM SET lock_timeout = 0", "unsupported statement: AlterSystem"),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", "Unsupported isolation level: READ COMMITTED"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
     "Unsupported isolation level: READ COMMITTED"),
    ("ALTER TRIGGER dsqlkit_limits_insert ON t RENAME TO x",
     "unsupported object in RENAME statement"),
])
def test_other_ways_round_the_settings_rules_are_refused(sql: str, answer: str) -> None:
    found = refusal(sql)
    assert found is not None and found.message == answer


@pytest.mark.parametrize("sql", [
    "SELECT set_config('search_path', 'app, public', false)",
    "SELECT pg_catalog.set_config('search_path', '', false)",  # every pg_dump script
    "SELECT set_config('application_name', 'x', true)",
    "SELECT set_config('role', 'app', true)",  # as SET LOCAL role
    "SELECT current_setting('lock_timeout')",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS 'SELECT 1'",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS "
    "$$ SELECT set_config('search_path', 'public', true) $$",
    "ALTER FUNCTION f() RESET ALL",
    "ALTER ROLE app SET search_path = app, public",
    "ALTER ROLE app RESET ALL",
    "SELECT query_to_xml('SELECT 1', true, false, '')",
    "RESET ALL",
    "SET LOCAL search_path = app",
])
def test_settings_dsql_allows_pass(sql: str) -> None:
    assert refusal(sql) is None
