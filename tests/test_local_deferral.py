"""Deferred point writes against a real backend (dsqlkit.local.occ.deferral): a keyed UPDATE
of a row another open transaction writes answers at once from its dry run, runs later, and
the first transaction to COMMIT still wins; its answers are the ones the real write gives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from dsqlkit.local import LocalDSQL

OC000 = "change conflicts with another transaction (OC000)"
Conn = psycopg.Connection[tuple]  # type: ignore[type-arg]


def conn(ep: LocalDSQL) -> Conn:
    return psycopg.connect(ep.dsn(), autocommit=True)


@pytest.fixture
def table(dsql_local: LocalDSQL) -> Iterator[str]:
    """Ten rows whose ``v`` carries no constraint: UPDATEs of it keyed by id can be deferred."""
    name = f"d_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as c:
        c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)")
        c.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 10) g")
    yield name
    with conn(dsql_local) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


def stats(ep: LocalDSQL) -> dict[str, int]:
    return dict(ep.server.engine.stats)


def grew(ep: LocalDSQL, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in stats(ep).items() if v != before[k]}


def add(c: Conn, table: str, row: int, amount: int, *, prepare: bool = False) -> int:
    found = c.execute(f"UPDATE {table} SET v = v + %s WHERE id = %s RETURNING v",
                      (amount, row), prepare=prepare).fetchone()
    assert found is not None
    return int(found[0])


def loses(c: Conn) -> None:
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        c.execute("COMMIT")
    assert str(info.value) == OC000
    assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def value(ep: LocalDSQL, table: str, row: int) -> int:
    with conn(ep) as c:
        found = c.execute(f"SELECT v FROM {table} WHERE id = %s", (row,)).fetchone()
    assert found is not None
    return int(found[0])


@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "prepared"])
@pytest.mark.parametrize("first", ["holder", "deferred"])
def test_the_first_committer_wins_and_nothing_waits(
    dsql_local: LocalDSQL, table: str, prepare: bool, first: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        assert add(a, table, 1, 1, prepare=prepare) == 1
        before = stats(dsql_local)
        # PostgreSQL would make b wait for a's row lock: b answers from its dry run at once,
        # without making a give way.
        assert add(b, table, 1, 10, prepare=prepare) == 10
        assert grew(dsql_local, before) == {"deferred": 1, "collisions": 1}
        if first == "holder":
            a.execute("COMMIT")
            loses(b)
            assert value(dsql_local, table, 1) == 1
        else:
            b.execute("COMMIT")  # its write runs now; a makes way, and has lost
            loses(a)
            assert value(dsql_local, table, 1) == 10


def test_a_deferred_write_runs_before_the_next_statement_that_could_see_it(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 2, 1)
        assert add(b, table, 2, 5) == 5  # deferred
        # b reads its own write, as on DSQL (the write ran first; a made way for it).
        assert b.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (5,)
        assert add(b, table, 2, 1) == 6
        b.execute("COMMIT")
        loses(a)
        assert value(dsql_local, table, 2) == 6


def test_a_write_of_another_row_does_not_run_the_deferred_one_first(
    dsql_local: LocalDSQL, table: str
) -> None:
    """The transfer's shape: the debit is deferred, the credit touches another row."""
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 3, 1)
        assert add(b, table, 3, -7) == -7  # deferred behind a
        before = stats(dsql_local)
        assert add(b, table, 4, 7) == 7  # runs; the debit stays deferred (a is not parked)
        assert grew(dsql_local, before) == {}
        a.execute("COMMIT")
        loses(b)
        assert (value(dsql_local, table, 3), value(dsql_local, table, 4)) == (1, 0)


def test_a_row_committed_since_the_snapshot_fails_the_commit_not_the_statement(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        b.execute("BEGIN")
        add(b, table, 5, 1)  # b's snapshot
        a.execute("BEGIN")
        add(a, table, 6, 2)
        a.execute("COMMIT")
        before = stats(dsql_local)
        # PostgreSQL would refuse this write; b answers from its snapshot, and has lost.
        assert add(b, table, 6, 3) == 3
        assert grew(dsql_local, before) == {"foreseen": 1}
        assert b.execute(f"SELECT v FROM {table} WHERE id = 6").fetchone() == (0,)
        loses(b)
        assert (value(dsql_local, table, 5), value(dsql_local, table, 6)) == (0, 2)


def test_a_write_that_finds_no_row_defers_nothing(dsql_local: LocalDSQL, table: str) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 7, 1)
        cur = b.execute(f"UPDATE {table} SET v = 9 WHERE id = %s AND v > 100", (7,))
        assert cur.rowcount == 0 and cur.statusmessage == "UPDATE 0"
        a.execute("COMMIT")
        b.execute("COMMIT")  # no collision: nothing of b's touched the row
        assert value(dsql_local, table, 7) == 1


def test_updates_a_constraint_could_refuse_are_not_deferred(dsql_local: LocalDSQL) -> None:
    name = f"d_{uuid.uuid4().hex[:10]}"
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int CHECK (v >= 0))")
        a.execute(f"INSERT INTO {name} VALUES (1, 0)")
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, name, 1, 1)
        before = stats(dsql_local)
        # Its dry run cannot know the CHECK: the write runs (the holder makes way) and the
        # error comes at the statement, as on DSQL.
        with pytest.raises(psycopg.errors.CheckViolation):
            add(b, name, 1, -5)
        assert "deferred" not in grew(dsql_local, before)
        b.execute("ROLLBACK")
        a.execute("COMMIT")
        a.execute(f"DROP TABLE {name}")


def test_a_parked_transaction_replays_its_deferred_answer(
    dsql_local: LocalDSQL, table: str
) -> None:
    """b defers a write (a holds the row) and holds another row, which c then wants: b makes
    way for c, and replays its block, dry run included, before its next statement."""
    with conn(dsql_local) as a, conn(dsql_local) as b, conn(dsql_local) as c:
        a.execute("BEGIN")
        b.execute("BEGIN")
        c.execute("BEGIN")
        add(a, table, 8, 1)
        assert add(b, table, 8, 10) == 10  # deferred
        assert add(b, table, 9, 10) == 10  # b holds row 9
        before = stats(dsql_local)
        c.execute(f"UPDATE {table} SET v = 100 WHERE id = 9")  # literal: not deferred
        # b made way (its park is over once it answers again, after its replay; the replay
        # takes row 9 back, and c makes way in turn).
        assert b.execute(f"SELECT v FROM {table} WHERE id = 9").fetchone() == (10,)
        assert grew(dsql_local, before).get("parks", 0) >= 1
        b.execute("COMMIT")  # first committer: a and c lose
        loses(a)
        loses(c)
        assert (value(dsql_local, table, 8), value(dsql_local, table, 9)) == (10, 10)


def test_two_writes_in_one_unit_are_not_deferred(dsql_local: LocalDSQL, table: str) -> None:
    """A pipeline runs several statements before the client reads any answer: they run as
    they are (the second could depend on the first)."""
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 10, 1)
        before = stats(dsql_local)
        with b.pipeline():
            first = b.execute(f"UPDATE {table} SET v = v + %s WHERE id = %s RETURNING v",
                              (5, 10))
            second = b.execute(f"UPDATE {table} SET v = v + %s WHERE id = %s RETURNING v",
                               (5, 10))
        assert (first.fetchone(), second.fetchone()) == ((5,), (10,))
        assert "deferred" not in grew(dsql_local, before)
        b.execute("COMMIT")
        loses(a)


def test_a_deferred_update_answers_in_the_update_s_own_shape(
    dsql_local: LocalDSQL, table: str
) -> None:
    """Nothing of the dry run shows: the command tag, the row count, and the columns (none
    without RETURNING) are the UPDATE's."""
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 1, 1)
        add(a, table, 2, 1)
        before = stats(dsql_local)
        cur = b.execute(f"UPDATE {table} SET v = v + %s WHERE id = %s", (3, 1))
        assert (cur.statusmessage, cur.rowcount, cur.description) == ("UPDATE 1", 1, None)
        cur = b.execute(f"UPDATE {table} SET v = v + %s WHERE id = %s RETURNING v, id",
                        (3, 2))
        assert [(d.name, d.type_code) for d in cur.description or ()] == [("v", 23),
                                                                         ("id", 23)]
        assert (cur.statusmessage, cur.fetchall()) == ("UPDATE 1", [(3, 2)])
        assert grew(dsql_local, before) == {"deferred": 2, "collisions": 1}
        b.execute("ROLLBACK")
        a.execute("ROLLBACK")


def test_a_transaction_whose_deferred_write_ran_still_makes_way(
    dsql_local: LocalDSQL, table: str
) -> None:
    """Once its deferred write ran, the block holds that row like any other: a writer that
    comes next does not wait for it (it is parked and replays, deferred write included)."""
    with conn(dsql_local) as a, conn(dsql_local) as b, conn(dsql_local) as c:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 8, 1)
        assert add(b, table, 8, 10) == 10  # deferred
        assert b.execute(f"SELECT v FROM {table} WHERE id = 8").fetchone() == (10,)  # ran
        a.execute("ROLLBACK")
        c.execute("BEGIN")
        before = stats(dsql_local)
        assert add(c, table, 8, 100) == 100  # b holds the row: c defers, nothing waits
        assert grew(dsql_local, before) == {"deferred": 1, "collisions": 1}
        c.execute(f"UPDATE {table} SET v = 5 WHERE id = 9")  # b does not hold it
        # b reads on, in its snapshot, with its own write.
        assert b.execute(f"SELECT v FROM {table} WHERE id = 8").fetchone() == (10,)
        c.execute("COMMIT")  # the first committer: its deferred write runs, b makes way
        loses(b)
        assert (value(dsql_local, table, 8), value(dsql_local, table, 9)) == (100, 5)


def test_an_autocommit_write_parks_a_block_whose_deferred_write_ran(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b, conn(dsql_local) as c:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 6, 1)
        assert add(b, table, 6, 10) == 10  # deferred
        assert add(b, table, 7, 10) == 10  # another row: still deferred
        assert b.execute(f"SELECT v FROM {table} WHERE id = 6").fetchone() == (10,)  # ran
        a.execute("ROLLBACK")
        # A write of b's row by a statement that cannot be deferred (a literal key): b
        # makes way instead of making it wait; the statement commits first.
        assert c.execute(f"UPDATE {table} SET v = 50 WHERE id = 6").rowcount == 1
        loses(b)
        assert (value(dsql_local, table, 6), value(dsql_local, table, 7)) == (50, 0)


def test_two_transactions_that_deferred_each_other_s_rows(
    dsql_local: LocalDSQL, table: str
) -> None:
    with conn(dsql_local) as a, conn(dsql_local) as b:
        a.execute("BEGIN")
        b.execute("BEGIN")
        add(a, table, 1, 1)
        add(b, table, 2, 2)
        assert add(a, table, 2, 10) == 10  # deferred behind b
        assert add(b, table, 1, 20) == 20  # deferred behind a
        a.execute("COMMIT")  # b makes way; a's deferred write runs
        loses(b)
        assert (value(dsql_local, table, 1), value(dsql_local, table, 2)) == (1, 10)


def test_two_crossed_commits_at_once_let_exactly_one_win(
    dsql_local: LocalDSQL, table: str
) -> None:
    """Both COMMITs run their deferred write behind the other's row lock at the same time:
    PostgreSQL's deadlock check fails one of them, whichever is first to commit wins."""
    import threading

    with conn(dsql_local) as a, conn(dsql_local) as b:
        for c in (a, b):
            c.execute("BEGIN")
        add(a, table, 3, 1)
        add(b, table, 4, 2)
        add(a, table, 4, 10)
        add(b, table, 3, 20)
        outcome: dict[str, str] = {}
        start = threading.Barrier(2)

        def commit(name: str, c: Conn) -> None:
            start.wait()
            try:
                c.execute("COMMIT")
                outcome[name] = "committed"
            except psycopg.errors.SerializationFailure as exc:
                outcome[name] = str(exc)

        threads = [threading.Thread(target=commit, args=item)
                   for item in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome.values()) == [OC000, "committed"]
        rows = (value(dsql_local, table, 3), value(dsql_local, table, 4))
        assert rows == ((1, 10) if outcome["a"] == "committed" else (20, 2))
