"""dsqlkit local behaves like DSQL beyond the recorded corpus: commit-time OCC with lock-free
answers, schema versions, async jobs, IAM role mappings, limits and fault injection."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from dsqlkit.local import LocalDSQL

OC000 = "change conflicts with another transaction (OC000)"
OC001 = "schema has been updated by another transaction (OC001)"


def conn(ep: LocalDSQL, user: str = "admin", **kw: object) -> psycopg.Connection[tuple]:
    return psycopg.connect(ep.dsn(user), autocommit=True, **kw)  # type: ignore[arg-type]


@pytest.fixture
def table(dsql_local: LocalDSQL) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        c.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 10) g")
    yield name
    with conn(dsql_local) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


# ---------------------------------------------------------------- OCC at COMMIT


def test_loser_gets_normal_answers_then_fails_at_commit(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        upd = f"UPDATE {table} SET v = v + %s WHERE id = 1 RETURNING v"
        assert a.execute(upd, [1]).fetchone() == (1,)
        started = time.monotonic()
        # b must wait on a's row lock in PostgreSQL; DSQL answers at once, and so does the
        # endpoint after at most lock_timeout, with what the UPDATE would have returned.
        assert b.execute(upd, [10]).fetchone() == (10,)
        assert time.monotonic() - started < 5.0
        assert b.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 2").rowcount == 1
        a.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure, match=r"\(OC000\)") as info:
            b.execute("COMMIT")
        assert str(info.value) == OC000
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert a.execute(f"SELECT v FROM {table} WHERE id IN (1, 2) ORDER BY id").fetchall() == [
            (1,), (0,)]


def test_a_prepared_commit_of_a_loser_fails_too(dsql_local: LocalDSQL, table: str) -> None:
    # A COMMIT prepared by name (extended protocol) fails at its Bind, twice in a row: the
    # second time reuses the endpoint's own prepared ROLLBACK.
    with conn(dsql_local) as a, conn(dsql_local) as b:
        for round_ in range(2):
            a.execute("BEGIN")
            b.execute("BEGIN")
            upd = f"UPDATE {table} SET v = v + %s WHERE id = 1"
            a.execute(upd, [1])
            b.execute(upd, [10])
            a.execute("COMMIT", prepare=True)
            with pytest.raises(psycopg.errors.SerializationFailure, match=r"\(OC000\)"):
                b.execute("COMMIT", prepare=True)
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert b.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (round_ + 1,)
        # A prepared COMMIT with nothing against it commits.
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 100 WHERE id = 2")
        b.execute("COMMIT", prepare=True)
        assert a.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (100,)


def test_a_loser_keeps_its_snapshot_after_losing(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 5 WHERE id = 3")
        a.execute(f"UPDATE {table} SET v = 7 WHERE id = 4")  # autocommit, commits first
        # b's write meets a's committed one: b has lost, and answers on from its snapshot
        # (docs/local.md: its writes from before it lost are gone; later ones are seen).
        assert b.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 4 RETURNING v").fetchone() \
            == (1,)
        assert b.execute(f"SELECT v FROM {table} WHERE id = 4").fetchone() == (0,)
        assert b.execute(f"UPDATE {table} SET v = 8 WHERE id = 6").rowcount == 1
        assert b.execute(f"SELECT v FROM {table} WHERE id = 6").fetchone() == (8,)
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("COMMIT")
        assert a.execute(f"SELECT v FROM {table} WHERE id IN (3, 4, 6) ORDER BY id").fetchall() \
            == [(0,), (7,), (0,)]


def test_rollback_of_a_losing_transaction_succeeds(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 5")
        b.execute(f"DELETE FROM {table} WHERE id = 5")
        a.execute("COMMIT")
        b.execute("ROLLBACK")
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_write_skew_without_for_update_commits(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"SELECT sum(v) FROM {table}")
        b.execute(f"SELECT sum(v) FROM {table}")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 6")
        b.execute(f"UPDATE {table} SET v = 1 WHERE id = 7")
        a.execute("COMMIT")
        b.execute("COMMIT")


def test_statement_mode_reports_at_the_statement(dsql_local: LocalDSQL, table: str) -> None:
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   occ_mode="statement") as ep, conn(ep) as a, conn(ep) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 8")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.execute(f"UPDATE {table} SET v = 2 WHERE id = 8")
        assert str(info.value) == OC000
        a.execute("COMMIT")
        b.execute("ROLLBACK")


def test_no_lost_update_under_concurrency(dsql_local: LocalDSQL, table: str) -> None:
    """Read-then-write increments from 8 threads: every committed increment is kept."""
    committed = [0]
    lock = threading.Lock()

    def work() -> None:
        with psycopg.connect(dsql_local.dsn()) as c:
            for _ in range(25):
                try:
                    with c.transaction():
                        (v,) = c.execute(f"SELECT v FROM {table} WHERE id = 9").fetchone()  # type: ignore[misc]
                        c.execute(f"UPDATE {table} SET v = %s WHERE id = 9", [v + 1])
                except psycopg.errors.SerializationFailure:
                    continue
                with lock:
                    committed[0] += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with conn(dsql_local) as c:
        assert c.execute(f"SELECT v FROM {table} WHERE id = 9").fetchone() == (committed[0],)
    assert 0 < committed[0] < 200  # some committed, and some conflicts happened


# ---------------------------------------------------------------- schema versions


def test_ddl_fails_sessions_that_used_the_table_once_with_oc001(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b, conn(dsql_local) as c:
        b.execute(f"SELECT count(*) FROM {table}")  # b has the table in its catalog
        c.execute("SELECT 1")  # c has not used it
        a.execute(f"ALTER TABLE {table} ADD COLUMN note text")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.execute(f"SELECT count(*) FROM {table}")
        assert str(info.value) == OC001
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)  # refreshed
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)
        a.execute(f"SELECT note FROM {table} LIMIT 1")  # the author is not affected


def test_ddl_on_a_table_during_a_transaction_that_used_it_fails_its_commit(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 3 WHERE id = 10")
        # DSQL's DDL takes no lock: it does not wait for b, and b loses at COMMIT.
        a.execute(f"ALTER TABLE {table} ADD COLUMN note text")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.execute("COMMIT")
        assert str(info.value) == OC001
        assert a.execute(f"SELECT v FROM {table} WHERE id = 10").fetchone() == (0,)


def test_ddl_does_not_wait_for_a_reader(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        b.execute("BEGIN")
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)
        # PostgreSQL would make the ALTER wait for b's table lock until b ends.
        a.execute(f"ALTER TABLE {table} ADD COLUMN note text")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.execute(f"SELECT count(*) FROM {table}")
        assert str(info.value) == OC001
        b.execute("ROLLBACK")


def test_unrelated_ddl_raises_no_oc001(dsql_local: LocalDSQL, table: str) -> None:
    """What the official suites, green on real clusters, do around other sessions' DDL."""
    other = f"{table}_other"
    with conn(dsql_local) as a, conn(dsql_local) as b:
        b.execute(f"SELECT count(*) FROM {table}")
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 3 WHERE id = 10")
        a.execute(f"CREATE TABLE {other} (id int PRIMARY KEY)")
        b.execute("COMMIT")  # the DDL was about another table
        b.execute("BEGIN")
        a.execute(f"DROP TABLE {other}")
        b.execute("COMMIT")
        b.execute("BEGIN")
        b.execute("SELECT 1")
        a.execute(f"CREATE TABLE {other} (id int PRIMARY KEY)")
        b.execute("COMMIT")
        for statement in ("SELECT 1", "DEALLOCATE ALL", "RESET ALL", "SET search_path = public"):
            a.execute(f"DROP TABLE {other}")
            a.execute(f"CREATE TABLE {other} (id int PRIMARY KEY)")
            b.execute(statement)
        # A table created while b was idle: b writes it at once.
        b.execute(f"INSERT INTO {other} VALUES (1)")
        # Dropped and created again (a test suite's fixtures): a new table for everyone.
        a.execute(f"DROP TABLE {other}")
        a.execute(f"CREATE TABLE {other} (id int PRIMARY KEY, note text)")
        b.execute(f"INSERT INTO {other} VALUES (1, 'again')")
        a.execute(f"DROP TABLE {other}")


def test_strict_schema_conflicts_fail_every_other_session(
    dsql_local: LocalDSQL, table: str
) -> None:
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   schema_conflicts="strict") as ep, conn(ep) as a, conn(ep) as b:
        b.execute("SELECT 1")
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 3 WHERE id = 10")
        a.execute(f"CREATE TABLE {table}_strict (id int PRIMARY KEY)")
        try:
            with pytest.raises(psycopg.errors.SerializationFailure) as info:
                b.execute("COMMIT")
            assert str(info.value) == OC001
            a.execute(f"CREATE TABLE {table}_strict2 (id int PRIMARY KEY)")
            with pytest.raises(psycopg.errors.SerializationFailure):
                b.execute("SELECT 1")
            b.execute("SELECT 1")
        finally:
            a.execute(f"DROP TABLE IF EXISTS {table}_strict")
            a.execute(f"DROP TABLE IF EXISTS {table}_strict2")


def test_schema_conflicts_can_be_switched_off(dsql_local: LocalDSQL, table: str) -> None:
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   schema_conflicts=False) as ep, conn(ep) as a, conn(ep) as b:
        b.execute(f"SELECT count(*) FROM {table}")
        a.execute(f"ALTER TABLE {table} ADD COLUMN quiet text")
        b.execute(f"SELECT count(*) FROM {table}")


# ---------------------------------------------------------------- limits


def test_row_limit_in_autocommit_writes_nothing(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            c.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(100, 3100) g")
        assert str(info.value) == "transaction row limit exceeded"
        assert info.value.diag.context is None  # the endpoint's trigger stays invisible
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_row_limit_counts_across_statements(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        c.execute("BEGIN")
        c.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(100, 2099) g")
        c.execute(f"UPDATE {table} SET v = 1 WHERE id >= 100 AND id < 1100")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(f"DELETE FROM {table} WHERE id = 1")
        c.execute("ROLLBACK")


def test_size_limit_at_commit(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {table}_big (id int PRIMARY KEY, body text)")
        try:
            c.execute("BEGIN")
            for i in range(12):
                c.execute(f"INSERT INTO {table}_big VALUES (%s, %s)",
                          [i, os.urandom(512 * 1024).hex()])  # 1 MiB each, incompressible
            with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
                c.execute("COMMIT")
            assert info.value.diag.message_primary == "transaction size limit 10mb exceeded"
            assert info.value.diag.message_detail.startswith("Current transaction size ")
            assert c.execute(f"SELECT count(*) FROM {table}_big").fetchone() == (0,)
        finally:
            c.execute(f"DROP TABLE {table}_big")


def test_transaction_age_limit(dsql_local: LocalDSQL, table: str) -> None:
    # Transaction ages run on the endpoint's injected clock: the test moves it.
    now = [1000.0]
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   transaction_age_limit=1.0, clock=lambda: now[0]) as ep, conn(ep) as c:
        c.execute("BEGIN")
        c.execute(f"SELECT v FROM {table} WHERE id = 1")
        now[0] += 1.0
        c.execute(f"SELECT v FROM {table} WHERE id = 1")  # at the limit, not past it
        now[0] += 0.2
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            c.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert info.value.diag.message_primary == "transaction age limit of 1s exceeded"
        assert (info.value.diag.message_detail or "").startswith("Current transaction age ")
        assert c.execute("COMMIT").statusmessage == "ROLLBACK"


# ---------------------------------------------------------------- async jobs


def test_create_index_async_job_lifecycle(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        cur = c.execute(f"CREATE INDEX ASYNC {table}_v ON {table} (v)")
        assert cur.statusmessage == "CREATE INDEX"
        assert [d.name for d in cur.description or []] == ["job_id"]
        (job_id,) = cur.fetchone()  # type: ignore[misc]
        assert len(job_id) == 26 and job_id.isalnum() and job_id.islower()
        status = c.execute("SELECT status, job_type FROM sys.jobs WHERE job_id = %s",
                           [job_id]).fetchone()
        assert status is not None and status[1] == "INDEX_BUILD"
        assert status[0] in ("submitted", "processing")
        done = c.execute("CALL sys.wait_for_job(%s)", [job_id])
        assert [d.name for d in done.description or []] == ["succeeded"]
        assert done.fetchone() == (True,)
        assert c.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid "
            "WHERE x.relname = %s", [f"{table}_v"]).fetchone() == (True,)
        assert c.execute("SELECT status, object_name FROM sys.jobs WHERE job_id = %s",
                         [job_id]).fetchone() == ("completed", f"{table}_v")


def test_failed_unique_index_job(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        (job_id,) = c.execute(
            f"CREATE UNIQUE INDEX ASYNC {table}_uv ON {table} (v)").fetchone()  # type: ignore[misc]
        assert c.execute("CALL sys.wait_for_job(%s)", [job_id]).fetchone() == (False,)
        assert c.execute("SELECT status, details FROM sys.jobs WHERE job_id = %s",
                         [job_id]).fetchone() == (
            "failed", "Found duplicate key while validating index for UCVs")


def test_sync_index_allowed_on_empty_table_when_asked(dsql_local: LocalDSQL) -> None:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)")
        try:
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                c.execute(f"CREATE INDEX {name}_v ON {name} (v)")
            c.execute("SET disable_sync_create_index = off")
            assert c.execute("SHOW disable_sync_create_index").fetchone() == ("off",)
            c.execute(f"CREATE INDEX {name}_v ON {name} (v)")
        finally:
            c.execute(f"DROP TABLE {name}")


# ---------------------------------------------------------------- roles and IAM


def test_custom_role_needs_login_and_an_iam_mapping(dsql_local: LocalDSQL) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    arn = f"arn:aws:iam::123456789012:role/{role}"
    with conn(dsql_local) as admin:
        with pytest.raises(psycopg.OperationalError, match=f"Role {role} does not exist"):
            psycopg.connect(dsql_local.dsn(role)).close()
        admin.execute(f"CREATE ROLE {role} WITH LOGIN")
        with pytest.raises(psycopg.OperationalError, match="has no IAM mapping"):
            psycopg.connect(dsql_local.dsn(role)).close()
        assert admin.execute(f"AWS IAM GRANT {role} TO '{arn}'").statusmessage == "AWS IAM GRANT"
        assert admin.execute(
            "SELECT arn, pg_role_name, grantor_pg_role_name FROM sys.iam_pg_role_mappings "
            "WHERE pg_role_name = %s", [role]).fetchone() == (arn, role, "admin")
        with psycopg.connect(dsql_local.dsn(role)) as app:
            assert app.execute("SELECT current_user").fetchone() == (role,)
        # The role's token must be DbConnect, not DbConnectAdmin.
        with pytest.raises(psycopg.OperationalError, match="Wrong user to action mapping"):
            psycopg.connect(dsql_local.dsn(role, password=dsql_local.token("admin"))).close()
        admin.execute(f"AWS IAM REVOKE {role} FROM '{arn}'")
        with pytest.raises(psycopg.OperationalError, match="has no IAM mapping"):
            psycopg.connect(dsql_local.dsn(role)).close()


def test_iam_grant_requires_admin_and_login(dsql_local: LocalDSQL) -> None:
    role = f"nl_{uuid.uuid4().hex[:8]}"
    with conn(dsql_local) as admin:
        admin.execute(f"CREATE ROLE {role}")
        with pytest.raises(psycopg.Error, match=f"role {role} must have the LOGIN attribute"):
            admin.execute(f"AWS IAM GRANT {role} TO 'arn:aws:iam::123456789012:role/x'")
        with pytest.raises(psycopg.Error, match="IAM role must look like an IAM ARN"):
            admin.execute(f"AWS IAM GRANT {role} TO 'not-an-arn'")


# ---------------------------------------------------------------- fault injection


def test_injected_faults_are_dsql_errors(dsql_local: LocalDSQL, table: str) -> None:
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   inject={"occ": 1.0}, seed=7) as ep, conn(ep) as c:
        c.execute("BEGIN")
        c.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            c.execute("COMMIT")
        assert str(info.value) == OC000
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   inject={"oc001": 1.0}) as ep, conn(ep) as c:
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            c.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert str(info.value) == OC001
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   inject={"auth-outage": 1.0}) as ep, pytest.raises(psycopg.OperationalError,
                       match="waking up cluster, please retry later"):
        conn(ep).close()
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   inject={"disconnect": 1.0}) as ep, conn(ep) as c:
        c.execute("BEGIN")
        with pytest.raises(psycopg.OperationalError):
            c.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")


def test_injection_is_deterministic_with_a_seed(dsql_local: LocalDSQL, table: str) -> None:
    def outcomes() -> list[bool]:
        with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                       inject={"occ": 0.5}, seed=42) as ep, conn(ep) as c:
            seen = []
            for _ in range(20):
                c.execute("BEGIN")
                c.execute(f"SELECT v FROM {table} WHERE id = 2")
                try:
                    c.execute("COMMIT")
                    seen.append(True)
                except psycopg.errors.SerializationFailure:
                    seen.append(False)
            return seen

    first = outcomes()
    assert first == outcomes()
    assert True in first and False in first


def test_inject_spec_is_validated() -> None:
    from dsqlkit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown fault"):
        LocalDSQL(ephemeral=True, inject="nope=0.1")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        LocalDSQL(ephemeral=True, inject="occ=2")
