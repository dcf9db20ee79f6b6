"""The relay between a client and its backend session, as a protocol core without I/O.

The relay keeps at most one client *unit* (the messages up to a Sync, a simple Query or a
Flush) in flight at the backend, and tracks which backend response completes which client
message. That bookkeeping lets the endpoint rewrite or refuse statements without ever
reordering responses, and costs nothing to clients that wait for their answers, which is what
all drivers do.

It is driven by bytes: :meth:`Relay.client_frames` and :meth:`Relay.backend_frames` take
framed messages (see :mod:`dsqlkit.local.wire`); what goes out is handed to two callables.
What to do with a statement, when a unit starts or ends, and what an error means are
decisions of its :class:`RelayHooks` (DSQL's statement policy and the OCC, in the session).
Its state is one :class:`Phase`:

* ``IDLE``: the backend owes nothing; the next client message starts a unit;
* ``OPEN``: a unit's messages go to the backend (a Sync, a Query or a Flush ends it);
* ``ANSWERING``: the unit is complete; the backend still owes answers;
* ``HELD``: the endpoint works on the backend or waits for an analysis; client messages wait
  and the relay returns to the phase it left;
* ``CLOSED``.

Inside a transaction block the OCC may *record* units (:attr:`Relay.recording`): their answer
is held back until the unit is complete (so that a conflict can be hidden and the unit run
again), their messages are logged (to replay the block), and the backend's answers to them are
digested (a replay must answer the same).
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dsqlkit.local import wire

EXTENDED = frozenset({wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE, wire.CLOSE})
ENDS_AT_READY = frozenset({wire.QUERY, wire.SYNC, wire.FUNCTION_CALL})
_COMPLETES = {
    wire.PARSE: frozenset({wire.PARSE_COMPLETE}),
    wire.BIND: frozenset({wire.BIND_COMPLETE}),
    wire.CLOSE: frozenset({wire.CLOSE_COMPLETE}),
    wire.DESCRIBE: frozenset({wire.ROW_DESCRIPTION, wire.NO_DATA}),
    wire.EXECUTE: frozenset({wire.COMMAND_COMPLETE, wire.EMPTY_QUERY, wire.PORTAL_SUSPENDED}),
}
_COPY_IN_MESSAGES = frozenset({wire.COPY_DATA, wire.COPY_DONE, wire.COPY_FAIL})
# ReadyForQuery's transaction status bytes.
IDLE = ord("I")
IN_BLOCK = ord("T")
FAILED = ord("E")
# What a replay must answer as the first run did: rows, command tags, and their order.
HASHED = frozenset({wire.DATA_ROW, wire.COMMAND_COMPLETE, wire.EMPTY_QUERY,
                    wire.PORTAL_SUSPENDED})
# A recorded unit's answer is held back up to this size; a bigger one is streamed, and the
# unit can no longer be run again transparently.
MAX_HELD_ANSWER = 1 << 20
MAX_RECORDED_TRANSACTION = 8 << 20

Frames = list[tuple[int, int, int]]
Message = tuple[int, bytes]


class Phase(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    ANSWERING = "answering"
    HELD = "held"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Presentation:
    """How to show the answer of a stand-in statement: the command tag to report (with the
    row count when ``counted``), and whether its rows are part of the answer."""

    tag: str | None = None
    counted: bool = False
    keep_rows: bool = True


@dataclass(frozen=True, slots=True)
class Special:
    """What to do with the backend's answer to one forwarded message.

    ``error``: replace the first ErrorResponse with this frame (a refused statement).
    ``commit_error``: replace the CommandComplete with this frame (a COMMIT the endpoint
    turned into a ROLLBACK). ``discard``: drop the answer (a message the endpoint added).
    ``present``: the message runs a stand-in statement (a dry run, a local answer); make its
    answer look like the original's. ``present_by_result``: the same for some statements of
    a simple Query, by their position. ``answer``: the endpoint answers the message itself
    with these frames, and sends the message on later, in front of the next one (a BEGIN).
    """

    error: bytes | None = None
    commit_error: bytes | None = None
    discard: bool = False
    present: Presentation | None = None
    present_by_result: dict[int, Presentation] | None = None
    answer: bytes | None = None


Expect = tuple[int, "Special | None"]
DISCARD = Special(discard=True)


class Pending:
    """A decision that is not ready yet (an analysis, a catalog question): the relay holds."""


PENDING = Pending()
# What a hook decided for a Query, Parse or Bind: the frame to send instead (None: the
# client's) and what to do with the answer; PENDING; or None when the session ended.
Checked = tuple["bytes | None", "Special | None"] | Pending | None


class RelayHooks(Protocol):
    def check(self, mtype: int, data: bytes, start: int, end: int) -> Checked:
        """A Query, Parse or Bind is about to go to the backend."""

    def unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """A unit starts with this message; False holds it (the hook releases the relay)."""

    def batch_ended(self) -> None:
        """A Sync: the extended-protocol batch is over."""

    def backend_error(self, fields: dict[str, str]) -> bytes | None:
        """The client's replacement for a backend error (None: as it is; b"": nothing)."""

    def unit_done(self) -> None:
        """The backend answered the whole unit (the relay is IDLE)."""

    def started_waiting(self) -> None:
        """The backend owes answers again."""

    def forward_first(self) -> bool:
        """Whether an answer the relay passes unchanged may go out before its bookkeeping."""

    def violation(self, exc: wire.ProtocolViolation) -> None:
        """The client broke the protocol: end the session."""

    def terminate(self) -> None:
        """The client said goodbye, or the backend ended the session."""


class Relay:
    """The message flow of one session (see the module docs)."""

    def __init__(self, hooks: RelayHooks, write_backend: Callable[[bytes], None],
                 write_client: Callable[[bytes], None]) -> None:
        self.hooks = hooks
        self.write_backend = write_backend
        self.write_client = write_client
        self.phase = Phase.IDLE
        self._held_from = Phase.IDLE
        # Client messages not yet forwarded: [data, frames, index of the next frame].
        self.held: deque[list[object]] = deque()
        self.expect: deque[Expect] = deque()
        # After an error in an extended batch the backend skips everything up to Sync.
        self.backend_skipping = False
        # The backend waits for COPY data; or a COPY ... FROM STDIN is in flight, whose data
        # may come before the CopyInResponse.
        self.copy_in = False
        self.copy_expected = False
        self.txn_status = IDLE
        self.to_client: list[bytes] = []
        self.to_backend: list[bytes] = []
        # A BEGIN answered here, not yet sent.
        self.deferred_begin: bytes | None = None
        # A COMMIT the endpoint fails: the Execute of its prepared ROLLBACK answers this.
        self.commit_error: bytes | None = None
        # Stand-in statements prepared by name, and portals bound to them.
        self.stmt_present: dict[str, Presentation] = {}
        self.portal_present: dict[str, Presentation] = {}
        self.result_index = 0
        # The message being checked is the first of its unit.
        self.first_of_unit = False
        # Where the message being checked is (see sole_statement), and how many statements
        # (Query, Bind) of the unit went before it.
        self._at: tuple[bytes, Frames, int] = (b"", [], 0)
        self.unit_statements = 0
        # The command tag of the backend's last CommandComplete (as the backend sent it).
        self.last_tag = b""
        # What the endpoint's own messages in a hook's replacement expect, in order (the
        # client's message, last in the replacement, gets its own).
        self.extra_expects: list[Expect] = []
        # -- the unit in flight
        self.recording = False
        self.unit_msgs: list[Message] = []
        self.unit_expects: list[Expect] = []
        self.unit_out: list[bytes] = []
        self.unit_out_size = 0
        self.unit_flushed = False
        self.unit_error = False
        self.unit_committed = False
        self.unit_ddl = False
        self.unit_in_block = False
        self.conflict: dict[str, str] | None = None
        # -- the transaction block, as recorded
        self.txn_log: list[list[Message]] = []
        self.txn_log_size = 0
        self.txn_replayable = True
        self.txn_hash = hashlib.blake2b(digest_size=16)
        # The endpoint's own messages in flight: their answers go to this collector.
        self.internal: Collector | None = None

    # -- phases ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def busy(self) -> bool:
        """The backend owes answers, or the endpoint is working on it."""
        return bool(self.expect) or self.phase is Phase.HELD or self.internal is not None

    def hold(self) -> None:
        """Client messages wait until :meth:`release`."""
        if self.phase is not Phase.HELD and self.phase is not Phase.CLOSED:
            self._held_from = self.phase
            self.phase = Phase.HELD

    def release(self) -> None:
        """Go back to the phase the relay was held in, and forward what waits."""
        if self.phase is Phase.HELD:
            self.phase = self._held_from
            self.pump()

    def close(self) -> None:
        self.phase = Phase.CLOSED

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase``; while held, that is the phase :meth:`release` returns to."""
        if self.phase is Phase.HELD:
            self._held_from = phase
        elif self.phase is not Phase.CLOSED:
            self.phase = phase

    # -- client to backend ----------------------------------------------------------------

    def client_frames(self, data: bytes, frames: Frames) -> None:
        self.held.append([data, frames, 0])
        self.pump()

    def pump(self) -> None:
        """Forward held client messages, in order, in as few writes as possible.

        Stops at a unit boundary while the backend still owes answers (the end of the unit
        resumes), and while the relay is held.
        """
        held = self.held
        expect = self.expect
        out = self.to_backend
        hooks = self.hooks
        while held and (self.phase is not Phase.HELD and self.phase is not Phase.CLOSED):
            batch = held[0]
            data: bytes = batch[0]  # type: ignore[assignment]
            frames: Frames = batch[1]  # type: ignore[assignment]
            i: int = batch[2]  # type: ignore[assignment]
            n = len(frames)
            seg = frames[i][1]  # start of the bytes not yet queued in ``out``
            while i < n:
                mtype, start, end = frames[i]
                began = False
                if self.phase is not Phase.OPEN:
                    if expect and not (mtype in _COPY_IN_MESSAGES
                                       and (self.copy_in or self.copy_expected)):
                        break
                    if not expect:
                        if start > seg:  # earlier messages go out before the unit's own
                            out.append(data[seg:start])
                            seg = start
                        self._reset_unit()
                        self._at = (data, frames, i)
                        if not hooks.unit_begins(mtype, data, start, end):
                            self._pause(batch, i, seg, data)
                            return
                        if self.phase is Phase.CLOSED:
                            return
                        self.phase = Phase.OPEN
                        began = True
                replacement: bytes | None = None
                pushed: Expect | None = None
                special: Special | None = None
                if mtype == wire.PARSE or mtype == wire.BIND or (
                        mtype == wire.QUERY and not self.copy_in):
                    # A statement (or a run of a prepared one): the hooks decide what the
                    # backend runs.
                    self.first_of_unit = began
                    self._at = (data, frames, i)
                    checked = hooks.check(mtype, data, start, end)
                    self.unit_statements += mtype != wire.PARSE
                    if checked is None:
                        return  # the session ended
                    if isinstance(checked, Pending):
                        self._pause(batch, i, seg, data)
                        return
                    replacement, special = checked
                    if special is not None and special.answer is not None:
                        # A BEGIN answered here; it goes to the backend with what follows.
                        if start > seg:
                            out.append(data[seg:start])
                        seg = end
                        self.deferred_begin = data[start:end]
                        self.txn_status = IN_BLOCK
                        self.to_client.append(special.answer)
                        self.phase = Phase.IDLE
                        i += 1
                        continue
                if mtype in EXTENDED:
                    if mtype == wire.PARSE:
                        special = self._remember_statement(data, start, special)
                    elif mtype == wire.BIND:
                        if special is not None and special.present is not None:
                            portal = wire.parse_bind_names(data[start:end])[0]
                            self.portal_present[portal] = special.present
                            special = None
                        elif self.stmt_present or self.portal_present:
                            self._remember_portal(data, start, end)
                    elif mtype == wire.EXECUTE and self.commit_error is not None:
                        special = Special(commit_error=self.commit_error)
                        self.commit_error = None
                    elif self.portal_present or self.stmt_present:
                        special = self._presentation_for(mtype, data, start, end)
                    if not self.backend_skipping:
                        pushed = (mtype, special)
                elif mtype in ENDS_AT_READY:
                    if self.copy_in:
                        pass  # the backend ignores Sync during COPY FROM STDIN
                    elif mtype == wire.QUERY:
                        pushed = (mtype, special)
                        self.phase = Phase.ANSWERING
                    else:
                        pushed = (mtype, None)
                        self.phase = Phase.ANSWERING
                        if mtype == wire.SYNC:
                            self.backend_skipping = False
                            hooks.batch_ended()
                elif mtype == wire.FLUSH:
                    self.phase = Phase.ANSWERING if expect else Phase.IDLE
                elif mtype in _COPY_IN_MESSAGES:
                    if mtype != wire.COPY_DATA:
                        self.copy_in = False
                        self.copy_expected = False
                elif mtype == wire.TERMINATE:
                    out.append(data[seg:start])
                    self.flush()
                    hooks.terminate()
                    return
                else:
                    out.append(data[seg:start])
                    self.flush()
                    hooks.violation(
                        wire.ProtocolViolation(f"invalid frontend message type {mtype}"))
                    return
                extra = self.extra_expects
                if extra:
                    # The hook's replacement holds messages of the endpoint's ahead of the
                    # client's: their answers are expected first.
                    expect.extend(extra)
                if pushed is not None:
                    expect.append(pushed)
                if self.recording:
                    if extra and replacement:
                        added = wire.FrameReader().scan(replacement)[1]
                        for (kind, at, to), expected in zip(added, extra, strict=False):
                            self._record(kind, replacement[at:to], expected)
                        self._record(mtype, replacement[added[-1][1] :], pushed)
                    else:
                        self._record(mtype, replacement or data[start:end], pushed)
                if extra:
                    self.extra_expects = []
                if replacement is not None:
                    out.append(data[seg:start])
                    if replacement:
                        out.append(replacement)
                    seg = end
                i += 1
            last = frames[i - 1][2] if i > batch[2] else seg  # type: ignore[operator]
            if last > seg:
                out.append(data if seg == 0 and last == len(data) else data[seg:last])
            if i < n:
                batch[2] = i
                break
            held.popleft()
        self.flush()

    def _pause(self, batch: list[object], i: int, seg: int, data: bytes) -> None:
        """Stop before message ``i`` (a decision about it is pending)."""
        start = batch[1][i][1]  # type: ignore[index]
        if start > seg:
            self.to_backend.append(data[seg:start])
        batch[2] = i
        self.flush()

    def prefix(self, message: bytes) -> None:
        """Send one of the endpoint's own messages ahead of the unit; its answer is dropped."""
        self.to_backend.append(message)
        self.expect.append((wire.QUERY, DISCARD))

    def sole_statement(self) -> bool:
        """Whether the Bind being checked is the only statement of its unit: none went
        before it, and this batch holds the rest of the unit up to its Sync (Describes and
        Executes only)."""
        if self.unit_statements:
            return False
        _, frames, i = self._at
        for j in range(i + 1, len(frames)):
            mtype = frames[j][0]
            if mtype == wire.SYNC:
                return True
            if mtype != wire.DESCRIBE and mtype != wire.EXECUTE:
                return False
        return False

    def unit_ahead(self) -> list[Message] | None:
        """The unit's messages from the one being looked at up to its Sync, if this batch
        holds them all (None if not)."""
        data, frames, i = self._at
        ahead: list[Message] = []
        for j in range(i, len(frames)):
            mtype, start, end = frames[j]
            ahead.append((mtype, data[start:end]))
            if mtype == wire.SYNC:
                return ahead
        return None

    def log_unit(self, unit: list[Message]) -> None:
        """Add the endpoint's own unit to the block's log (a replay runs it again)."""
        self.txn_log.append(unit)
        self.txn_log_size += sum(len(frame) for _, frame in unit)
        if self.txn_log_size > MAX_RECORDED_TRANSACTION:
            self.txn_replayable = False

    def _reset_unit(self) -> None:
        self.unit_statements = 0
        self.last_tag = b""
        self.recording = False
        self.unit_msgs = []
        self.unit_expects = []
        self.unit_out = []
        self.unit_out_size = 0
        self.unit_flushed = False
        self.unit_error = False
        self.unit_committed = False
        self.unit_ddl = False
        self.unit_in_block = self.txn_status != IDLE
        self.conflict = None

    def _remember_statement(self, data: bytes, start: int,
                            special: Special | None) -> Special | None:
        """A Parse: remember whether this statement name now holds a stand-in."""
        name = data[start + 5 : data.index(b"\0", start + 5)].decode()
        if special is not None and special.present is not None:
            self.stmt_present[name] = special.present
            return None
        if self.stmt_present:
            self.stmt_present.pop(name, None)
        return special

    def _remember_portal(self, data: bytes, start: int, end: int) -> None:
        try:
            portal, statement = wire.parse_bind_names(data[start:end])
        except wire.ProtocolViolation:
            return  # PostgreSQL answers a malformed message with 08P01 and the end
        present = self.stmt_present.get(statement)
        if present is None:
            self.portal_present.pop(portal, None)
        else:
            self.portal_present[portal] = present

    def _presentation_for(self, mtype: int, data: bytes, start: int, end: int) -> Special | None:
        try:
            if mtype == wire.DESCRIBE:
                kind, name = wire.parse_describe_or_close(data[start:end])
                found = (self.stmt_present if kind == "S" else self.portal_present).get(name)
            elif mtype == wire.EXECUTE:
                found = self.portal_present.get(wire.parse_execute(data[start:end])[0])
            else:
                return None
        except wire.ProtocolViolation:
            return None
        return Special(present=found) if found is not None else None

    def _record(self, mtype: int, frame: bytes, pushed: Expect | None) -> None:
        self.unit_msgs.append((mtype, frame))
        if pushed is not None:
            self.unit_expects.append(pushed)
        self.txn_log_size += len(frame)
        if self.txn_log_size > MAX_RECORDED_TRANSACTION:
            self.txn_replayable = False

    def flush(self) -> None:
        if self.to_backend:
            out = self.to_backend
            if self.deferred_begin is not None:
                # Nothing went to the backend since the BEGIN was answered: every pending
                # expectation is for a message in ``out``, after the BEGIN.
                out.insert(0, self.deferred_begin)
                self.expect.appendleft((wire.QUERY, DISCARD))
                self.deferred_begin = None
            self.write_backend(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self.expect:
                self.hooks.started_waiting()
        if self.to_client:
            out = self.to_client
            self.write_client(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def send_internal(self, payload: bytes, collector: Collector) -> None:
        """Send the endpoint's own messages; their answers go to ``collector``."""
        self.internal = collector
        self.write_backend(payload)
        self.hooks.started_waiting()

    def send_again(self, unit: list[Message], expects: list[Expect], *,
                   prefix: bytes = b"") -> None:
        """Run a recorded unit again, after the endpoint's ``prefix`` (a Query whose answer
        is dropped); the unit's answer goes to the client as a unit's does."""
        self._reset_unit()
        self.recording = True
        self.unit_msgs = unit
        self.unit_expects = expects
        self._enter(Phase.ANSWERING)
        parts = []
        if prefix:
            parts.append(prefix)
            self.expect.append((wire.QUERY, DISCARD))
        pending = iter(expects)
        for mtype, frame in unit:
            if mtype == wire.PARSE and frame[5] != 0:
                # The first run created this prepared statement; close it so that the
                # Parse succeeds again (closing a missing statement is not an error).
                name = frame[5 : frame.index(b"\0", 5)]
                parts.append(wire.close_statement(name))
                self.expect.append((wire.CLOSE, DISCARD))
            parts.append(frame)
            # Each expectation in place: a Close added above is answered before the
            # messages that follow it.
            if mtype != wire.FLUSH:
                expected = next(pending, None)
                if expected is not None:
                    self.expect.append(expected)
        self.expect.extend(pending)
        self.write_backend(b"".join(parts))
        self.hooks.started_waiting()

    # -- backend to client ----------------------------------------------------------------

    def backend_frames(self, data: bytes, frames: Frames) -> None:
        internal = self.internal
        if internal is not None:
            internal.feed(data, frames)
            if internal.done():
                self.internal = None
                internal.finished()
            return
        expect = self.expect
        out = self.unit_out if self.recording else self.to_client
        forwarded = self.hooks.forward_first() and self._passes_unchanged(frames)
        if forwarded:
            # The client gets this answer now; the bookkeeping below runs while it reads.
            end_all = frames[-1][2]
            self.write_client(data if end_all == len(data) else data[:end_all])
            out = []
        seg = 0
        close_after = False
        for mtype, start, end in frames:
            replacement: bytes | None = None
            special = expect[0][1] if expect else None
            if mtype == wire.ERROR_RESPONSE:
                replacement, fatal = self._backend_error(data[start:end], special)
                close_after = close_after or fatal
            elif mtype == wire.COMMAND_COMPLETE:
                self.last_tag = data[start + 5 : end - 1]
                if special is not None and special.commit_error is not None:
                    replacement = special.commit_error
                    self.unit_error = True
                elif data[start + 5 : end - 1] == b"COMMIT":
                    self.unit_committed = True
            if special is not None and special.discard:
                replacement = b""
            else:
                if self.recording and mtype in HASHED:
                    self.txn_hash.update(data[start:end])
                if special is not None:
                    present = special.present
                    if present is None and special.present_by_result is not None:
                        present = special.present_by_result.get(self.result_index)
                    if present is not None:
                        replacement = present_answer(present, mtype, data, start, end,
                                                     expect[0][0], replacement)
            if mtype == wire.COMMAND_COMPLETE or mtype == wire.EMPTY_QUERY:
                self.result_index += 1
            elif mtype == wire.NOTICE_RESPONSE and self.unit_ddl and data.find(
                    b"skipping", start, end) >= 0:
                # "relation ... already exists, skipping": an IF [NOT] EXISTS DDL that
                # changed nothing.
                self.unit_ddl = False
            if self.conflict is not None:
                replacement = b""  # the unit will run again; drop its first answer
            if replacement is not None:
                if start > seg:
                    out.append(data[seg:start])
                if replacement:
                    out.append(replacement)
                seg = end
            if not expect:
                continue
            kind = expect[0][0]
            if mtype == wire.READY_FOR_QUERY:
                if kind in ENDS_AT_READY:
                    expect.popleft()
                self.txn_status = data[start + 5]
                self.result_index = 0
            elif mtype == wire.ERROR_RESPONSE:
                if kind in EXTENDED:
                    # The backend now skips every extended message up to the next Sync.
                    while expect and expect[0][0] in EXTENDED:
                        expect.popleft()
                    if not expect:
                        self.backend_skipping = True
            elif kind in EXTENDED:
                if mtype in _COMPLETES[kind]:
                    expect.popleft()
                elif mtype == wire.COPY_IN_RESPONSE:
                    self.copy_in = True
            elif mtype == wire.COPY_IN_RESPONSE:
                self.copy_in = True
        if forwarded and seg:
            # The loop replaced a frame that _passes_unchanged let through: the two disagree.
            raise RuntimeError("a backend answer was forwarded before it was changed")
        end_all = frames[-1][2]
        if end_all > seg:
            out.append(data if seg == 0 and end_all == len(data) else data[seg:end_all])
        if self.recording and not self.unit_flushed:
            self.unit_out_size += end_all
            if self.unit_out_size > MAX_HELD_ANSWER and self.conflict is None:
                # Too big to hold back: stream it, and give up a transparent replay.
                self.to_client.extend(self.unit_out)
                self.unit_out.clear()
                self.unit_flushed = True
                self.txn_replayable = False
        if self.recording and self.copy_in and not self.unit_flushed:
            # The client sends COPY data only once it has the CopyInResponse: hand it over
            # now (this unit can no longer be run again transparently).
            self.unit_flushed = True
            self.txn_replayable = False
        if self.unit_flushed or close_after:
            self.to_client.extend(self.unit_out)
            self.unit_out.clear()
        if close_after:
            self.flush()
            self.hooks.terminate()
            return
        phase = self._held_from if self.phase is Phase.HELD else self.phase
        if not expect and phase is not Phase.OPEN:
            self._unit_done()
        else:
            self.flush()

    def _passes_unchanged(self, frames: Frames) -> bool:
        """Whether :meth:`backend_frames` would forward these frames exactly as they are.

        It mirrors the reasons that loop replaces a frame: an error, a special answer, a
        conflict being absorbed (the loop checks that it agrees). Nothing queued for the
        client may go first. A recorded unit holds its answer back; this answer can only go
        now if it is the whole of it, ending with the unit's ReadyForQuery, with no error.
        """
        if self.to_client or self.conflict is not None:
            return False
        if self.recording and (self.unit_out or self.unit_flushed
                               or frames[-1][0] != wire.READY_FOR_QUERY
                               or sum(e[0] in ENDS_AT_READY for e in self.expect) != 1):
            return False
        for expected in self.expect:
            if expected[1] is not None:
                return False
        return all(frame[0] != wire.ERROR_RESPONSE for frame in frames)

    def _backend_error(self, frame: bytes, special: Special | None) -> tuple[bytes | None, bool]:
        """What the client sees of a backend ErrorResponse, and whether the session ends."""
        fields = wire.parse_fields(frame)
        self.unit_error = True
        if fields.get("S") == "FATAL" or fields.get("C") == "08P01":
            # A protocol violation or a FATAL error ends the session, as it does for
            # PostgreSQL (some violations are only ERRORs there).
            return None, True
        if special is not None and special.error is not None:
            return special.error, False  # a refusal: the rules recorded it already
        return self.hooks.backend_error(fields), False

    def absorb(self, fields: dict[str, str]) -> bool:
        """Hide this error from the client if the unit can run again: True if hidden."""
        if (self.recording and not self.unit_flushed and self.txn_replayable
                and self.conflict is None):
            self.conflict = fields
            return True
        return False

    def _unit_done(self) -> None:
        """The backend answered the whole unit."""
        self._enter(Phase.IDLE)
        self.copy_expected = False
        if self.conflict is None and self.recording:
            self.to_client.extend(self.unit_out)
            self.unit_out = []
            self.txn_log.append(self.unit_msgs)
            self.recording = False
        elif self.conflict is not None:
            self.unit_out = []
        self.hooks.unit_done()

    def forget_transaction(self) -> None:
        """The block is over: drop its log."""
        self.txn_log = []
        self.txn_log_size = 0
        self.txn_replayable = True

    def log_payload(self) -> tuple[bytes, int]:
        """The block's recorded messages, to send again, and how many ReadyForQuery end them."""
        parts: list[bytes] = []
        ready = 0
        last = wire.QUERY
        for unit in self.txn_log:
            for mtype, frame in unit:
                # Prepared statements outlive a rollback: re-creating a named one would fail.
                if (mtype == wire.PARSE and frame[5] != 0) or mtype == wire.CLOSE:
                    continue
                parts.append(frame)
                last = mtype
                if mtype in ENDS_AT_READY:
                    ready += 1
        if parts and last not in ENDS_AT_READY:
            parts.append(wire.SYNC_MSG)
            ready += 1
        return b"".join(parts), ready


class Collector:
    """Collects the backend's answers to messages the endpoint sent on its own."""

    def __init__(self, ready: int, on_done: Callable[[Collector], None], *,
                 hashed: bool = False, into: hashlib.blake2b | None = None) -> None:
        self.ready = ready
        self.on_done = on_done
        self.errors: list[dict[str, str]] = []
        # Raw values: replayed client statements may answer in binary format.
        self.rows: list[list[bytes | None]] = []
        # A replay's answers, digested as a recorded block's are (Relay.txn_hash).
        # (``into``: the endpoint's own work in a block adds its answers to the block's.)
        self._hash = into if into is not None else (
            hashlib.blake2b(digest_size=16) if hashed else None)

    def digest(self) -> bytes:
        return self._hash.digest() if self._hash is not None else b""

    def feed(self, data: bytes, frames: Frames) -> None:
        hashed = self._hash
        for mtype, start, end in frames:
            if hashed is not None and mtype in HASHED:
                hashed.update(data[start:end])
            if mtype == wire.ERROR_RESPONSE:
                self.errors.append(wire.parse_fields(data[start:end]))
            elif mtype == wire.DATA_ROW:
                self.rows.append(wire.parse_data_row(data[start:end]))
            elif mtype == wire.READY_FOR_QUERY:
                self.ready -= 1

    def done(self) -> bool:
        return self.ready <= 0

    def finished(self) -> None:
        self.on_done(self)


def present_answer(
    present: Presentation, mtype: int, data: bytes, start: int, end: int, kind: int,
    replacement: bytes | None,
) -> bytes | None:
    """Make a stand-in's answer look like the answer of the statement it stands in for."""
    if mtype == wire.COMMAND_COMPLETE and present.tag is not None:
        if present.counted:
            return wire.command_complete(
                f"{present.tag} {wire.rows_in_select_tag(data[start:end])}")
        return wire.command_complete(present.tag)
    if not present.keep_rows:
        if mtype == wire.ROW_DESCRIPTION:
            return wire.NO_DATA_MSG if kind == wire.DESCRIBE else b""
        if mtype == wire.DATA_ROW:
            return b""
    return replacement


__all__ = [
    "DISCARD",
    "ENDS_AT_READY",
    "EXTENDED",
    "FAILED",
    "HASHED",
    "IDLE",
    "IN_BLOCK",
    "PENDING",
    "Checked",
    "Collector",
    "Expect",
    "Message",
    "Pending",
    "Phase",
    "Presentation",
    "Relay",
    "RelayHooks",
    "Special",
    "present_answer",
]
