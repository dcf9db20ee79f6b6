"""Dry runs (dsqlkit.local.occ.dryrun) answer what the statement would have: for a table of
statement shapes, each real statement runs on the backend PostgreSQL in a transaction that is
rolled back, then its dry run, and the command tag's count and the returned rows must match."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import psycopg
import pytest

from dsqlkit.local import LocalDSQL
from dsqlkit.local.occ.dryrun import dry_run

Rows = list[tuple[str | None, ...]]

SETUP = [
    "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, g text)",
    "INSERT INTO t SELECT i, i * 10, 'g' || (i % 3) FROM generate_series(1, 10) i",
    # Several rows of u join the same row of t: PostgreSQL changes and returns it once.
    "CREATE TABLE u (id int, w int)",
    "INSERT INTO u VALUES (1, 100), (1, 101), (1, 102), (2, 200), (3, 300), (3, 300), (11, 1)",
    "CREATE TABLE w (id int, x int)",
    "INSERT INTO w VALUES (1, 5), (1, 6), (3, 7)",
    "CREATE VIEW tv AS SELECT id, v, g FROM t",
]

# (statement, parameters, compare rows): the rows are compared when they do not depend on
# which of several join partners PostgreSQL happens to pick (as sorted multisets).
SHAPES: list[tuple[str, Sequence[str], bool]] = [
    ("UPDATE t SET v = v + 1 WHERE id <= 3", (), True),
    ("UPDATE t SET v = u.w FROM u WHERE t.id = u.id", (), True),
    ("UPDATE t SET v = 0 FROM u WHERE t.id = u.id AND u.w > 150", (), True),
    ("UPDATE t SET v = u.w + w.x FROM u, w WHERE t.id = u.id AND u.id = w.id", (), True),
    ("UPDATE t SET v = 1 FROM u JOIN w ON u.id = w.id WHERE t.id = u.id", (), True),
    ("UPDATE t AS x SET v = 1 FROM u WHERE x.id = u.id RETURNING x.id, x.v", (), True),
    ("UPDATE t SET v = u.w FROM u WHERE t.id = u.id RETURNING t.id", (), True),
    ("UPDATE t SET v = u.w FROM u WHERE t.id = u.id RETURNING t.id, t.v", (), False),
    ("UPDATE t SET v = v + 1 FROM u WHERE t.id = u.id RETURNING t.v + u.w AS s", (), False),
    ("UPDATE t SET v = 7 FROM (SELECT id FROM u GROUP BY id) s WHERE t.id = s.id "
     "RETURNING t.id, v", (), True),
    ("UPDATE t SET v = 1 WHERE id IN (SELECT id FROM u)", (), True),
    ("UPDATE t SET v = (SELECT max(w) FROM u WHERE u.id = t.id) "
     "WHERE EXISTS (SELECT FROM u WHERE u.id = t.id) RETURNING id, v", (), True),
    ("WITH s AS (SELECT id FROM u WHERE w < 300) UPDATE t SET v = 2 FROM s WHERE t.id = s.id",
     (), True),
    ("WITH s AS (SELECT id FROM u) UPDATE t SET v = 2 WHERE id IN (SELECT id FROM s) "
     "RETURNING id, v", (), True),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 4) "
     "UPDATE t SET v = r.n FROM r, u WHERE t.id = r.n AND u.id = r.n RETURNING t.id", (), True),
    ("UPDATE t SET (v, g) = (v * 2, 'x') WHERE id = $1 RETURNING v, g", ("4",), True),
    ("UPDATE t SET v = $1 FROM u WHERE t.id = u.id AND u.w > $2", ("5", "101"), True),
    ("UPDATE t SET v = $1 FROM u WHERE t.id = u.id AND u.w > $2 RETURNING t.id, t.v",
     ("5", "0"), True),
    ("UPDATE ONLY t SET v = 3 FROM u WHERE t.id = u.id", (), True),
    ("UPDATE tv SET v = 1 FROM u WHERE tv.id = u.id RETURNING tv.id", (), True),
    ("UPDATE t SET v = 1 FROM u WHERE t.id = u.id AND u.w < 0", (), True),
    ("UPDATE t SET v = t2.v FROM t AS t2 WHERE t.id = t2.id - 1 RETURNING t.id, t.v", (), True),
    ("DELETE FROM t WHERE id > 8", (), True),
    ("DELETE FROM t USING u WHERE t.id = u.id", (), True),
    ("DELETE FROM t USING u, w WHERE t.id = u.id AND w.id = u.id", (), True),
    ("DELETE FROM t USING u WHERE t.id = u.id RETURNING t.id, t.v", (), True),
    ("DELETE FROM t x USING u WHERE x.id = u.id RETURNING x.*", (), True),
    ("DELETE FROM t USING u WHERE t.id = u.id RETURNING *", (), False),
    ("DELETE FROM t USING w WHERE t.id = w.id AND w.x > 5 RETURNING *", (), True),
    ("DELETE FROM t WHERE id IN (SELECT id FROM u) RETURNING *", (), True),
    ("DELETE FROM t AS x WHERE x.id = 2 RETURNING *", (), True),
    ("WITH s AS (SELECT 1 AS id UNION ALL SELECT 1) DELETE FROM t USING s "
     "WHERE t.id = s.id RETURNING t.id", (), True),
    ("DELETE FROM t USING u JOIN w ON u.id = w.id WHERE t.id = u.id", (), True),
    ("DELETE FROM t USING t AS t2 WHERE t.id = t2.id - 1 AND t2.v > $1", ("40",), True),
    ("DELETE FROM tv USING u WHERE tv.id = u.id RETURNING tv.id", (), True),
    ("SELECT id, v FROM t WHERE id < 3 FOR UPDATE", (), True),
    ("SELECT t.id FROM t JOIN u ON t.id = u.id FOR UPDATE OF t", (), True),
    ("SELECT id FROM t WHERE v > $1 FOR KEY SHARE", ("50",), True),
]

# Shapes that have no dry run: the endpoint reports the conflict at the statement.
NO_DRY_RUN = [
    "INSERT INTO t VALUES (99, 1, 'x')",
    "WITH d AS (DELETE FROM u RETURNING id) UPDATE t SET v = 1 FROM d WHERE t.id = d.id",
    "WITH s AS (SELECT id FROM u FOR UPDATE) UPDATE t SET v = 1 FROM s WHERE t.id = s.id",
    "UPDATE t SET v = 1 WHERE CURRENT OF c",
    "UPDATE t SET v = 1 RETURNING *",
    "UPDATE t SET v = DEFAULT",
    "UPDATE t SET (v, g) = (SELECT 1, 'x')",
    "DELETE FROM t RETURNING *, 1",
    "SELECT 1",
]


def _run(conn: psycopg.Connection[tuple], sql: str, params: Sequence[str]) -> tuple[str, Rows]:
    """The command tag and rows (text) of ``sql``, its ``$n`` bound to ``params``."""
    res = conn.pgconn.exec_params(sql.encode(), [p.encode() for p in params])
    if res.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
        raise AssertionError(f"{sql}: {res.error_message.decode()}")
    rows = [tuple(None if (v := res.get_value(r, c)) is None else v.decode()
                  for c in range(res.nfields)) for r in range(res.ntuples)]
    return (res.command_status or b"").decode(), rows


@pytest.fixture(scope="module")
def backend(dsql_local: LocalDSQL) -> Iterator[psycopg.Connection[tuple]]:
    schema = f"dry_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        for sql in SETUP:
            conn.execute(sql)
        try:
            yield conn
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize(("sql", "params", "same_rows"), SHAPES)
def test_a_dry_run_answers_what_postgresql_does(backend: psycopg.Connection[tuple], sql: str,
                                                params: Sequence[str], same_rows: bool) -> None:
    dry = dry_run(sql)
    assert dry is not None
    _run(backend, "BEGIN", ())
    try:
        tag, rows = _run(backend, sql, params)
    finally:
        _run(backend, "ROLLBACK", ())
    count = int(tag.rsplit(" ", 1)[1])
    assert rows or count == 0 or not dry.keep_rows
    _, dry_rows = _run(backend, dry.sql, params)
    assert len(dry_rows) == count, (dry.sql, tag, dry_rows)
    if dry.tag is not None:
        assert tag.split()[0] == dry.tag
    if dry.keep_rows:
        assert len(dry_rows[0]) == len(rows[0]) if rows else True
        if same_rows:
            assert sorted(dry_rows, key=repr) == sorted(rows, key=repr)
    # The table really had several join partners for some rows: the count is not the join's.
    assert _run(backend, "SELECT count(*) FROM t", ())[1] == [("10",)]


def test_the_shapes_include_joins_that_postgresql_counts_once(
        backend: psycopg.Connection[tuple]) -> None:
    _run(backend, "BEGIN", ())
    try:
        assert _run(backend, "UPDATE t SET v = u.w FROM u WHERE t.id = u.id", ())[0] == "UPDATE 3"
        assert _run(backend, "SELECT count(*) FROM t JOIN u ON t.id = u.id", ())[1] == [("6",)]
    finally:
        _run(backend, "ROLLBACK", ())


@pytest.mark.parametrize("sql", NO_DRY_RUN)
def test_shapes_without_a_dry_run(sql: str) -> None:
    assert dry_run(sql) is None
