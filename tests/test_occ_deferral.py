"""Deferred point writes without a backend: which statements are point writes, how their keys
compare, and the engine's decisions about them (dsqlkit.local.occ.points, .engine)."""

from __future__ import annotations

import struct
import uuid

import pytest

from dsqlkit.local import wire
from dsqlkit.local.occ.engine import Conflict, Decision, Engine, Plan, TxnState
from dsqlkit.local.occ.points import TableInfo, key_value, point_write, table_query

INT2, INT4, INT8, UUID, TEXT, NUMERIC = 21, 23, 20, 2950, 25, 1700


# -- which statements are point writes ----------------------------------------------------------

@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE accounts SET balance = balance - $1 WHERE id = $2 RETURNING balance",
     ("update", None, "accounts", "id", 2, ("balance",), True)),
    ("UPDATE accounts SET balance = balance + $1 WHERE id = $2",
     ("update", None, "accounts", "id", 2, ("balance",), True)),
    ("UPDATE s.t AS x SET v = 1, w = $2 WHERE $1 = x.k AND v > 2",
     ("update", "s", "t", "k", 1, ("v", "w"), True)),
    ("update t set v = coalesce(v, 0) + 1 where k = $1",
     ("update", None, "t", "k", 1, ("v",), True)),
    # Deferring needs plain expressions: a function may be volatile, a sub-query reads rows.
    ("UPDATE t SET v = now() WHERE k = $1", ("update", None, "t", "k", 1, ("v",), False)),
    ("UPDATE t SET v = (SELECT max(v) FROM u) WHERE k = $1",
     ("update", None, "t", "k", 1, ("v",), False)),
    ("UPDATE t SET v = 1 WHERE k = $1 RETURNING gen_random_uuid()",
     ("update", None, "t", "k", 1, ("v",), False)),
    ("UPDATE t SET v = 1 WHERE k = $1 RETURNING *",
     ("update", None, "t", "k", 1, ("v",), False)),
    ("DELETE FROM t WHERE k = $1", ("delete", None, "t", "k", 1, (), False)),
])
def test_point_writes(sql: str, expected: tuple[object, ...]) -> None:
    write = point_write(sql)
    assert write is not None
    assert (write.kind, write.schema, write.table, write.key, write.param, write.columns,
            write.dry is not None) == expected


@pytest.mark.parametrize("sql", [
    "UPDATE t SET v = 1 WHERE k > $1",  # not one key
    "UPDATE t SET v = 1 WHERE k = 5",  # a literal: no parameter to key it by
    "UPDATE t SET v = 1 WHERE k = $1 OR j = $2",
    "UPDATE t SET v = 1",
    "UPDATE t SET v = 1 FROM u WHERE t.k = $1",
    "UPDATE t SET v = 1 WHERE u.k = $1",  # another table's column
    "WITH x AS (SELECT 1) UPDATE t SET v = 1 WHERE k = $1",
    "UPDATE t SET v = 1 WHERE CURRENT OF c",
    "SELECT * FROM t WHERE k = $1",
    "INSERT INTO t VALUES ($1)",
    "UPDATE t SET v = 1 WHERE k = $1; UPDATE t SET v = 2 WHERE k = $1",
    "not sql at all",
    "",
    "/* c */ UPDATE t SET v = 1 WHERE k = $1",  # only texts that start with the keyword
    "UPDATE t SET v = 1 WHERE k = $1 AND v IN (" + ", ".join(["1"] * 2000) + ")",  # long
])
def test_not_point_writes(sql: str) -> None:
    assert point_write(sql) is None


def test_the_table_query_asks_about_every_relation_the_name_can_mean() -> None:
    write = point_write("UPDATE \"it's\" SET v = 1, \"w'\" = 2 WHERE k = $1")
    assert write is not None
    query = table_query(write)
    assert "c.relname = 'it''s'" in query and "'w'''" in query and "nspname" not in query
    qualified = point_write("UPDATE s.t SET v = 1 WHERE k = $1")
    assert qualified is not None and "n.nspname = 's'" in table_query(qualified)


@pytest.mark.parametrize(("row", "info"), [
    ([b"t", b"23"], TableInfo(True, INT4)),
    ([b"t", b"2950"], TableInfo(True, UUID)),
    ([b"t", b"25"], TableInfo(True, None)),  # a text key: equal values may differ in bytes
    ([b"t", None], TableInfo(True, None)),  # no unique key
    ([b"f", b"23"], TableInfo(False, INT4)),
    ([None, None], TableInfo(False, None)),  # no such table
    ([], TableInfo(False, None)),
])
def test_table_info_from_the_catalog_row(row: list[bytes | None], info: TableInfo) -> None:
    assert TableInfo.from_row(row) == info


# -- keys ------------------------------------------------------------------------------------

def test_equal_integer_keys_are_equal_whatever_their_encoding() -> None:
    values = {
        key_value(1, struct.pack("!h", 5), INT2, INT4),
        key_value(1, struct.pack("!i", 5), INT4, INT4),
        key_value(1, struct.pack("!q", 5), INT8, INT4),
        key_value(1, struct.pack("!i", 5), 0, INT4),  # undeclared: the column's type
        key_value(0, b"5", INT4, INT4),
        key_value(0, b"5", 0, INT8),
    }
    assert values == {5}
    assert key_value(1, struct.pack("!i", -7), INT4, INT4) == -7
    assert key_value(0, b"-7", INT4, INT4) == -7


@pytest.mark.parametrize(("fmt", "value", "declared", "key_type"), [
    (0, b"05", INT4, INT4),  # not canonical: "05" and "5" are the same key
    (0, b" 5", INT4, INT4),
    (0, b"+5", INT4, INT4),
    (0, b"5.0", INT4, INT4),
    (1, struct.pack("!h", 5), INT4, INT4),  # bytes that do not fit the declared type
    (1, b"\x00\x00\x00\x00\x00\x05", 0, INT4),
    (0, b"5", NUMERIC, INT4),  # numeric: 5 and 5.0 are equal
    (0, b"5", TEXT, INT4),
    (0, b"abc", TEXT, TEXT),  # text keys are not keyed at all
    (1, None, INT4, INT4),  # NULL matches no row
])
def test_keys_that_are_not_keyed(fmt: int, value: bytes | None, declared: int,
                                 key_type: int) -> None:
    assert key_value(fmt, value, declared, key_type) is None


def test_uuid_keys() -> None:
    u = uuid.uuid4()
    assert (key_value(1, u.bytes, UUID, UUID) == key_value(0, str(u).upper().encode(), 0, UUID)
            == u.hex)
    assert key_value(0, b"not-a-uuid", 0, UUID) is None
    assert key_value(1, b"short", UUID, UUID) is None


# -- a Bind's parameters ---------------------------------------------------------------------

def bind(formats: list[int], params: list[bytes | None], portal: bytes = b"",
         statement: bytes = b"s") -> bytes:
    body = portal + b"\0" + statement + b"\0" + struct.pack(f"!h{len(formats)}h", len(formats),
                                                            *formats)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return wire.message(wire.BIND, body + struct.pack("!h", 0))


def test_bind_parameters() -> None:
    frame = bind([0, 1], [b"1.50", struct.pack("!i", 7)])
    assert wire.parse_bind_parameter(frame, 1) == (0, b"1.50")
    assert wire.parse_bind_parameter(frame, 2) == (1, struct.pack("!i", 7))
    assert wire.parse_bind_parameter(bind([1], [b"a", b"b"]), 2) == (1, b"b")  # one for all
    assert wire.parse_bind_parameter(bind([], [b"a", None]), 2) == (0, None)


@pytest.mark.parametrize("frame", [
    bind([0, 1, 0], [b"a", b"b"]),  # 3 formats for 2 parameters
    bind([], [b"a"]),  # no $2
    bind([], [b"a", b"b"])[:-8],  # cut inside the parameters
    wire.message(wire.BIND, b"portal-without-end"),
    wire.message(wire.BIND, b"\0\0"),
    wire.message(wire.BIND, b"\0\0" + struct.pack("!h", -1)),
    wire.message(wire.BIND, b"\0\0" + struct.pack("!hh", 0, 2) + struct.pack("!i", -5)),
    wire.message(wire.BIND, b"\0\0" + struct.pack("!hh", 0, 2) + struct.pack("!i", 1 << 30)),
])
def test_malformed_binds_are_refused(frame: bytes) -> None:
    with pytest.raises(wire.ProtocolViolation):
        wire.parse_bind_parameter(frame, 2)


# -- the engine ------------------------------------------------------------------------------

X = ("accounts", "id", 1)
Y = ("accounts", "id", 2)
A, B, C = 1, 2, 3


def commit(engine: Engine, sid: int) -> str:
    decision = engine.commit_decision(sid)
    if decision.decision is Decision.FAIL:
        engine.end(sid, committed=False)
        assert decision.conflict is Conflict.DATA
        return "OC000"
    assert decision.decision is Decision.PROCEED
    engine.end(sid, committed=True)
    return "committed"


def holding(engine: Engine, sid: int, atom: tuple[str, str, int]) -> None:
    """``sid`` runs a point write on ``atom`` that changes its row."""
    assert engine.plan(sid, atom) is Plan.RUN
    engine.ran(sid, atom)
    engine.snapshot_taken(sid)


def test_a_write_on_a_row_another_transaction_holds_is_deferred_and_the_first_committer_wins(
) -> None:
    for first in (A, B):
        engine = Engine()
        engine.begin(A)
        engine.begin(B)
        holding(engine, A, X)
        assert engine.plan(B, X) is Plan.DEFER
        assert engine.found(B, X)  # its dry run found the row: deferred, colliding with A
        second = B if first == A else A
        assert commit(engine, first) == "committed"
        assert commit(engine, second) == "OC000"
        assert engine.stats["deferred"] == 1


def test_a_row_committed_since_the_snapshot_is_a_foreseen_loss() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    holding(engine, B, Y)  # B's snapshot is taken
    holding(engine, A, X)
    assert commit(engine, A) == "committed"  # its COMMIT was sent after B's snapshot
    assert engine.plan(B, X) is Plan.LOSE_IF_FOUND
    assert not engine.found(B, X)
    assert engine.stats["foreseen"] == 1
    assert engine.txn(B) is not None and engine.txn(B).lost is Conflict.DATA  # type: ignore[union-attr]
    assert commit(engine, B) == "OC000"


def test_a_commit_sent_before_the_snapshot_was_taken_is_in_it() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    holding(engine, A, X)
    assert commit(engine, A) == "committed"
    engine.begin(C)  # no snapshot yet: nothing is foreseen
    assert engine.plan(C, X) is Plan.RUN
    engine.end(C, committed=False)
    holding(engine, B, Y)  # B's first statement completes after A's COMMIT was sent
    assert engine.plan(B, X) is Plan.RUN


def test_a_commit_between_the_plan_and_the_dry_run_is_still_seen() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    holding(engine, B, Y)
    holding(engine, A, X)
    assert engine.plan(B, X) is Plan.DEFER
    assert commit(engine, A) == "committed"  # before B's dry run answered
    assert not engine.found(B, X)
    assert commit(engine, B) == "OC000"


def test_a_write_that_found_no_row_holds_nothing() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    assert engine.plan(A, X) is Plan.RUN
    assert engine.plan(B, X) is Plan.DEFER  # A's write is running: B would wait on it
    engine.ran(A, X, changed=False)
    assert engine.plan(B, X) is Plan.RUN
    engine.ran(B, X)
    assert commit(engine, A) == "committed"
    assert commit(engine, B) == "committed"  # nobody collided


def test_a_holder_that_changes_the_row_after_a_deferral_collides_too() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    assert engine.plan(A, X) is Plan.RUN  # bound, still running
    assert engine.plan(B, X) is Plan.DEFER
    assert engine.found(B, X)  # A has not changed the row yet: no collision so far
    engine.ran(A, X)  # now it has
    assert commit(engine, B) == "committed"
    assert commit(engine, A) == "OC000"


def test_deferring_transactions_do_not_make_others_defer() -> None:
    engine = Engine()
    for sid in (A, B, C):
        engine.begin(sid)
    holding(engine, A, X)
    assert engine.plan(B, X) is Plan.DEFER and engine.found(B, X)
    assert engine.plan(C, X) is Plan.DEFER and engine.found(C, X)
    assert commit(engine, A) == "committed"
    assert commit(engine, B) == "OC000" and commit(engine, C) == "OC000"
    # A transaction that only deferred a write holds no lock: it makes nobody defer.
    engine = Engine()
    for sid in (A, B, C):
        engine.begin(sid)
    holding(engine, C, Y)
    assert engine.plan(A, Y) is Plan.DEFER and engine.found(A, Y)
    engine.end(C, committed=False)  # rolled back
    assert engine.plan(B, Y) is Plan.RUN


def test_holders_that_can_make_way() -> None:
    engine = Engine()
    for sid in (A, B, C):
        engine.begin(sid)
    holding(engine, A, X)
    engine.ran(B, X)  # (PostgreSQL would not let both hold it; the engine just counts)
    assert engine.plan(C, X) is Plan.DEFER and engine.found(C, X)
    assert engine.holders(C, [X]) == [A, B]
    engine.unparkable(B)
    engine.parked(A)
    assert engine.holders(C, [X]) == []
    engine.replayed(A)
    assert engine.holders(C, [X]) == [A]
    assert engine.held_by_others(C, X) and not engine.held_by_others(C, Y)


def test_losing_or_ending_drops_the_rows() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    holding(engine, A, X)
    engine.lose(A, Conflict.DATA)
    assert engine.plan(B, X) is Plan.RUN
    engine.ran(B, X)
    engine.forget(B)
    engine.begin(C)
    assert engine.plan(C, X) is Plan.RUN
    assert engine.txn(A) is not None and engine.txn(A).state is TxnState.LOST  # type: ignore[union-attr]


def test_a_lost_transaction_plans_nothing() -> None:
    engine = Engine()
    engine.begin(A)
    engine.begin(B)
    holding(engine, A, X)
    engine.lose(B, Conflict.DATA)
    assert engine.plan(B, X) is Plan.RUN
    assert not engine.found(B, X)
    engine.ran(B, X)  # ignored: a lost transaction holds nothing
    engine.begin(C)
    assert engine.holders(C, [X]) == [A]


def test_old_commits_are_forgotten() -> None:
    """Only commits after the oldest snapshot matter, and only the last 2,048 are kept (an
    older one is left to PostgreSQL to find: its write is then refused at the statement)."""
    engine = Engine()
    engine.begin(A)
    holding(engine, A, Y)  # the oldest snapshot
    for n in range(5000):
        engine.begin(B)
        holding(engine, B, ("t", "k", n))
        commit(engine, B)
    assert len(engine._committed_at) <= 4097
    assert engine.plan(A, ("t", "k", 4999)) is Plan.LOSE_IF_FOUND
    assert engine.plan(A, ("t", "k", 0)) is Plan.RUN
    commit(engine, A)
