"""The OCC engine's decisions as a pure state machine: no sockets, no backend.

Each interleaving is a script of events between transactions A, B, C and the outcome DSQL
gives (first committer wins; nothing waits; OC001 only where a used table changed)."""

from __future__ import annotations

import pytest

from dsqlkit.local.occ.engine import (
    Action,
    ActionKind,
    Backend,
    Conflict,
    Decision,
    Engine,
    TxnState,
    Wait,
    WaitKind,
)

SIDS = {"A": 1, "B": 2, "C": 3}
ROW, REL = WaitKind.ROW, WaitKind.RELATION


def run(script: list[tuple[str, ...]], engine: Engine | None = None) -> dict[str, str]:
    """Play ``script`` and return each transaction's outcome: committed, or OC000/OC001."""
    engine = engine or Engine()
    outcome: dict[str, str] = {}
    for event, *args in script:
        sid = SIDS[args[0]]
        if event == "begin":
            engine.begin(sid)
        elif event == "ddl":
            engine.ddl(sid)
        elif event == "use":
            assert engine.access(sid, args[1:], storage=True) is None
        elif event == "wait":  # args[0] waits on args[1]'s lock
            engine.collide(sid, SIDS[args[1]], ROW if args[2] == "row" else REL)
        elif event == "park":
            engine.parked(sid)
        elif event == "replayed":
            engine.replayed(sid)
        elif event == "rollback":
            engine.end(sid, committed=False)
            outcome[args[0]] = "rolled back"
        elif event == "commit":
            decision = engine.commit_decision(sid)
            if decision.decision is Decision.REPLAY:
                engine.replayed(sid)
                decision = engine.commit_decision(sid)
            if decision.decision is Decision.FAIL:
                assert decision.conflict is not None
                outcome[args[0]] = decision.conflict.value
                engine.end(sid, committed=False)
            else:
                assert decision.decision is Decision.PROCEED
                engine.end(sid, committed=True, changed=args[1:])
                outcome[args[0]] = "committed"
    return outcome


INTERLEAVINGS = {
    # Both write one row; the one that waited went on (its holder was parked).
    "holder commits first": (
        [("begin", "A"), ("begin", "B"), ("wait", "B", "A", "row"), ("park", "A"),
         ("replayed", "A"), ("commit", "A"), ("commit", "B")],
        {"A": "committed", "B": "OC000"}),
    "waiter commits first": (
        [("begin", "A"), ("begin", "B"), ("wait", "B", "A", "row"), ("park", "A"),
         ("commit", "B"), ("commit", "A")],
        {"B": "committed", "A": "OC000"}),
    "collision in both directions": (
        [("begin", "A"), ("begin", "B"), ("wait", "B", "A", "row"), ("park", "A"),
         ("wait", "A", "B", "row"), ("park", "B"), ("commit", "B"), ("commit", "A")],
        {"B": "committed", "A": "OC000"}),
    "a rollback frees its partner": (
        [("begin", "A"), ("begin", "B"), ("wait", "B", "A", "row"), ("rollback", "A"),
         ("commit", "B")],
        {"A": "rolled back", "B": "committed"}),
    "disjoint transactions both commit": (
        [("begin", "A"), ("begin", "B"), ("commit", "A"), ("commit", "B")],
        {"A": "committed", "B": "committed"}),
    "three on one row: the first committer beats both": (
        [("begin", "A"), ("begin", "B"), ("begin", "C"), ("wait", "B", "A", "row"),
         ("wait", "C", "B", "row"), ("commit", "B"), ("commit", "A"), ("commit", "C")],
        {"B": "committed", "A": "OC000", "C": "OC000"}),
    "a DDL that commits first fails the table's user with OC001": (
        [("begin", "A"), ("begin", "B"), ("ddl", "B"), ("wait", "B", "A", "relation"),
         ("park", "A"), ("commit", "B"), ("commit", "A")],
        {"B": "committed", "A": "OC001"}),
    "a reader that commits first does not fail the DDL": (
        [("begin", "A"), ("begin", "B"), ("ddl", "B"), ("wait", "B", "A", "relation"),
         ("park", "A"), ("commit", "A"), ("commit", "B")],
        {"A": "committed", "B": "committed"}),
    "a row collision outranks a table one": (
        [("begin", "A"), ("begin", "B"), ("wait", "B", "A", "row"),
         ("wait", "A", "B", "relation"), ("commit", "A"), ("commit", "B")],
        {"A": "committed", "B": "OC000"}),
}


@pytest.mark.parametrize("name", list(INTERLEAVINGS))
def test_interleaving(name: str) -> None:
    script, expected = INTERLEAVINGS[name]
    assert run(script) == expected


def test_a_commit_waits_for_a_partner_that_is_committing() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2)
    e.collide(2, 1, ROW)
    assert e.commit_decision(1).decision is Decision.PROCEED
    assert e.txn(1) is not None and e.txn(1).state is TxnState.COMMITTING  # type: ignore[union-attr]
    decision = e.commit_decision(2)
    assert decision.decision is Decision.WAIT and decision.partner == 1
    assert e.committing_partner(2) == 1
    assert e.end(1, committed=True) == [(2, Conflict.DATA)]
    assert e.committing_partner(2) is None
    assert e.commit_decision(2).conflict is Conflict.DATA


def test_a_parked_transaction_replays_before_it_commits() -> None:
    e = Engine()
    e.begin(1)
    e.parked(1)
    assert e.commit_decision(1).decision is Decision.REPLAY
    e.replayed(1)
    assert e.commit_decision(1).decision is Decision.PROCEED


def test_a_lost_transaction_forgets_its_partners() -> None:
    e = Engine()
    for sid in (1, 2, 3):
        e.begin(sid)
    e.collide(2, 1, ROW)
    e.collide(3, 2, ROW)
    e.lose(2, Conflict.DATA)
    assert e.end(1, committed=True) == []  # 2 had lost already
    assert e.commit_decision(3).decision is Decision.PROCEED


def test_collisions_with_unknown_or_lost_transactions_are_ignored() -> None:
    e = Engine()
    e.begin(1)
    e.collide(1, 99, ROW)  # an autocommit statement or the endpoint's own work
    e.collide(1, 1, ROW)
    e.collide(1, 2, WaitKind.OTHER)
    assert e.txn(1).partners == {}  # type: ignore[union-attr]
    e.begin(2)
    e.lose(2, Conflict.DATA)
    e.collide(1, 2, ROW)
    assert e.txn(1).partners == {}  # type: ignore[union-attr]


# -- turning lock waits into actions ------------------------------------------------------


def test_an_idle_holder_is_parked_and_the_collision_recorded() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2)
    backends = {101: Backend(1, idle=True), 102: Backend(2, idle=False)}
    actions = e.resolve([Wait(102, ROW, (101,))], backends)
    assert actions == [Action(ActionKind.PARK, 1)]
    assert e.txn(2).partners == {1: ROW}  # type: ignore[union-attr]


def test_a_busy_holder_finishes_its_statement_first() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2)
    backends = {101: Backend(1, idle=False), 102: Backend(2, idle=False)}
    assert e.resolve([Wait(102, ROW, (101,))], backends) == []


def test_a_cycle_of_running_statements_is_left_to_postgresql() -> None:
    # Its deadlock check (after a short deadlock_timeout) fails one of them, as a conflict.
    e = Engine()
    e.begin(1)
    e.begin(2)
    backends = {101: Backend(1, idle=False), 102: Backend(2, idle=False)}
    assert e.resolve([Wait(101, ROW, (102,)), Wait(102, ROW, (101,))], backends) == []
    assert e.txn(1).partners == {2: ROW}  # type: ignore[union-attr]


def test_waits_the_engine_must_leave_alone() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2, parkable=False)  # COPY data, or a block that ran statements before its savepoint
    e.begin(3)
    e.parked(3)
    backends = {101: Backend(1, idle=False), 102: Backend(2, idle=True), 103: Backend(3, True),
                104: Backend(4, idle=True)}
    waits = [Wait(101, ROW, (102,)),  # unparkable holder
             Wait(101, ROW, (103,)),  # already parked
             Wait(101, ROW, (104,)),  # autocommit holder, between statements
             Wait(101, ROW, (999,)),  # a backend that is not a client's
             Wait(999, ROW, (101,))]  # the endpoint's own wait
    assert e.resolve(waits, backends) == []


def test_a_lost_transaction_never_makes_others_give_way() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2)
    e.lose(2, Conflict.DATA)
    backends = {101: Backend(1, idle=True), 102: Backend(2, idle=False)}
    assert e.resolve([Wait(102, ROW, (101,))], backends) == []


def test_an_autocommit_waiter_gets_its_holder_parked() -> None:
    e = Engine()
    e.begin(1)
    backends = {101: Backend(1, idle=True), 102: Backend(2, idle=False)}
    assert e.resolve([Wait(102, ROW, (101,))], backends) == [Action(ActionKind.PARK, 1)]


@pytest.mark.parametrize(("event", "kind"), [
    ("tuple", ROW), ("transactionid", ROW), ("relation", REL), ("virtualxid", WaitKind.OTHER),
    (None, WaitKind.OTHER)])
def test_wait_kinds(event: str | None, kind: WaitKind) -> None:
    assert WaitKind.of(event) is kind


# -- schema versions ----------------------------------------------------------------------


def test_oc001_only_for_a_session_that_used_the_changed_table() -> None:
    e = Engine()
    assert e.access(1, ["t"], storage=True) is None
    assert e.access(2, [], storage=True) is None
    e.ddl_committed(3, created=[], changed=["t"])
    assert e.access(2, ["t"], storage=True) is None  # never used it
    assert e.access(1, ["t"], storage=True) is Conflict.SCHEMA
    assert e.access(1, ["t"], storage=True) is None  # the retry refreshed its catalog
    assert e.access(3, ["t"], storage=True) is None  # the author


def test_creating_or_recreating_a_table_fails_nobody() -> None:
    e = Engine()
    e.access(1, ["t"], storage=True)
    e.ddl_committed(2, created=["u"], changed=[])
    assert e.access(1, ["u"], storage=True) is None
    e.ddl_committed(2, created=[], changed=["t"])  # DROP TABLE t
    e.ddl_committed(2, created=["t"], changed=[])  # CREATE TABLE t
    assert e.access(1, ["t"], storage=True) is None


def test_a_transaction_that_used_a_changed_table_fails_at_commit() -> None:
    e = Engine()
    e.begin(1)
    assert e.access(1, ["t"], storage=True) is None
    e.ddl_committed(2, created=[], changed=["t"])
    decision = e.commit_decision(1)
    assert decision.decision is Decision.FAIL and decision.conflict is Conflict.SCHEMA


def test_an_unrelated_ddl_does_not_fail_a_commit() -> None:
    e = Engine()
    e.begin(1)
    e.access(1, ["t"], storage=True)
    e.ddl_committed(2, created=["u"], changed=["v"])
    assert e.commit_decision(1).decision is Decision.PROCEED


def test_strict_mode_fails_every_other_session_once() -> None:
    e = Engine("strict")
    e.access(1, [], storage=True)
    e.begin(2)
    e.ddl_committed(3, created=["u"], changed=[])
    assert e.access(1, [], storage=False) is None  # SET, SHOW: not storage
    assert e.access(1, [], storage=True) is Conflict.SCHEMA
    assert e.access(1, [], storage=True) is None
    assert e.commit_decision(2).conflict is Conflict.SCHEMA
    assert e.access(3, [], storage=True) is None


def test_schema_conflicts_off() -> None:
    e = Engine("off")
    e.begin(1)
    e.access(1, ["t"], storage=True)
    e.ddl_committed(2, created=[], changed=["t"])
    assert e.access(1, ["t"], storage=True) is None
    assert e.commit_decision(1).decision is Decision.PROCEED


def test_a_committed_ddl_transaction_bumps_the_catalog() -> None:
    e = Engine()
    e.access(1, ["t"], storage=True)
    e.begin(2)
    e.ddl(2)
    assert e.commit_decision(2).decision is Decision.PROCEED
    e.end(2, committed=True, changed=["t"])
    assert e.access(1, ["t"], storage=True) is Conflict.SCHEMA
    e.begin(2)
    e.end(2, committed=False, changed=["t"])  # rolled back: nothing changed
    assert e.access(1, ["t"], storage=True) is None


def test_forgetting_a_session_drops_its_state() -> None:
    e = Engine()
    e.begin(1)
    e.begin(2)
    e.collide(2, 1, ROW)
    e.access(1, ["t"], storage=True)
    e.forget(1)
    assert e.txn(1) is None
    assert e.txn(2).partners == {}  # type: ignore[union-attr]
    e.ddl_committed(3, created=[], changed=["t"])
    assert e.access(1, ["t"], storage=True) is None  # a new session with the same id
