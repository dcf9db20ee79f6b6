"""What the official projects' suites (green on real DSQL clusters) expect of an endpoint, held
against dsqlkit local: ``sys.current_session_id()``, and ``CREATE INDEX ASYNC`` indexes that the
catalog lists as soon as their statement commits, however many are submitted at once."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from dsqlkit.local import LocalDSQL

TEXT_OID = 25
BASE32 = set("abcdefghijklmnopqrstuvwxyz234567")


def conn(ep: LocalDSQL, user: str = "admin") -> psycopg.Connection[tuple]:
    return psycopg.connect(ep.dsn(user), autocommit=True)  # type: ignore[arg-type]


@pytest.fixture
def table(dsql_local: LocalDSQL) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, a int, b text)")
        c.execute(f"INSERT INTO {name} SELECT g, g % 7, g::text FROM generate_series(1, 500) g")
    yield name
    with conn(dsql_local) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


def _indexes(c: psycopg.Connection[tuple], table: str) -> dict[str, bool]:
    """The table's indexes as pg_indexes lists them, with whether each is valid."""
    rows = c.execute(
        "SELECT x.indexname, i.indisvalid FROM pg_indexes x JOIN pg_class k "
        "ON k.relname = x.indexname JOIN pg_index i ON i.indexrelid = k.oid "
        "WHERE x.tablename = %s", [table]).fetchall()
    return {name: valid for name, valid in rows}


# ---------------------------------------------------------------- sys.current_session_id()


def test_current_session_id_is_stable_per_session_and_distinct(dsql_local: LocalDSQL) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        cur = a.execute("SELECT sys.current_session_id()")
        assert cur.description is not None
        assert cur.description[0].name == "current_session_id"
        assert cur.description[0].type_code == TEXT_OID
        (first,) = cur.fetchone()  # type: ignore[misc]
        assert len(first) == 26 and set(first) <= BASE32
        a.execute("BEGIN")
        assert a.execute("SELECT sys.current_session_id()").fetchone() == (first,)
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("COMMIT")
        assert a.execute("SELECT sys.current_session_id()").fetchone() == (first,)
        (other,) = b.execute("SELECT sys.current_session_id()").fetchone()  # type: ignore[misc]
        assert other != first
    with conn(dsql_local) as c:
        (later,) = c.execute("SELECT sys.current_session_id()").fetchone()  # type: ignore[misc]
        assert later not in (first, other)


async def test_current_session_id_reads_as_a_string_in_asyncpg(dsql_local: LocalDSQL) -> None:
    """The Tortoise adapter's pool tests read it through asyncpg, as session_id."""
    ctx = ssl.create_default_context(cafile=dsql_local.ca_path)
    c = await asyncpg.connect(host="localhost", port=dsql_local.port, user="admin",
                              database="postgres", password=dsql_local.token(), ssl=ctx)
    try:
        value = await c.fetchval("SELECT sys.current_session_id() AS session_id "
                                 "FROM pg_sleep(0)")
        assert isinstance(value, str) and len(value) == 26
        assert await c.fetchval("SELECT sys.current_session_id()") == value
    finally:
        await c.close()


# ---------------------------------------------------------------- CREATE INDEX ASYNC


def test_async_index_is_listed_when_its_statement_commits(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as c, conn(dsql_local) as other:
        c.execute("BEGIN")
        (job,) = c.execute(f"CREATE INDEX ASYNC {table}_a ON {table} (a)").fetchone()  # type: ignore[misc]
        # Inside the statement's transaction the index exists and is not valid yet: its job
        # cannot start before the COMMIT.
        assert _indexes(c, table) == {f"{table}_pkey": True, f"{table}_a": False}
        assert f"{table}_a" not in _indexes(other, table)
        c.execute("COMMIT")
        assert f"{table}_a" in _indexes(other, table)
        assert other.execute("SELECT job_type, object_name FROM sys.jobs WHERE job_id = %s",
                             [job]).fetchone() == ("INDEX_BUILD", f"{table}_a")
        assert c.execute("CALL sys.wait_for_job(%s)", [job]).fetchone() == (True,)
        assert _indexes(other, table)[f"{table}_a"] is True
        # A valid index serves queries again.
        plan = other.execute(f"EXPLAIN (COSTS OFF) SELECT id FROM {table} WHERE a = 3 "
                             "ORDER BY a").fetchall()
        assert any(f"{table}_a" in line for (line,) in plan)


def test_a_rolled_back_async_index_leaves_nothing(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        c.execute("BEGIN")
        (job,) = c.execute(f"CREATE INDEX ASYNC {table}_b ON {table} (b)").fetchone()  # type: ignore[misc]
        c.execute("ROLLBACK")
        assert _indexes(c, table) == {f"{table}_pkey": True}
        assert c.execute("SELECT count(*) FROM sys.jobs WHERE job_id = %s",
                         [job]).fetchone() == (0,)


def test_unnamed_and_if_not_exists_async_indexes(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as c:
        (j1,) = c.execute(f"CREATE INDEX ASYNC ON {table} (a, b)").fetchone()  # type: ignore[misc]
        assert f"{table}_a_b_idx" in _indexes(c, table)
        notices: list[psycopg.errors.Diagnostic] = []
        c.add_notice_handler(notices.append)
        (j2,) = c.execute(
            f"CREATE INDEX ASYNC IF NOT EXISTS {table}_a_b_idx ON {table} (b)").fetchone()  # type: ignore[misc]
        assert notices == []
        for job in (j1, j2):
            assert c.execute("CALL sys.wait_for_job(%s)", [job]).fetchone() == (True,)
        assert c.execute("SELECT object_name FROM sys.jobs WHERE job_id IN (%s, %s)",
                         [j1, j2]).fetchall() == [(f"{table}_a_b_idx",)] * 2
        assert _indexes(c, table) == {f"{table}_pkey": True, f"{table}_a_b_idx": True}


def test_two_async_indexes_back_to_back_both_end_up_built(
    dsql_local: LocalDSQL, table: str
) -> None:
    """A Django migration submits them back to back and does not wait: both must exist."""
    with conn(dsql_local) as c:
        jobs = [c.execute(f"CREATE INDEX ASYNC {table}_{col} ON {table} ({col})").fetchone()[0]  # type: ignore[index]
                for col in ("a", "b")]
        assert set(_indexes(c, table)) == {f"{table}_pkey", f"{table}_a", f"{table}_b"}
        for job in jobs:
            assert c.execute("CALL sys.wait_for_job(%s)", [job]).fetchone() == (True,)
        assert _indexes(c, table) == {f"{table}_pkey": True, f"{table}_a": True,
                                      f"{table}_b": True}


def test_builds_left_to_the_job_run_one_at_a_time_as_their_role(
    dsql_local: LocalDSQL, table: str
) -> None:
    """With dsqlkit.inline_index_builds off, each build is a CREATE INDEX CONCURRENTLY run by
    the job runner; two of them at once on one table could deadlock (1 run in 10 did, before
    the runner ran them one at a time). The runner runs them as the role that submitted them."""
    role = f"ix_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as su:
        su.execute(f"CREATE ROLE {role} LOGIN")
        su.execute(f"ALTER ROLE {role} SET dsqlkit.inline_index_builds = off")
        su.execute(f"ALTER TABLE {table} OWNER TO {role}")
        su.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    try:
        with conn(dsql_local) as admin:
            admin.execute(f"AWS IAM GRANT {role} TO 'arn:aws:iam::123456789012:role/{role}'")
        with conn(dsql_local, role) as c:
            jobs = [c.execute(f"CREATE INDEX ASYNC {table}_{n} ON {table} ({col})").fetchone()[0]  # type: ignore[index]
                    for n, col in enumerate(("a", "b", "a, b", "b, a"))]
            for job in jobs:
                assert c.execute("CALL sys.wait_for_job(%s)", [job]).fetchone() == (True,)
            assert c.execute("SELECT count(*) FROM sys.jobs WHERE job_id = ANY(%s) AND "
                             "status = 'completed'", [jobs]).fetchone() == (4,)
            assert all(_indexes(c, table).values()) and len(_indexes(c, table)) == 5
    finally:
        with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as su:
            su.execute(f"ALTER TABLE {table} OWNER TO admin")
            su.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
            su.execute("DELETE FROM dsqlkit_internal.dsqlkit_iam_mappings WHERE pg_role_oid = "
                       "(SELECT oid FROM pg_roles WHERE rolname = %s)", [role])
            su.execute(f"DROP ROLE {role}")


def test_only_the_tables_owner_may_index_it(dsql_local: LocalDSQL, table: str) -> None:
    """The build runs with the caller's privileges, never the endpoint's."""
    role = f"nx_{uuid.uuid4().hex[:8]}"
    with conn(dsql_local) as admin:
        admin.execute(f"CREATE ROLE {role} WITH LOGIN")
        admin.execute(f"AWS IAM GRANT {role} TO 'arn:aws:iam::123456789012:role/{role}'")
    try:
        with conn(dsql_local, role) as c, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match=f"must be owner of table {table}"):
            c.execute(f"CREATE INDEX ASYNC {table}_a ON {table} (a)")
        with conn(dsql_local) as admin:
            assert _indexes(admin, table) == {f"{table}_pkey": True}
    finally:
        with conn(dsql_local) as admin:
            admin.execute(f"AWS IAM REVOKE {role} FROM 'arn:aws:iam::123456789012:role/{role}'")
            admin.execute(f"DROP ROLE {role}")
