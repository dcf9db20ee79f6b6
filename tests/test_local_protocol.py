"""The relay's protocol core driven by scripted bytes: no sockets, no backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dsqlkit.local import wire
from dsqlkit.local.protocol import (
    DISCARD,
    IN_BLOCK,
    PENDING,
    Checked,
    Collector,
    Phase,
    Presentation,
    Relay,
    Special,
)


def frames(data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    reader = wire.FrameReader()
    return reader.scan(data)


def split(data: bytes) -> list[tuple[int, bytes]]:
    out, found = frames(data)
    return [(t, out[s:e]) for t, s, e in found]


class Hooks:
    """Records what the relay asks and answers as scripted."""

    def __init__(self) -> None:
        self.checked: list[tuple[int, bytes]] = []
        self.decide: Callable[[int, bytes], Checked] = lambda mtype, frame: (None, None)
        self.begin_ok = True
        self.units_done = 0
        self.batches = 0
        self.errors: list[dict[str, str]] = []
        self.error_answer: Callable[[Relay, dict[str, str]], bytes | None] = (
            lambda relay, fields: None)
        self.violations: list[str] = []
        self.terminated = False
        self.waits = 0
        self.relay: Relay | None = None

    def check(self, mtype: int, data: bytes, start: int, end: int) -> Checked:
        self.checked.append((mtype, data[start:end]))
        return self.decide(mtype, data[start:end])

    def unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        return self.begin_ok

    def batch_ended(self) -> None:
        self.batches += 1

    def backend_error(self, fields: dict[str, str]) -> bytes | None:
        self.errors.append(fields)
        assert self.relay is not None
        return self.error_answer(self.relay, fields)

    def unit_done(self) -> None:
        self.units_done += 1
        assert self.relay is not None
        self.relay.pump()

    def started_waiting(self) -> None:
        self.waits += 1

    def forward_first(self) -> bool:
        return True

    def violation(self, exc: wire.ProtocolViolation) -> None:
        self.violations.append(str(exc))

    def terminate(self) -> None:
        self.terminated = True


class Pipe:
    def __init__(self) -> None:
        self.hooks = Hooks()
        self.backend: list[bytes] = []
        self.client: list[bytes] = []
        self.relay = Relay(self.hooks, self.backend.append, self.client.append)
        self.hooks.relay = self.relay

    def send(self, *messages: bytes) -> None:
        self.relay.client_frames(*frames(b"".join(messages)))

    def answer(self, *messages: bytes) -> None:
        self.relay.backend_frames(*frames(b"".join(messages)))

    def to_backend(self) -> bytes:
        out = b"".join(self.backend)
        self.backend.clear()
        return out

    def to_client(self) -> bytes:
        out = b"".join(self.client)
        self.client.clear()
        return out


def row(*values: bytes) -> bytes:
    body = wire.int32(len(values))[2:] + b"".join(wire.int32(len(v)) + v for v in values)
    return wire.message(wire.DATA_ROW, body)


ROWDESC = wire.message(wire.ROW_DESCRIPTION, b"\x00\x01v\x00" + b"\x00" * 18)
PARSE_OK = wire.message(wire.PARSE_COMPLETE)
BIND_OK = wire.message(wire.BIND_COMPLETE)
READY = wire.ready_for_query()
IN_TXN = wire.ready_for_query(IN_BLOCK)


def extended(sql: str) -> bytes:
    return (wire.parse_message("", sql, []) + wire.message(wire.BIND, b"\0\0\0\0\0\0\0\0")
            + wire.message(wire.EXECUTE, b"\0\0\0\0\0") + wire.SYNC_MSG)


def test_a_query_goes_through_and_its_answer_comes_back() -> None:
    p = Pipe()
    q = wire.query("SELECT 1")
    p.send(q)
    assert p.to_backend() == q
    assert p.relay.phase is Phase.ANSWERING and p.hooks.waits == 1
    answer = ROWDESC + row(b"1") + wire.command_complete("SELECT 1") + READY
    p.answer(answer)
    assert p.to_client() == answer
    assert p.relay.phase is Phase.IDLE and p.hooks.units_done == 1
    assert [m for m, _ in p.hooks.checked] == [wire.QUERY]


def test_one_unit_at_a_time() -> None:
    p = Pipe()
    first, second = wire.query("SELECT 1"), wire.query("SELECT 2")
    p.send(first + second)
    assert p.to_backend() == first  # the second waits for the first's answer
    p.answer(wire.command_complete("SELECT 1") + READY)
    assert p.to_backend() == second
    assert p.relay.phase is Phase.ANSWERING


def test_an_extended_batch_and_an_error_that_skips_to_sync() -> None:
    p = Pipe()
    batch = extended("SELECT 1") + extended("SELECT 2")
    p.send(batch)
    assert p.to_backend() == extended("SELECT 1")  # the first Sync ends the unit
    assert p.hooks.batches == 1
    error = wire.error_response("42601", "syntax error")
    p.answer(PARSE_OK + error + READY)
    assert p.to_client() == PARSE_OK + error + READY
    assert p.to_backend() == extended("SELECT 2")
    assert not p.relay.backend_skipping


def test_a_refused_statement_answers_with_dsql_error() -> None:
    p = Pipe()
    refusal = wire.error_response("0A000", "unsupported statement: Truncate")
    p.hooks.decide = lambda mtype, frame: (wire.query("DSQLKIT REFUSED"),
                                           Special(error=refusal))
    p.send(wire.query("TRUNCATE t"))
    assert p.to_backend() == wire.query("DSQLKIT REFUSED")
    p.answer(wire.error_response("42601", 'syntax error at or near "DSQLKIT"') + READY)
    assert p.to_client() == refusal + READY


def test_a_begin_answered_here_travels_with_the_next_message() -> None:
    p = Pipe()
    begin, upd = wire.query("BEGIN"), wire.query("UPDATE t SET v = 1")
    answer = wire.command_complete("BEGIN") + IN_TXN

    def decide(mtype: int, frame: bytes) -> Checked:
        return (None, Special(answer=answer)) if frame == begin else (None, None)

    p.hooks.decide = decide
    p.send(begin)
    assert p.to_backend() == b""
    assert p.to_client() == answer and p.relay.txn_status == IN_BLOCK
    p.send(upd)
    assert p.to_backend() == begin + upd
    p.answer(answer + wire.command_complete("UPDATE 1") + IN_TXN)
    assert p.to_client() == wire.command_complete("UPDATE 1") + IN_TXN  # BEGIN's dropped


def test_held_messages_wait_for_release() -> None:
    p = Pipe()
    p.hooks.begin_ok = False
    p.send(wire.query("SELECT 1"))
    assert p.to_backend() == b""
    p.relay.hold()
    p.hooks.begin_ok = True
    p.relay.release()
    assert p.to_backend() == wire.query("SELECT 1")


def test_a_pending_decision_holds_the_message() -> None:
    p = Pipe()
    decisions: list[Checked] = [PENDING, (None, None)]
    p.hooks.decide = lambda mtype, frame: decisions.pop(0)
    p.relay.hold()
    p.relay.release()
    p.send(wire.query("SELECT 1"))
    assert p.to_backend() == b""
    p.relay.hold()
    p.relay.release()
    assert p.to_backend() == wire.query("SELECT 1")


def test_a_recorded_unit_is_held_back_until_complete() -> None:
    p = Pipe()
    p.relay.txn_status = IN_BLOCK
    p.relay.recording = True
    # The hook that begins the unit resets recording; record from the unit's start instead.
    p.hooks.unit_begins = lambda *a: setattr(p.relay, "recording", True) or True  # type: ignore[method-assign]
    p.send(wire.query("SELECT 1; SELECT 2"))
    p.answer(wire.command_complete("SELECT 1"))
    assert p.to_client() == b""  # not yet
    p.answer(wire.command_complete("SELECT 2") + IN_TXN)
    assert p.to_client() == (wire.command_complete("SELECT 1") + wire.command_complete(
        "SELECT 2") + IN_TXN)
    assert p.relay.txn_log == [[(wire.QUERY, wire.query("SELECT 1; SELECT 2"))]]


def test_a_conflict_in_a_recorded_unit_is_hidden() -> None:
    p = Pipe()
    p.relay.txn_status = IN_BLOCK
    p.hooks.unit_begins = lambda *a: setattr(p.relay, "recording", True) or True  # type: ignore[method-assign]
    p.hooks.error_answer = lambda relay, fields: b"" if relay.absorb(fields) else None
    done: list[bool] = []
    p.hooks.unit_done = lambda: done.append(p.relay.conflict is not None)  # type: ignore[method-assign]
    p.send(wire.query("UPDATE t SET v = 1"))
    p.answer(wire.error_response("40001", "could not serialize access") + IN_TXN)
    assert p.to_client() == b""
    assert done == [True]
    assert p.relay.txn_log == []  # the unit did not happen


def test_a_replay_digests_as_the_first_run() -> None:
    p = Pipe()
    p.relay.txn_status = IN_BLOCK
    p.hooks.unit_begins = lambda *a: setattr(p.relay, "recording", True) or True  # type: ignore[method-assign]
    p.send(wire.query("SELECT v FROM t"))
    answer = ROWDESC + row(b"7") + wire.command_complete("SELECT 1") + IN_TXN
    p.answer(answer)
    payload, ready = p.relay.log_payload()
    assert payload == wire.query("SELECT v FROM t") and ready == 1
    finished: list[Collector] = []
    same = Collector(ready, finished.append, hashed=True)
    p.relay.send_internal(payload, same)
    p.answer(answer)
    assert finished == [same] and same.digest() == p.relay.txn_hash.digest()
    other = Collector(ready, finished.append, hashed=True)
    p.relay.send_internal(payload, other)
    p.answer(ROWDESC + row(b"8") + wire.command_complete("SELECT 1") + IN_TXN)
    assert other.digest() != p.relay.txn_hash.digest()


def test_a_stand_in_is_presented_as_the_original() -> None:
    p = Pipe()
    p.hooks.decide = lambda mtype, frame: (
        wire.query("SELECT 1 FROM t"),
        Special(present_by_result={0: Presentation(tag="UPDATE", counted=True,
                                                    keep_rows=False)}))
    p.send(wire.query("UPDATE t SET v = 1"))
    p.answer(ROWDESC + row(b"1") + row(b"1") + wire.command_complete("SELECT 2") + READY)
    assert p.to_client() == wire.command_complete("UPDATE 2") + READY


def test_a_prefix_answer_is_dropped() -> None:
    p = Pipe()

    def begins(*a: object) -> bool:
        p.relay.prefix(wire.query("SAVEPOINT dsqlkit_txn"))
        return True

    p.hooks.unit_begins = begins  # type: ignore[method-assign]
    p.send(wire.query("SELECT 1"))
    assert p.to_backend() == wire.query("SAVEPOINT dsqlkit_txn") + wire.query("SELECT 1")
    p.answer(wire.command_complete("SAVEPOINT") + READY + wire.command_complete("SELECT 1")
             + READY)
    assert p.to_client() == wire.command_complete("SELECT 1") + READY
    assert p.relay.expect == type(p.relay.expect)()
    assert DISCARD.discard


def test_copy_data_flows_while_the_copy_is_answered() -> None:
    p = Pipe()
    p.relay.copy_expected = True
    copy = wire.query("COPY t FROM STDIN")
    data = wire.message(wire.COPY_DATA, b"1\n") + wire.message(wire.COPY_DONE)
    p.send(copy + data)
    assert p.to_backend() == copy + data
    p.answer(wire.message(wire.COPY_IN_RESPONSE, b"\0\0\0") + wire.command_complete("COPY 1")
             + READY)
    assert p.relay.phase is Phase.IDLE


@pytest.mark.parametrize("message", [wire.message(ord("z"), b"junk")])
def test_an_unknown_message_is_a_violation(message: bytes) -> None:
    p = Pipe()
    p.send(message)
    assert p.hooks.violations == ["invalid frontend message type 122"]


def test_terminate_and_a_fatal_backend_error_end_the_session() -> None:
    p = Pipe()
    p.send(wire.TERMINATE_MSG)
    assert p.hooks.terminated
    p = Pipe()
    p.send(wire.query("SELECT 1"))
    p.answer(wire.error_response("57P01", "terminating connection", severity="FATAL"))
    assert p.hooks.terminated


def test_a_closed_relay_forwards_nothing() -> None:
    p = Pipe()
    p.relay.close()
    p.send(wire.query("SELECT 1"))
    assert p.to_backend() == b"" and p.relay.closed


def test_holding_keeps_the_phase_to_return_to() -> None:
    p = Pipe()
    p.send(wire.query("SELECT 1"))
    p.relay.hold()
    assert p.relay.phase is Phase.HELD and p.relay.busy
    p.answer(wire.command_complete("SELECT 1") + READY)  # the unit ends while held
    p.relay.release()
    assert p.relay.phase is Phase.IDLE
    assert split(p.to_client())[-1] == (wire.READY_FOR_QUERY, READY)
