"""The endpoint's objects in the backend: an older data directory upgrades in place at start,
and the job runner runs only the statements jobs are made of."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from dsqlkit.local import LocalDSQL
from dsqlkit.local.backend import ManagedPostgres
from dsqlkit.local.jobs import JobRefused, check_statement

CATALOG_V3 = Path(__file__).parent / "data" / "catalog_v3.sql"
ARN = "arn:aws:iam::123456789012:role/app"


def _roles(su: psycopg.Connection[tuple]) -> dict[str, tuple[bool, bool, bool, bool]]:
    rows = su.execute("SELECT rolname, rolsuper, rolcreaterole, rolcanlogin, rolbypassrls "
                      "FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'").fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _member_of(su: psycopg.Connection[tuple], role: str) -> set[str]:
    return {r[0] for r in su.execute(
        "SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
        "JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = %s", [role]).fetchall()}


def test_a_catalog_version_3_data_directory_is_upgraded_in_place(tmp_path: Path) -> None:
    # A data directory as catalog version 3 left it, after a client used what it allowed:
    # admin a superuser, app made one and given server files, the endpoint role's name taken.
    pg = ManagedPostgres(tmp_path / "pgdata", durable=False)
    address = pg.start()
    try:
        with psycopg.connect(address.dsn(), autocommit=True) as su:
            su.execute(CATALOG_V3.read_text().encode())
        with psycopg.connect(address.dsn("admin"), autocommit=True) as admin:
            admin.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
            admin.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g")
            admin.execute("CREATE ROLE app LOGIN")
            admin.execute("CREATE ROLE old_role LOGIN")
            admin.execute("SELECT sys.dsqlkit_iam('grant', 'app', %s)", [ARN])
            admin.execute("ALTER ROLE app SUPERUSER")
            admin.execute("GRANT pg_read_server_files TO app")
            admin.execute("CREATE ROLE helper NOLOGIN BYPASSRLS")
            admin.execute("GRANT helper TO app")
            admin.execute("GRANT postgres TO admin")
            admin.execute("CREATE ROLE dsqlkit_endpoint LOGIN")
            admin.execute("GRANT dsqlkit_endpoint TO app")
            # A build submitted but not yet run when the old endpoint stopped.
            admin.execute("SELECT sys.dsqlkit_submit_job('oldjob', 'INDEX_BUILD', "
                          "'CREATE INDEX CONCURRENTLY t_v ON t (v)', 't_v', 't')")
    finally:
        pg.stop()

    for _ in range(2):  # the second start finds everything in place
        with LocalDSQL(tmp_path, port=0) as ep, \
                psycopg.connect(ep.backend_dsn, autocommit=True) as su:
            roles = _roles(su)
            assert roles["admin"] == (False, True, True, False)
            assert roles["app"] == (False, False, True, False)
            assert roles["helper"][0] is False and roles["helper"][3] is False
            assert roles["dsqlkit_endpoint"] == (False, False, False, False)
            assert _member_of(su, "app") == {"helper"}
            assert "postgres" not in _member_of(su, "admin")
            assert su.execute("SELECT count(*) FROM pg_auth_members WHERE roleid = "
                              "'dsqlkit_endpoint'::regrole").fetchone() == (0,)
            # sys holds DSQL's objects only; the endpoint's moved to its own schema.
            assert {r[0] for r in su.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'sys'::regnamespace "
                "UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = "
                "'sys'::regnamespace").fetchall()} == {
                    "jobs", "iam_pg_role_mappings", "wait_for_job", "current_session_id"}
            assert su.execute("SELECT has_schema_privilege('app', 'dsqlkit_internal', "
                              "'USAGE')").fetchone() == (False,)

            with psycopg.connect(ep.dsn(), autocommit=True) as admin:
                # The pending job ran (its index was built at submission).
                assert admin.execute("CALL sys.wait_for_job('oldjob')").fetchone() == (True,)
                assert admin.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                                     "'t_v'::regclass").fetchone() == (True,)
                # The limit triggers made before the upgrade still count.
                with pytest.raises(psycopg.errors.ProgramLimitExceeded):
                    admin.execute("INSERT INTO t SELECT g, g FROM generate_series(11, 3011) g")
                admin.execute("GRANT SELECT ON t TO app")
                # admin manages the roles it made as a superuser.
                admin.execute("ALTER ROLE old_role NOLOGIN")
            # The mapping survived: app logs in, with what it was granted and no more.
            with psycopg.connect(ep.dsn("app"), autocommit=True) as app:
                assert app.execute("SELECT count(*) FROM t").fetchone() == (10,)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute("SELECT pg_read_file('/etc/hostname')")


@pytest.mark.parametrize(("job_type", "statement"), [
    ("INDEX_BUILD", "CREATE INDEX CONCURRENTLY i ON t (a)"),
    ("INDEX_BUILD", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON s.t ((lower(b)))"),
    ("VALIDATE_CONSTRAINT", "ALTER TABLE t VALIDATE CONSTRAINT c"),
])
def test_the_runner_runs_the_statements_jobs_are_made_of(job_type: str, statement: str) -> None:
    check_statement(job_type, statement)


@pytest.mark.parametrize(("job_type", "statement"), [
    ("INDEX_BUILD", "CREATE INDEX i ON t (a)"),
    ("INDEX_BUILD", "CREATE INDEX CONCURRENTLY i ON t (a); ALTER ROLE app SUPERUSER"),
    ("INDEX_BUILD", "RESET ROLE"),
    ("INDEX_BUILD", "ALTER TABLE t VALIDATE CONSTRAINT c"),
    ("VALIDATE_CONSTRAINT", "ALTER TABLE t VALIDATE CONSTRAINT c, OWNER TO app"),
    ("VALIDATE_CONSTRAINT", "CREATE INDEX CONCURRENTLY i ON t (a)"),
    ("VALIDATE_CONSTRAINT", "not sql"),
    ("DROP", "DROP INDEX i"),
])
def test_the_runner_refuses_any_other_statement(job_type: str, statement: str) -> None:
    with pytest.raises(JobRefused):
        check_statement(job_type, statement)
