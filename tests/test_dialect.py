"""analyze(): classification, refusals beyond the recorded corpus, DSQL-only syntax, rewrites."""

from __future__ import annotations

import dataclasses
import re

import pytest
from pglast import ast, parse_sql

from dsqlkit.local.dialect import (
    Refusal,
    Relation,
    Statement,
    analyze,
    analyze_uncached,
    cache_clear,
    cache_stats,
    setting_refusal,
)


def one(sql: str) -> Statement:
    analysis = analyze(sql)
    assert len(analysis.statements) == 1, analysis.statements
    return analysis.statements[0]


def refused(sql: str) -> Refusal | None:
    return one(sql).refusal


def f(message: str) -> Refusal:
    return Refusal("0A000", message)


# --- classification --------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "kind"), [
    ("SELECT 1", "select"),
    ("VALUES (1), (2)", "select"),
    ("TABLE accounts", "select"),
    ("INSERT INTO t VALUES (1)", "dml"),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", "dml"),
    ("DELETE FROM t USING u WHERE t.id = u.id", "dml"),
    ("WITH d AS (DELETE FROM t RETURNING id) SELECT count(*) FROM d", "dml"),
    ("CREATE TABLE t (id uuid PRIMARY KEY)", "ddl"),
    ("GRANT SELECT ON t TO app", "ddl"),
    ("REVOKE SELECT ON t FROM app", "ddl"),
    ("COMMENT ON TABLE t IS 'x'", "ddl"),
    ("CREATE ROLE app WITH LOGIN", "ddl"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO app", "ddl"),
    ("CREATE INDEX ASYNC i ON t (a)", "ddl"),
    ("ALTER TABLE ASYNC t VALIDATE CONSTRAINT c", "ddl"),
    ("AWS IAM GRANT app TO 'arn:aws:iam::012345678912:role/app'", "ddl"),
    ("BEGIN", "tcl"), ("START TRANSACTION", "tcl"), ("COMMIT", "tcl"), ("END", "tcl"),
    ("ROLLBACK", "tcl"), ("ABORT", "tcl"), ("SAVEPOINT s", "tcl"),
    ("SET search_path TO app", "set"), ("RESET ALL", "set"),
    ("SET TRANSACTION READ ONLY", "set"), ("SET CONSTRAINTS ALL DEFERRED", "set"),
    ("SHOW search_path", "show"),
    ("EXPLAIN SELECT 1", "utility"), ("ANALYZE t", "utility"), ("CALL p()", "utility"),
    ("COPY t FROM STDIN", "utility"), ("DISCARD ALL", "utility"), ("DEALLOCATE ALL", "utility"),
    ("PREPARE q AS SELECT 1", "utility"), ("EXECUTE q", "utility"),
])
def test_kind(sql: str, kind: str) -> None:
    assert one(sql).kind == kind


@pytest.mark.parametrize(("sql", "action"), [
    ("BEGIN", "begin"), ("BEGIN WORK", "begin"), ("START TRANSACTION", "begin"),
    ("COMMIT", "commit"), ("END", "commit"), ("COMMIT AND NO CHAIN", "commit"),
    ("ROLLBACK", "rollback"), ("ABORT", "rollback"), ("SAVEPOINT s", "savepoint"),
    ("RELEASE SAVEPOINT s", "release"), ("ROLLBACK TO SAVEPOINT s", "rollback_to"),
    ("PREPARE TRANSACTION 'x'", "prepare"), ("COMMIT PREPARED 'x'", "commit_prepared"),
])
def test_tcl_action(sql: str, action: str) -> None:
    assert one(sql).tcl_action == action


def test_begin_options() -> None:
    stmt = one("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    assert (stmt.isolation, stmt.read_only, stmt.refusal) == ("repeatable read", True, None)
    assert one("START TRANSACTION READ WRITE").read_only is False
    assert one("BEGIN").read_only is None


def test_write_flags() -> None:
    assert one("INSERT INTO t VALUES (1), (2), (3)").values_rows == 3
    assert one("INSERT INTO t DEFAULT VALUES").values_rows == 1
    assert one("INSERT INTO t VALUES (1), (2) ON CONFLICT DO NOTHING").values_rows is None
    assert one("INSERT INTO t VALUES (1), (2) ON CONFLICT (id) DO UPDATE SET a = 1"
               ).values_rows == 2
    assert one("INSERT INTO t SELECT generate_series(1, 10)").values_rows == 10
    assert one("INSERT INTO t SELECT generate_series(0, 100, 10)").values_rows == 11
    assert one("INSERT INTO t SELECT generate_series(1, n) FROM u").values_rows is None
    assert one("INSERT INTO t SELECT generate_series(1, $1)").values_rows is None
    assert one("COPY t FROM STDIN").writes_rows
    assert one("COPY t FROM STDIN").copy_from_stdin
    assert not one("COPY t TO STDOUT").writes_rows
    assert one("EXPLAIN ANALYZE DELETE FROM t").writes_rows
    assert one("EXPLAIN (ANALYZE true) UPDATE t SET a = 1").writes_rows
    assert not one("EXPLAIN DELETE FROM t").writes_rows
    assert not one("EXPLAIN (ANALYZE false) DELETE FROM t").writes_rows
    assert not one("SELECT 1").writes_rows


@pytest.mark.parametrize(("sql", "locking"), [
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE", "for_update"),
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT", "for_update"),
    ("SELECT * FROM t WHERE id = 1 FOR KEY SHARE", "for_key_share"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "for_update"),
    ("SELECT * FROM t FOR KEY SHARE OF t", "for_key_share"),
    ("UPDATE t SET a = 1 WHERE id IN (SELECT id FROM u FOR UPDATE)", "for_update"),
    ("SELECT 1", None),
])
def test_locking(sql: str, locking: str | None) -> None:
    assert one(sql).locking == locking
    assert one(sql).refusal is None


def test_prepared_and_executed_names() -> None:
    assert one("PREPARE q (int) AS SELECT $1").prepared_name == "q"
    assert one("EXECUTE q (1)").execute_name == "q"


# --- refusals (recorded ones are in test_dialect_conformance; these cover the rest) -----------


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t FOR NO KEY UPDATE",
     f("locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR SHARE)",
     f("locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")),
    ("SELECT pg_try_advisory_lock(1)", f("function pg_try_advisory_lock not supported")),
    ("SELECT pg_catalog.pg_advisory_xact_lock(42)",
     f("function pg_advisory_xact_lock not supported")),
    ("SELECT * FROM pg_advisory_lock(1)", f("function pg_advisory_lock not supported")),
    ("SELECT circle('<(0,0),1>')", f("datatype circle not supported")),
    ("SELECT '{1,2,3}'::line", f("datatype line not supported")),
    ("SELECT plainto_tsquery('simple', 'x')",
     Refusal("42704", 'text search configuration "simple" does not exist')),
    ("SELECT 'english'::regconfig",
     Refusal("42704", 'text search configuration "english" does not exist')),
    ("SELECT ts_headline('english', 'a b', to_tsquery('a'))",
     Refusal("42704", 'text search configuration "english" does not exist')),
    ("SELECT 1 INTO newtable", f("unsupported statement: CreateTableAs")),
    ("SELECT * FROM t TABLESAMPLE BERNOULLI (10)", f("TABLESAMPLE clause not supported")),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
     f("unsupported statement type: MERGE")),
    ("EXPLAIN SELECT * FROM t FOR SHARE",
     f("locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")),
    ("EXPLAIN CREATE TABLE x AS SELECT 1", f("unsupported statement: CreateTableAs")),
    ("PREPARE q AS SELECT * FROM t FOR SHARE",
     f("locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")),
    ("CREATE VIEW v AS SELECT * FROM t FOR SHARE",
     f("locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")),
    ("RELEASE SAVEPOINT s", f("unsupported transaction statement: RELEASE")),
    ("ROLLBACK TO s", f("unsupported transaction statement: ROLLBACK TO")),
    ("PREPARE TRANSACTION 'x'", f("unsupported transaction statement: PREPARE TRANSACTION")),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", f("Unsupported isolation level: READ COMMITTED")),
    ("START TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
     f("Unsupported isolation level: READ UNCOMMITTED")),
    ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
     f("Unsupported isolation level: READ COMMITTED")),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
     f('setting configuration parameter "SESSION CHARACTERISTICS" not supported')),
    ("SET statement_timeout = '5s'",
     f('setting configuration parameter "statement_timeout" not supported')),
    ("SET SESSION lock_timeout TO 100",
     f('setting configuration parameter "lock_timeout" not supported')),
    ("SET LOCAL work_mem = '64MB'", f('setting configuration parameter "work_mem" not supported')),
    ("RESET client_min_messages",
     f('setting configuration parameter "client_min_messages" not supported')),
    ("SET default_transaction_read_only = on",
     f('setting configuration parameter "default_transaction_read_only" not supported')),
    ("SET role app", f('setting configuration parameter "role" not supported')),
    ("SET SESSION AUTHORIZATION app",
     f('setting configuration parameter "session_authorization" not supported')),
    ("SHOW lc_ctype", Refusal("42704", 'unrecognized configuration parameter "lc_ctype"')),
    ("CREATE TEMP TABLE t (id int)", f("TEMPORARY or TEMP table not supported for CREATE TABLE")),
    ("CREATE TABLE p (id int) PARTITION BY RANGE (id)",
     f("PARTITION BY not supported for CREATE TABLE")),
    ("CREATE TABLE c PARTITION OF p FOR VALUES FROM (1) TO (2)",
     f("PARTITION OF not supported for CREATE TABLE")),
    ("CREATE TABLE c (id int) INHERITS (p)", f("INHERITS not supported for CREATE TABLE")),
    ("CREATE TABLE t (r tsrange, EXCLUDE USING gist (r WITH &&))",
     f("datatype tsrange not supported")),
    ("CREATE TABLE t (a int, EXCLUDE USING btree (a WITH =))",
     f("EXCLUDE constraint not supported for CREATE TABLE")),
    ("CREATE TABLE t (id bigserial PRIMARY KEY)",
     Refusal("42704", 'type "bigserial" does not exist')),
    ("CREATE TABLE t (id pg_catalog.serial4)", Refusal("42704", 'type "serial4" does not exist')),
    ("CREATE TABLE t (a int[])", f("datatype integer[] not supported")),
    ("CREATE TABLE t (a varchar(10)[])", f("datatype character varying[] not supported")),
    ("CREATE TABLE t (a timestamptz ARRAY)",
     f("datatype timestamp with time zone[] not supported")),
    ("CREATE TABLE t (a bit varying(8))", f("datatype bit varying not supported")),
    ("CREATE TABLE t (a pg_catalog.money)", f("datatype money not supported")),
    ("CREATE TABLE t (a macaddr8)", f("datatype macaddr8 not supported")),
    ("CREATE TABLE t (a \"char\")", f('datatype "char" not supported')),
    ("CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 100) PRIMARY KEY)",
     Refusal("22023", "CACHE (100) must be greater than or equal to 65536 or equal to 1")),
    ("CREATE TABLE t (id smallint GENERATED ALWAYS AS IDENTITY (CACHE 1))",
     f("datatype smallint not supported, identity column type must be bigint")),
    ("CREATE SEQUENCE s CACHE 1000",
     Refusal("22023", "CACHE (1000) must be greater than or equal to 65536 or equal to 1")),
    ("CREATE SEQUENCE s START 1",
     f("CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE "
       "greater than or equal to 65536 or equal to 1")),
    ("ALTER SEQUENCE s CACHE 10",
     Refusal("22023", "CACHE (10) must be greater than or equal to 65536 or equal to 1")),
    ("CREATE SEQUENCE s AS integer CACHE 1", Refusal("22023", "sequence type must be bigint")),
    ("CREATE SEQUENCE s AS DECIMAL(10,0) CACHE 1",
     Refusal("22023", "sequence type must be bigint")),
    ("ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY",
     f("identity column is not supported without an explicit cache size. please define CACHE "
       "greater than or equal to 65536 or equal to 1")),
    ("ALTER TABLE t ALTER COLUMN id SET CACHE 5",
     Refusal("22023", "CACHE (5) must be greater than or equal to 65536 or equal to 1")),
    ("ALTER TABLE t ALTER COLUMN c SET NOT NULL",
     f("unsupported ALTER TABLE ALTER COLUMN ... SET NOT NULL statement")),
    ("ALTER TABLE t ALTER COLUMN c SET STATISTICS 100",
     f("unsupported ALTER TABLE ALTER COLUMN ... SET STATISTICS statement")),
    ("ALTER TABLE t ALTER c TYPE bigint",
     f("unsupported ALTER TABLE ALTER COLUMN ... SET DATA TYPE statement")),
    ("ALTER TABLE t ENABLE ROW LEVEL SECURITY",
     f("unsupported ALTER TABLE ENABLE ROW SECURITY statement")),
    ("ALTER TABLE t SET UNLOGGED", f("unsupported ALTER TABLE SET UNLOGGED statement")),
    ("ALTER TABLE t ADD COLUMN c int REFERENCES p (id)",
     f("ALTER TABLE ADD COLUMN with constraint not supported")),
    ("ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS (1) STORED",
     f("ALTER TABLE ADD COLUMN with constraint not supported")),
    ("ALTER TABLE t ADD COLUMN c serial", Refusal("42704", 'type "serial" does not exist')),
    ("ALTER TABLE t ADD PRIMARY KEY USING INDEX i",
     f("unsupported ALTER TABLE ADD CONSTRAINT statement")),
    ("ALTER TABLE t ADD CONSTRAINT x EXCLUDE USING btree (a WITH =)",
     f("unsupported ALTER TABLE ADD CONSTRAINT statement")),
    ("ALTER TABLE t ADD CHECK (a > 0)", f("unsupported ALTER TABLE ADD CONSTRAINT statement")),
    ("ALTER TABLE ASYNC t ADD COLUMN c int", f("unsupported ALTER TABLE ADD COLUMN statement")),
    ("ALTER TYPE mood ADD ATTRIBUTE x int", f("ALTER TYPE not supported")),
    ("ALTER TYPE mood RENAME TO feeling", f("unsupported object in RENAME statement")),
    ("ALTER TYPE mood OWNER TO app", f("ALTER TYPE not supported")),
    ("CREATE TYPE shell", f("CREATE TYPE not supported")),
    ("CREATE AGGREGATE agg (int) (SFUNC = int4pl, STYPE = int)",
     f("unsupported statement: Define")),
    ("DROP EXTENSION IF EXISTS pgcrypto", f("unsupported object in DROP statement")),
    ("DROP TRIGGER trg ON t", f("unsupported object in DROP statement")),
    ("DROP MATERIALIZED VIEW mv", f("unsupported object in DROP statement")),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", f("PROCEDURE is not supported")),
    ("CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE 'plpgsql' AS 'BEGIN RETURN 1; END'",
     f("CREATE FUNCTION with language plpgsql not supported")),
    ("CREATE FUNCTION g() RETURNS int AS 'x' LANGUAGE C",
     f("CREATE FUNCTION with language c not supported")),
    ("CREATE CONSTRAINT TRIGGER t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
     f("CREATE TRIGGER not supported")),
    ("DO $$ BEGIN PERFORM 1; END $$", f("unsupported statement: Do")),
    ("CREATE POLICY p ON t USING (true)", f("unsupported statement: CreatePolicy")),
    ("REINDEX TABLE t", f("unsupported statement: Reindex")),
    ("DROP DATABASE postgres", f("unsupported statement: Dropdb")),
    ("REFRESH MATERIALIZED VIEW mv", f("unsupported statement: RefreshMatView")),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", f("unsupported statement: Rule")),
    ("VACUUM (ANALYZE) t", f("unsupported VACUUM statement")),
    ("VACUUM FULL", f("unsupported VACUUM statement")),
    ("GRANT CONNECT ON DATABASE postgres TO app", f("unsupported object type in GRANT")),
    ("GRANT USAGE ON SCHEMA public TO app", f("feature not supported on system entity")),
    ("REVOKE CREATE ON SCHEMA public FROM PUBLIC", f("feature not supported on system entity")),
    ("CREATE SCHEMA s CREATE TABLE t (id serial)",
     Refusal("42704", 'type "serial" does not exist')),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", f("CONCURRENTLY not supported for CREATE INDEX")),
    ("CREATE INDEX ASYNC i ON t (a ASC)", f("specifying sort order not supported for index keys")),
    ("CREATE INDEX ASYNC i ON t (a text_pattern_ops)", f("opclass not supported for index keys")),
    ("CREATE INDEX ASYNC i ON t (a, b, c, d, e, f, g, h, i)",
     Refusal("54011", "more than 8 column keys in an index are not supported")),
    ("CREATE UNIQUE INDEX ASYNC IF NOT EXISTS myschema.i ON t (a)",
     Refusal("42601", 'syntax error at or near "."')),
    ("CALL p((SELECT 1))", f("cannot use subquery in CALL argument")),
    ("WITH m AS (MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE RETURNING 1) "
     "SELECT 1", f("unsupported statement type: MERGE")),
])
def test_refusal(sql: str, expected: Refusal) -> None:
    assert refused(sql) == expected


def test_table_column_limit() -> None:
    columns = ", ".join(f"c{i} int" for i in range(256))
    assert refused(f"CREATE TABLE wide ({columns})") == Refusal(
        "54011", "tables can have at most 255 columns")
    columns = ", ".join(f"c{i} int" for i in range(255))
    assert refused(f"CREATE TABLE wide ({columns})") is None


@pytest.mark.parametrize("sql", [
    "CREATE TABLE c (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
    "p uuid NOT NULL REFERENCES parent (id) ON DELETE CASCADE)",
    "CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (CACHE 65536), v jsonb)",
    "CREATE TABLE t (id int8 GENERATED ALWAYS AS IDENTITY (CACHE 1 START WITH 10))",
    "CREATE TABLE t (id int PRIMARY KEY, doc json, body text STORAGE EXTERNAL)",
    "CREATE TABLE t (id uuid PRIMARY KEY, m mood_domain, amount numeric(1000, 10))",
    "CREATE TABLE t (a int, b int GENERATED ALWAYS AS (a * 2) STORED)",
    "CREATE TABLE IF NOT EXISTS t (LIKE other INCLUDING ALL)",
    "CREATE SEQUENCE s CACHE 1", "CREATE SEQUENCE s AS bigint CACHE 70000",
    "ALTER SEQUENCE s RESTART WITH 5",
    "CREATE VIEW v AS SELECT * FROM t", "CREATE OR REPLACE VIEW v AS SELECT 1 AS x",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql IMMUTABLE RETURN 7",
    "CREATE DOMAIN d AS text CHECK (VALUE IN ('a', 'b'))",
    "CREATE INDEX ASYNC i ON t (a) WHERE a IS NOT NULL",
    "CREATE INDEX ASYNC i ON t ((lower(a)) NULLS FIRST) INCLUDE (b)",
    "CREATE UNIQUE INDEX ASYNC i ON t (a) NULLS NOT DISTINCT",
    "ALTER TABLE t DROP COLUMN b", "ALTER TABLE t DROP COLUMN IF EXISTS b CASCADE",
    "ALTER TABLE t ADD COLUMN c text", "ALTER TABLE t ADD COLUMN c text NULL",
    "ALTER TABLE t ADD COLUMN IF NOT EXISTS d text STORAGE PLAIN",
    "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (p) REFERENCES parent (id) NOT VALID",
    "ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX i",
    "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1", "ALTER TABLE t ALTER COLUMN a DROP DEFAULT",
    "ALTER TABLE t ALTER COLUMN a DROP NOT NULL", "ALTER TABLE t ALTER a SET STORAGE MAIN",
    "ALTER TABLE t ALTER COLUMN id SET CACHE 65536", "ALTER TABLE t ALTER COLUMN id RESTART",
    "ALTER TABLE t ALTER COLUMN id DROP IDENTITY IF EXISTS",
    "ALTER TABLE t DROP CONSTRAINT c", "ALTER TABLE t OWNER TO app",
    "ALTER TABLE t RENAME COLUMN a TO b", "ALTER TABLE t RENAME TO u",
    "ALTER TABLE t SET SCHEMA s", "ALTER TABLE t ALTER CONSTRAINT fk DEFERRABLE",
    "CREATE STATISTICS s (dependencies) ON a, b FROM t", "ALTER STATISTICS s SET STATISTICS 10",
    "DROP STATISTICS s", "DROP TABLE IF EXISTS t", "DROP VIEW v", "DROP INDEX i",
    "DROP SEQUENCE s", "DROP FUNCTION f()", "DROP DOMAIN d", "DROP SCHEMA s", "DROP ROLE app",
    "CREATE SCHEMA app", "CREATE ROLE app WITH LOGIN", "GRANT SELECT, INSERT ON t TO app",
    "GRANT USAGE ON SCHEMA app TO reader", "GRANT ALL ON ALL TABLES IN SCHEMA public TO app",
    "GRANT app TO other", "COMMENT ON COLUMN t.a IS 'x'",
    "INSERT INTO t (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET n = t.n + EXCLUDED.n",
    "SELECT string_to_array('1,2', ','), '10.0.0.1'::inet, '{\"a\":1}'::jsonb ->> 'a'",
    "SELECT to_tsvector('plain text')", "SELECT point(1, 2)",
    "SELECT * FROM t WHERE id = $1 FOR UPDATE SKIP LOCKED",
    "ANALYZE t", "EXPLAIN ANALYZE SELECT 1", "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
    "SET TIME ZONE 'UTC'", "SET NAMES 'UTF8'", "SET SCHEMA 'app'", "SET datestyle TO ISO, MDY",
    "SET application_name = 'x'", "SET SESSION search_path = app, public", "RESET ALL",
    "RESET search_path", "SET LOCAL enable_seqscan = off", "SET LOCAL role app",
    "SET dsql.enable_batched_nestloop = on", "SET CONSTRAINTS ALL IMMEDIATE",
    "SHOW transaction_isolation", "SELECT current_database()", "DISCARD ALL",
    "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "DECLARE c CURSOR FOR SELECT 1",
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "COMMIT AND NO CHAIN",
])
def test_accepted(sql: str) -> None:
    assert refused(sql) is None


def test_drop_column_of_primary_key_is_a_catalog_question() -> None:
    stmt = one("ALTER TABLE app.accounts DROP COLUMN id, DROP COLUMN note")
    assert stmt.refusal is None
    assert stmt.drop_columns == ((Relation("app", "accounts"), "id"),
                                 (Relation("app", "accounts"), "note"))


def test_unique_using_index_is_a_catalog_question() -> None:
    stmt = one("ALTER TABLE big ADD CONSTRAINT big_uq UNIQUE USING INDEX big_uq")
    assert stmt.refusal is None
    assert stmt.adopt_indexes == ((Relation(None, "big"), "big_uq"),)


def test_index_key_columns_are_exposed_for_the_jsonb_check() -> None:
    stmt = one("CREATE INDEX ASYNC i ON s.docs (tenant, (doc->>'k'), body)")
    assert stmt.index_columns == (Relation("s", "docs"), ("tenant", "body"))


def test_synchronous_index_waiver() -> None:
    stmt = one("CREATE INDEX i ON t (a)")
    assert stmt.refusal == f("unsupported mode. please use CREATE INDEX ASYNC.")
    assert stmt.waiver == "sync_index_on_empty_table"
    assert stmt.refusal_if_waived is None
    desc = one("CREATE INDEX i ON t (a DESC)")
    assert desc.refusal == f("unsupported mode. please use CREATE INDEX ASYNC.")
    assert desc.refusal_if_waived == f("specifying sort order not supported for index keys")
    assert desc.waiver_rule == "index-sort-order"


def test_setting_refusal_for_startup_parameters() -> None:
    assert setting_refusal("DateStyle") is None
    assert setting_refusal("TimeZone") is None
    assert setting_refusal("application_name") is None
    assert setting_refusal("statement_timeout") == f(
        'setting configuration parameter "statement_timeout" not supported')
    assert setting_refusal("role") is not None
    assert setting_refusal("role", is_local=True) is None


def test_dsql_only_setting_is_answered_by_the_proxy() -> None:
    stmt = one("SET disable_sync_create_index = off")
    assert (stmt.set_param, stmt.set_value, stmt.refusal) == (
        "disable_sync_create_index", "off", None)
    assert stmt.local_answer is not None and stmt.local_answer.tag == "SET"
    reset = one("RESET disable_sync_create_index").local_answer
    assert reset is not None and reset.tag == "RESET"
    assert not analyze("SHOW disable_sync_create_index").passthrough


def test_set_parameter_flags() -> None:
    stmt = one("SET LOCAL search_path TO app")
    assert (stmt.set_param, stmt.is_local, stmt.set_value) == ("search_path", True, "app")
    assert one("SET TimeZone = 'UTC'").set_param == "timezone"


# --- DSQL-only syntax ------------------------------------------------------------------------


def test_create_index_async_job() -> None:
    stmt = one("create unique index async if not exists ix_t_a on app.t (a) where a > 0")
    assert stmt.refusal is None and stmt.job is not None
    job = stmt.job
    assert job.kind == "index_build" and job.tag == "CREATE INDEX"
    assert job.relation == Relation("app", "t") and job.object_name == "ix_t_a"
    assert job.unique and job.if_not_exists
    assert job.sql == "create unique index if not exists ix_t_a on app.t (a) where a > 0"
    assert job.concurrent_sql == (
        "create unique index CONCURRENTLY if not exists ix_t_a on app.t (a) where a > 0")
    assert stmt.rewritten == job.sql
    for sql in (job.sql, job.concurrent_sql):
        (raw,) = parse_sql(sql)
        assert isinstance(raw.stmt, ast.IndexStmt)


def test_async_keyword_around_comments_and_case() -> None:
    stmt = one("CREATE /* build later */ INDEX\n  AsYnC -- really\n ix ON t (a)")
    assert stmt.job is not None and stmt.job.object_name == "ix"


def test_quoted_async_is_an_index_name() -> None:
    stmt = one('CREATE INDEX "async" ON t (a)')
    assert stmt.job is None
    assert stmt.refusal == f("unsupported mode. please use CREATE INDEX ASYNC.")


def test_table_named_async() -> None:
    stmt = one("ALTER TABLE async ADD COLUMN c text")
    assert stmt.refusal is None and stmt.job is None and stmt.node == "AlterTableStmt"


def test_alter_table_async_validate_job() -> None:
    stmt = one("ALTER TABLE ASYNC IF EXISTS ONLY s.t VALIDATE CONSTRAINT fk")
    assert stmt.job is not None
    assert (stmt.job.kind, stmt.job.tag, stmt.job.object_name) == (
        "validate_constraint", "ALTER TABLE", "fk")
    assert stmt.job.relation == Relation("s", "t")
    assert stmt.job.sql == "ALTER TABLE IF EXISTS ONLY s.t VALIDATE CONSTRAINT fk"


def test_masked_text_keeps_offsets() -> None:
    sql = "SELECT 1; CREATE INDEX ASYNC i ON t (a); ALTER TABLE ASYNC t VALIDATE CONSTRAINT c"
    analysis = analyze(sql)
    assert len(analysis.masked_text) == len(sql)
    assert "ASYNC" not in analysis.masked_text
    assert analysis.masked_text.replace(" ", "") == sql.replace("ASYNC", "").replace(" ", "")


@pytest.mark.parametrize(("sql", "role", "arn"), [
    ("AWS IAM GRANT app TO 'arn:aws:iam::012345678912:role/app'",
     "app", "arn:aws:iam::012345678912:role/app"),
    ("aws iam grant App_Role to 'arn:aws:iam::012345678912:user/dev'",
     "app_role", "arn:aws:iam::012345678912:user/dev"),
    ('AWS IAM GRANT "Mixed Case" TO \'arn:aws-cn:iam::012345678912:role/path/x\'',
     "Mixed Case", "arn:aws-cn:iam::012345678912:role/path/x"),
    ("AWS IAM GRANT reader TO $$arn:aws:iam::012345678912:role/r$$",
     "reader", "arn:aws:iam::012345678912:role/r"),
])
def test_aws_iam_grant(sql: str, role: str, arn: str) -> None:
    stmt = one(sql)
    assert stmt.refusal is None and stmt.iam is not None
    assert (stmt.iam.action, stmt.iam.role, stmt.iam.arn) == ("grant", role, arn)
    assert stmt.node == "AwsIamGrant"


def test_aws_iam_revoke_and_arn_check() -> None:
    stmt = one("AWS IAM REVOKE app FROM 'arn:aws:iam::012345678912:role/app'")
    assert stmt.iam is not None and stmt.iam.action == "revoke" and stmt.refusal is None
    bad = one("AWS IAM GRANT app TO 'app'")
    assert bad.refusal == Refusal("22023", "IAM role must look like an IAM ARN")


@pytest.mark.parametrize("sql", [
    "AWS IAM GRANT app FROM 'arn:aws:iam::012345678912:role/app'",
    "AWS IAM REVOKE app TO 'arn:aws:iam::012345678912:role/app'",
    "AWS IAM GRANT TO 'arn:aws:iam::012345678912:role/app'",
    "AWS IAM GRANT app TO arn",
    "AWS IAM DENY app TO 'arn:aws:iam::012345678912:role/app'",
    "AWS IAM",
])
def test_malformed_aws_iam_is_unparsed(sql: str) -> None:
    stmt = one(sql)
    assert stmt.unparsed and stmt.refusal is None and stmt.iam is None


@pytest.mark.parametrize(("sql", "job_id", "param"), [
    ("CALL sys.wait_for_job('jh2gbtx4mzhgfkbimtgwn5j45y')", "jh2gbtx4mzhgfkbimtgwn5j45y", None),
    ("CALL sys.wait_for_job('abc'::text)", "abc", None),
    ("CALL sys.wait_for_job(job_id => 'abc')", "abc", None),
    ("CALL sys.wait_for_job($1)", None, 1),
    ("CALL sys.wait_for_job(lower('ABC'))", None, None),
])
def test_wait_for_job(sql: str, job_id: str | None, param: int | None) -> None:
    stmt = one(sql)
    assert stmt.wait_for_job is not None
    assert (stmt.wait_for_job.job_id, stmt.wait_for_job.param) == (job_id, param)


# --- rewrites and local answers --------------------------------------------------------------


def _targets(sql: str) -> list[tuple[str | None, object]]:
    (raw,) = parse_sql(sql)
    assert isinstance(raw.stmt, ast.SelectStmt)
    return [(t.name, t.val) for t in raw.stmt.targetList or ()]


@pytest.mark.parametrize(("sql", "names"), [
    ("SELECT version()", ["version"]),
    ("select pg_catalog.version()", ["version"]),
    ("SELECT version() AS v", ["v"]),
    ("SELECT version()::text", ["version"]),
    ("SELECT upper(version())", [None]),
    ("SELECT current_setting('server_version'), current_setting('SERVER_VERSION_NUM', true)",
     ["current_setting", "current_setting"]),
    ("SELECT 1 AS a, version() FROM t WHERE version() <> ''", ["a", "version"]),
])
def test_version_rewrites(sql: str, names: list[str | None]) -> None:
    stmt = one(sql)
    assert stmt.rewritten is not None and stmt.refusal is None
    assert "version(" not in stmt.rewritten and "current_setting(" not in stmt.rewritten
    assert [name for name, _ in _targets(stmt.rewritten)] == names
    assert "'PostgreSQL 16'" in stmt.rewritten or "'16.15'" in stmt.rewritten or \
        "'160015'" in stmt.rewritten


def test_unrelated_settings_are_not_rewritten() -> None:
    assert one("SELECT current_setting('search_path')").rewritten is None
    assert one("SELECT myschema.version()").rewritten is None
    assert one("SELECT * FROM version()").rewritten is None
    assert analyze("SELECT 1").passthrough


def test_show_server_version_answers() -> None:
    answer = one("SHOW server_version").local_answer
    assert answer is not None
    assert (answer.tag, answer.columns, answer.rows) == ("SHOW", ("server_version",), (("16.15",),))
    answer = one("show SERVER_VERSION_NUM").local_answer
    assert answer is not None and answer.rows == (("160015",),)


# --- splitting -------------------------------------------------------------------------------


def test_split_respects_quotes_comments_and_bodies() -> None:
    sql = ("SELECT ';' AS a; -- c;omment\n/* ; */ SELECT $x$;$x$;\n"
           "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;"
           "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
           "INSERT INTO b VALUES (2));;  ")
    analysis = analyze(sql)
    nodes = [s.node for s in analysis.statements]
    assert nodes == ["SelectStmt", "SelectStmt", "CreateFunctionStmt", "RuleStmt"]
    for stmt in analysis.statements:
        assert sql[stmt.start:stmt.end] == stmt.text
    assert analysis.statements[1].text == "SELECT $x$;$x$"


def test_statement_offsets_in_multi_statement_text() -> None:
    sql = "  BEGIN;\n INSERT INTO t VALUES (1) ;COMMIT"
    stmts = analyze(sql).statements
    assert [(s.start, s.end, s.text) for s in stmts] == [
        (2, 7, "BEGIN"), (10, 34, "INSERT INTO t VALUES (1)"), (36, 42, "COMMIT")]


@pytest.mark.parametrize("sql", ["", "   ", ";", ";;\n;", "-- nothing", "/* x */ -- y"])
def test_empty(sql: str) -> None:
    analysis = analyze(sql)
    assert [s.kind for s in analysis.statements] == ["empty"]
    assert not analysis.unparsed


def test_syntax_errors_are_left_to_postgresql() -> None:
    stmt = one("SELEC 1")
    assert stmt.unparsed and stmt.refusal is None
    assert stmt.parse_error == 'syntax error at or near "SELEC"'
    assert stmt.error_position == 0
    analysis = analyze("SELECT 1; SELECT FROM WHERE; SELECT 3")
    assert analysis.unparsed
    assert [s.unparsed for s in analysis.statements] == [False, True, False]
    assert analysis.statements[1].error_position == analysis.text.index("WHERE")


def test_lexical_error_keeps_the_statements_before_it() -> None:
    analysis = analyze("SELECT 1; TRUNCATE t; SELECT 'unterminated")
    assert [s.node for s in analysis.statements] == ["SelectStmt", "TruncateStmt", "Unparsed"]
    tail = analysis.statements[2]
    assert tail.text == "SELECT 'unterminated"
    assert tail.parse_error is not None and "unterminated quoted string" in tail.parse_error


def test_unparsed_async_statement_keeps_postgresql_positions() -> None:
    stmt = one("CREATE INDEX ASYNC i ON t (a) WHERE")
    assert stmt.unparsed
    assert stmt.rewritten == "CREATE INDEX       i ON t (a) WHERE"


# --- cache and immutability ------------------------------------------------------------------


def test_cache_returns_the_same_object() -> None:
    sql = "UPDATE accounts SET balance = balance - $1 WHERE id = $2"
    first = analyze(sql)
    before = cache_stats()
    assert analyze(sql) is first
    after = cache_stats()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    assert analyze_uncached(sql) == first
    assert analyze_uncached(sql) is not first


def test_cache_is_bounded_by_text_size() -> None:
    cache_clear()
    for i in range(40):
        analyze(f"SELECT {i}, '" + "x" * 20_000 + "'")
    assert cache_stats().entries == 16
    huge = "SELECT '" + "y" * (2 * 1024 * 1024) + "'"
    assert analyze(huge) is not analyze(huge)
    assert cache_stats().entries == 16


def test_results_are_immutable() -> None:
    analysis = analyze("SELECT 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.statements[0].kind = "dml"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.passthrough = False  # type: ignore[misc]
    assert isinstance(analysis.statements, tuple)


# --- issue 13: CACHE values and sequence types ([SUITE] in the research's corrections) ---------

CACHE_VALUE = re.compile(r"CACHE \(.*\) must be greater than or equal to 65536 or equal to 1")


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000) PRIMARY KEY)",
    "CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (CACHE 2))",
    "CREATE SEQUENCE s CACHE 1000", "CREATE SEQUENCE s START 5 CACHE 65535",
    "ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (CACHE 1000)",
])
def test_cache_value_is_a_class_22_error(sql: str) -> None:
    refusal = refused(sql)
    assert refusal is not None
    assert refusal.sqlstate.startswith("22")
    assert CACHE_VALUE.fullmatch(refusal.message), refusal.message


def test_missing_cache_keeps_the_recorded_refusal() -> None:
    assert refused("CREATE SEQUENCE s") == f(
        "CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE "
        "greater than or equal to 65536 or equal to 1")
    assert refused("CREATE SEQUENCE s CACHE 1") is None
    assert refused("CREATE SEQUENCE s CACHE 65536") is None


@pytest.mark.parametrize("type_name", ["DECIMAL(10,0)", "numeric", "real", "text"])
def test_non_integer_sequence_type(type_name: str) -> None:
    refusal = refused(f"CREATE SEQUENCE s AS {type_name} CACHE 1")
    assert refusal is not None and refusal.sqlstate.startswith("22")
    assert refusal.message == "sequence type must be bigint"


def test_identity_column_type_keeps_the_recorded_wording() -> None:
    assert refused("CREATE TABLE t (id integer GENERATED BY DEFAULT AS IDENTITY (CACHE 1))") == f(
        "datatype integer not supported, identity column type must be bigint")


# --- every refusal of a statement --------------------------------------------------------------


def rules_of(sql: str) -> list[str]:
    return [rule for rule, _ in one(sql).all_refusals]


def test_every_refusal_is_kept_and_the_first_is_what_dsql_answers() -> None:
    stmt = one("CREATE INDEX i ON t USING gin (a jsonb_path_ops DESC)")
    assert stmt.refusal == f("unsupported mode. please use CREATE INDEX ASYNC.")
    assert rules_of(stmt.text) == ["sync-index", "index-sort-order", "index-opclass",
                                   "index-method"]
    assert rules_of("CREATE TABLE t (id serial, tags text[], v tsvector) WITH (fillfactor=70)"
                    ) == ["storage-parameters", "serial", "column-type", "column-type"]
    assert rules_of("CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY)") == [
        "identity-cache", "identity-type"]
    assert rules_of("SELECT pg_advisory_lock(1), 'x'::line FROM t TABLESAMPLE system (1)") == [
        "advisory-lock", "geometric-type", "tablesample"]
    # Built without a rule module (the qualified ASYNC index name): one refusal.
    assert rules_of("CREATE INDEX ASYNC s.i ON t (a)") == ["index-name"]
    assert rules_of("SELECT 1") == []


# --- clauses DSQL's documented syntax does not have (inferred rules) ---------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("CREATE INDEX ASYNC i ON t USING gin (a)",
     Refusal("42704", 'access method "gin" does not exist')),
    ("CREATE INDEX ASYNC i ON t USING HASH (a)",
     Refusal("42704", 'access method "hash" does not exist')),
    ("CREATE INDEX ASYNC i ON t (a COLLATE \"C\")", f("collation not supported for index keys")),
    ("CREATE TABLE t (a text COLLATE \"en_US\")", f("COLLATE not supported for CREATE TABLE")),
    ("CREATE TABLE t (a int) WITH (fillfactor = 70)",
     Refusal("42601", 'syntax error at or near "WITH"')),
    ("CREATE TABLE t (a int) tablespace fast",
     Refusal("42601", 'syntax error at or near "tablespace"')),
    ("CREATE TEMP VIEW v AS SELECT 1", f("TEMPORARY or TEMP view not supported for CREATE VIEW")),
    ("COPY t FROM '/tmp/t.csv'", Refusal(
        "42501", "must be superuser or have privileges of the pg_read_server_files role to "
        "COPY from a file")),
    ("COPY t TO '/tmp/t.csv'", Refusal(
        "42501", "must be superuser or have privileges of the pg_write_server_files role to "
        "COPY to a file")),
    ("COPY t FROM PROGRAM 'cat x'", Refusal(
        "42501", "must be superuser or have privileges of the pg_execute_server_program role "
        "to COPY to or from an external program")),
    ("SELECT sys.wait_for_job('abc')", Refusal("42809", "sys.wait_for_job(text) is a procedure")),
])
def test_inferred_clause_refusals(sql: str, expected: Refusal) -> None:
    assert refused(sql) == expected


@pytest.mark.parametrize("sql", [
    "CREATE INDEX ASYNC i ON t USING btree (a)", "CREATE TABLE t (a int) WITHOUT OIDS",
    "CREATE VIEW v WITH (security_barrier) AS SELECT 1", "COPY t TO STDOUT",
    "CALL sys.wait_for_job('abc')", "CREATE OR REPLACE VIEW v AS SELECT 1",
])
def test_inferred_rules_leave_these_alone(sql: str) -> None:
    assert refused(sql) is None


def test_user_types_are_named() -> None:
    assert one("CREATE TABLE t (a mood, b public.dom, c int, d pg_catalog.text, e text[])"
               ).user_types == (("mood",), ("public", "dom"))
    assert one("SELECT 'x'::mood, 1::bigint, 'y'::information_schema.sql_identifier"
               ).user_types == (("mood",),)
    assert one("CREATE TABLE t (id serial, a t2.col%TYPE)").user_types == ()
