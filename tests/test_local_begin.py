"""A plain BEGIN is answered by the endpoint and sent to PostgreSQL with the next message.

What a client sees must be exactly what PostgreSQL would have answered; the backend session
only enters its transaction when the first statement after BEGIN arrives.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from clock_support import settles
from dsqlkit.local import LocalDSQL, wire


@pytest.fixture
def table(dsql_local: LocalDSQL) -> Iterator[str]:
    name = f"begin_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    yield name
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def status(conn: psycopg.Connection[tuple[object, ...]]) -> pq.TransactionStatus:
    return conn.info.transaction_status


def backend_state(ep: LocalDSQL, pid: int) -> str:
    with psycopg.connect(ep.backend_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None
    return str(row[0])


def test_backend_enters_the_transaction_with_the_first_statement(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        cur = conn.execute("BEGIN")
        assert cur.statusmessage == "BEGIN"
        assert status(conn) == pq.TransactionStatus.INTRANS
        assert backend_state(dsql_local, pid) == "idle"
        conn.execute("SELECT 1")
        assert backend_state(dsql_local, pid) == "idle in transaction"
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
        assert status(conn) == pq.TransactionStatus.IDLE
        assert backend_state(dsql_local, pid) == "idle"


@pytest.mark.parametrize(("text", "tag"), [
    ("BEGIN", "BEGIN"), ("begin;", "BEGIN"), ("Begin  Work", "BEGIN"),
    ("BEGIN TRANSACTION", "BEGIN"), ("start transaction", "START TRANSACTION"),
])
def test_answer_is_postgresql_s(dsql_local: LocalDSQL, text: str, tag: str) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        assert conn.execute(text).statusmessage == tag
        assert status(conn) == pq.TransactionStatus.INTRANS
        assert conn.execute("ROLLBACK").statusmessage == "ROLLBACK"


def test_begin_with_options_goes_to_the_backend_at_once(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert backend_state(dsql_local, int(row[0])) == "idle in transaction"
        conn.execute("ROLLBACK")


def test_commit_and_rollback_of_a_deferred_transaction(dsql_local: LocalDSQL, table: str) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'kept')")
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (2, 'undone')")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        assert conn.execute("COMMIT").statusmessage == "COMMIT"  # an empty transaction
        assert conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall() == [(1,)]


def test_the_transaction_sees_one_snapshot(dsql_local: LocalDSQL, table: str) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as a, \
            psycopg.connect(dsql_local.dsn(), autocommit=True) as b:
        a.execute("BEGIN")
        b.execute(f"INSERT INTO {table} VALUES (1, 'before the first read')")
        # PostgreSQL takes the snapshot at the first statement, not at BEGIN: so does this.
        assert a.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        b.execute(f"INSERT INTO {table} VALUES (2, 'after it')")
        assert a.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        a.execute("COMMIT")


def test_refused_and_failing_first_statements(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SAVEPOINT s")  # refused by the endpoint, before the backend
        assert status(conn) == pq.TransactionStatus.INERROR
        assert conn.execute("ROLLBACK").statusmessage == "ROLLBACK"
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here")
        assert status(conn) == pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pipelined_queries_answer_in_order(raw_client: type, dsql_local: LocalDSQL,
                                           table: str) -> None:
    c = raw_client()
    c.login(dsql_local)
    c.send(wire.query("BEGIN") + wire.query(f"INSERT INTO {table} VALUES (7, 'x')")
           + wire.query("COMMIT") + wire.query("BEGIN") + wire.query("BEGIN"))
    seen = []
    for _ in range(5):
        msgs = c.read_until(wire.READY_FOR_QUERY)
        tags = [body[:-1].decode() for mtype, body in msgs if mtype == wire.COMMAND_COMPLETE]
        notices = [mtype for mtype, _ in msgs if mtype == wire.NOTICE_RESPONSE]
        seen.append((tags, len(notices), chr(msgs[-1][1][0])))
    # The second BEGIN in a row is PostgreSQL's own answer: a warning, still in the block.
    assert seen == [(["BEGIN"], 0, "T"), (["INSERT 0 1"], 0, "T"), (["COMMIT"], 0, "I"),
                    (["BEGIN"], 0, "T"), (["BEGIN"], 1, "T")]
    c.send(wire.query("ROLLBACK"))
    assert chr(c.read_until(wire.READY_FOR_QUERY)[-1][1][0]) == "I"
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        assert conn.execute(f"SELECT v FROM {table}").fetchall() == [("x",)]


def test_extended_protocol_after_begin(dsql_local: LocalDSQL, table: str) -> None:
    with psycopg.connect(dsql_local.dsn()) as conn:  # psycopg sends BEGIN, then Parse/Bind
        with conn.pipeline():
            for i in range(5):
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", [i, str(i)])
        conn.commit()
        with conn.transaction():
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE id > %s", [1]).fetchone() \
                == (3,)


def test_disconnect_after_begin_leaves_nothing_open(dsql_local: LocalDSQL) -> None:
    conn = psycopg.connect(dsql_local.dsn(), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    conn.execute("BEGIN")
    conn.close()
    with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as direct:
        def gone() -> bool:
            left = direct.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                  [row[0]]).fetchone()
            assert left is None or left[0] != "idle in transaction"
            return left is None

        settles(gone, "the backend session to end")
