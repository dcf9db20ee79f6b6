"""dsqlkit local's optimistic concurrency against a real backend: no statement waits on
another transaction, and of two colliding transactions the first to COMMIT wins, whichever
touched the row first (dsqlkit.local.occ.engine)."""

from __future__ import annotations

import struct
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from dsqlkit.local import LocalDSQL, wire

OC000 = "change conflicts with another transaction (OC000)"


def conn(ep: LocalDSQL) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    return psycopg.connect(ep.dsn(), autocommit=True)


@pytest.fixture
def table(dsql_local: LocalDSQL) -> Iterator[str]:
    name = f"o_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        c.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 10) g")
    yield name
    with conn(dsql_local) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


def loses(c: psycopg.Connection[tuple]) -> None:  # type: ignore[type-arg]
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        c.execute("COMMIT")
    assert str(info.value) == OC000
    assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_the_first_committer_wins_even_if_it_touched_the_row_second(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        assert a.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1 RETURNING v").fetchone() \
            == (1,)
        # PostgreSQL would make b wait for a's row lock; DSQL answers at once.
        assert b.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1 RETURNING v").fetchone() \
            == (10,)
        b.execute("COMMIT")
        loses(a)
        assert a.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (10,)


def test_an_autocommit_write_is_not_held_up_by_an_open_transaction(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 2")
        assert b.execute(f"UPDATE {table} SET v = 2 WHERE id = 2").rowcount == 1  # commits
        loses(a)
        assert a.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (2,)


def test_each_side_keeps_its_snapshot_and_its_own_writes(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b, conn(dsql_local) as c:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 5 WHERE id = 3")
        assert b.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 3 RETURNING v").fetchone() \
            == (1,)
        c.execute(f"UPDATE {table} SET v = 7 WHERE id = 4")  # after both snapshots
        # a made way for b, and reads its own write and its own snapshot again.
        assert a.execute(f"SELECT v FROM {table} WHERE id IN (3, 4) ORDER BY id").fetchall() == [
            (5,), (0,)]
        assert b.execute(f"SELECT v FROM {table} WHERE id IN (3, 4) ORDER BY id").fetchall() == [
            (1,), (0,)]
        a.execute("COMMIT")
        loses(b)
        assert c.execute(f"SELECT v FROM {table} WHERE id IN (3, 4) ORDER BY id").fetchall() == [
            (5,), (7,)]


def test_for_update_reader_committing_first_wins(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        assert b.execute(f"UPDATE {table} SET v = 9 WHERE id = 5").rowcount == 1
        assert a.execute(f"SELECT v FROM {table} WHERE id = 5 FOR UPDATE").fetchone() == (0,)
        a.execute("COMMIT")
        loses(b)


def test_for_key_share_against_a_delete(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        assert a.execute(f"SELECT id FROM {table} WHERE id = 6 FOR KEY SHARE").fetchone() == (6,)
        assert b.execute(f"DELETE FROM {table} WHERE id = 6").rowcount == 1
        a.execute("COMMIT")
        loses(b)
        assert a.execute(f"SELECT count(*) FROM {table} WHERE id = 6").fetchone() == (1,)


def test_a_non_key_update_does_not_conflict_with_key_share(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"SELECT id FROM {table} WHERE id = 7 FOR KEY SHARE")
        b.execute(f"UPDATE {table} SET v = 1 WHERE id = 7")
        b.execute("COMMIT")
        a.execute("COMMIT")


def test_opposite_order_writers_never_deadlock(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 8")
        b.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 9")
        a.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 9")
        b.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 8")
        b.execute("COMMIT")
        loses(a)
        assert b.execute(f"SELECT v FROM {table} WHERE id IN (8, 9) ORDER BY id").fetchall() == [
            (1,), (1,)]


def test_a_parked_transaction_with_prepared_statements_replays(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        upd = f"UPDATE {table} SET v = v + %s WHERE id = %s RETURNING v"
        for _ in range(2):  # the second round runs the statements prepared by the first
            a.execute("BEGIN")
            before = a.execute(f"SELECT v FROM {table} WHERE id = 10").fetchone()
            assert before is not None
            assert a.execute(upd, [1, 10], prepare=True).fetchone() == (before[0] + 1,)
            b.execute(f"SELECT v FROM {table} WHERE id = 10")
            b.execute("BEGIN")
            b.execute(upd, [100, 10], prepare=True)  # a makes way, and replays below
            assert a.execute(upd, [1, 10], prepare=True).fetchone() == (before[0] + 2,)
            a.execute("COMMIT")
            loses(b)


def test_a_replay_that_answers_differently_has_lost(dsql_local: LocalDSQL, table: str) -> None:
    # gen_random_uuid() gives another value when the parked transaction replays: the client
    # has seen the first one, so the transaction cannot go on (see docs/local.md).
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 1 RETURNING gen_random_uuid()")
        b.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")
        a.execute(f"SELECT v FROM {table} WHERE id = 1")
        loses(a)


def test_rollback_of_a_parked_transaction(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 1 WHERE id = 2")
        b.execute("BEGIN")
        b.execute(f"UPDATE {table} SET v = 2 WHERE id = 2")
        a.execute("ROLLBACK")
        b.execute("COMMIT")
        assert a.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (2,)


def test_hot_rows_conserve_money_without_waits_or_deadlocks(
    dsql_local: LocalDSQL, table: str
) -> None:
    """Eight threads move money between three rows in both directions; every transfer either
    commits or fails at COMMIT with OC000, and no money is created or lost."""
    errors: list[str] = []
    committed = [0]
    lock = threading.Lock()

    def work(seed: int) -> None:
        with psycopg.connect(dsql_local.dsn()) as c:
            for i in range(40):
                src, dst = (1 + (seed + i) % 3, 1 + (seed + i + 1) % 3)
                if (seed + i) % 2:
                    src, dst = dst, src
                try:
                    with c.transaction():
                        c.execute(f"UPDATE {table} SET v = v - 1 WHERE id = %s", [src])
                        c.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", [dst])
                except psycopg.errors.SerializationFailure as exc:
                    if str(exc) != OC000:
                        errors.append(str(exc))
                    continue
                except psycopg.Error as exc:
                    errors.append(f"{exc.sqlstate}: {exc}")
                    continue
                with lock:
                    committed[0] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert committed[0] > 0
    with conn(dsql_local) as c:
        assert c.execute(f"SELECT sum(v) FROM {table}").fetchone() == (0,)


def test_every_block_runs_at_repeatable_read(dsql_local: LocalDSQL) -> None:
    # Whatever the session's default says: here a function made behind the endpoint's back,
    # on the backend itself, changes it (DSQL refuses every client spelling of that).
    name = f"pick_rc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as backend:
        backend.execute(f"CREATE FUNCTION public.{name}() RETURNS text LANGUAGE sql AS $$ "
                        "SELECT set_config('default_transaction_isolation', 'read committed',"
                        " false) $$")
        backend.execute(f"GRANT EXECUTE ON FUNCTION public.{name}() TO PUBLIC")
        try:
            with conn(dsql_local) as a:
                a.execute(f"SELECT {name}()")
                assert a.execute("SHOW default_transaction_isolation").fetchone() == (
                    "read committed",)
                a.execute("BEGIN")
                level = a.execute("SHOW transaction_isolation").fetchone()
                a.execute("COMMIT")
            assert level == ("repeatable read",)
        finally:
            backend.execute(f"DROP FUNCTION public.{name}()")


def _bind(statement: str, *params: int) -> bytes:
    body = b"\0" + statement.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    for p in params:
        text = str(p).encode()
        body += struct.pack("!i", len(text)) + text
    return wire.message(wire.BIND, body + struct.pack("!h", 0))


_DESCRIBE_PORTAL = wire.message(wire.DESCRIBE, b"P\0")
_EXECUTE = wire.message(wire.EXECUTE, b"\0" + struct.pack("!i", 0))
_SYNC = wire.message(wire.SYNC)


def test_statements_prepared_by_a_refused_unit_stay_the_clients(
    dsql_local: LocalDSQL, table: str, raw_client: type
) -> None:
    # A driver that prepares two statements by name in the very unit PostgreSQL refuses (a
    # row committed since the snapshot): the unit answers from its dry run, and afterwards
    # the statements are the client's UPDATEs, not their dry runs.
    a = raw_client()
    a.login(dsql_local)
    a.send(wire.query("BEGIN") + wire.query(f"SELECT v FROM {table} WHERE id = 1"))
    a.read_until(wire.READY_FOR_QUERY)
    a.read_until(wire.READY_FOR_QUERY)
    with conn(dsql_local) as b:
        b.execute(f"UPDATE {table} SET v = 10 WHERE id = 1")
        a.send(wire.parse_message("s1", f"UPDATE {table} SET v = v + $1 WHERE id = $2 "
                                        "RETURNING v", [23, 23])
               + wire.parse_message("s2", f"UPDATE {table} SET v = v + 1 WHERE id = 2", [])
               + _bind("s1", 1, 1) + _DESCRIBE_PORTAL + _EXECUTE
               + _bind("s2") + _EXECUTE + _SYNC)
        answer = [m for m, _ in a.read_until(wire.READY_FOR_QUERY)]
        assert answer == [wire.PARSE_COMPLETE, wire.PARSE_COMPLETE, wire.BIND_COMPLETE,
                          wire.ROW_DESCRIPTION, wire.DATA_ROW, wire.COMMAND_COMPLETE,
                          wire.BIND_COMPLETE, wire.COMMAND_COMPLETE, wire.READY_FOR_QUERY]
        a.send(wire.query("COMMIT"))
        assert a.error()["C"] == "40001"
        a.read_until(wire.READY_FOR_QUERY)
        # Outside any transaction, the prepared statements write.
        a.send(_bind("s1", 5, 3) + _DESCRIBE_PORTAL + _EXECUTE + _bind("s2") + _EXECUTE
               + _SYNC)
        frames = a.read_until(wire.READY_FOR_QUERY)
        tags = [wire.parse_command_tag(bytes([m]) + b"\0\0\0\0" + body)
                for m, body in frames if m == wire.COMMAND_COMPLETE]
        assert tags == ["UPDATE 1", "UPDATE 1"]
        assert b.execute(f"SELECT id, v FROM {table} WHERE id IN (1, 2, 3) ORDER BY id"
                         ).fetchall() == [(1, 10), (2, 1), (3, 5)]
