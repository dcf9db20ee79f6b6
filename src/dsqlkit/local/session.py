"""One client session: startup, IAM authentication, a backend session, then the relay.

The relay keeps at most one client *unit* (the messages up to a Sync, a simple Query or a
Flush) in flight at the backend, and tracks which backend response completes which client
message. That bookkeeping lets the endpoint rewrite or refuse statements without ever
reordering responses, and costs nothing to clients that wait for their answers, which is
what all drivers do.

DSQL's rules are applied per statement with :mod:`dsqlkit.local.dialect`. A refused
statement is replaced by a text that fails to parse and the backend's syntax error by DSQL's
error, so PostgreSQL ends up in exactly the state DSQL's refusal leaves (block aborted, rest
of the batch skipped) without the proxy answering anything itself.

OCC as DSQL does it (``occ_mode="commit"``): inside a transaction block each unit's answer
is held back until the unit completes. If PostgreSQL reports a conflict (a serialization
failure, or a row lock held longer than ``lock_timeout``), the client does not see it:
the backend transaction is rolled back, the block so far is replayed in a scratch
transaction, the unit is run again for the client, and the block's COMMIT then fails with
``40001 change conflicts with another transaction (OC000)``. See docs/local.md for where
this differs from DSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local import dialect, wire
from dsqlkit.local.backend import BackendRefused, BackendSession, send_cancel
from dsqlkit.local.link import Link, LinkClosed
from dsqlkit.local.occ import DryRun, dry_run
from dsqlkit.local.occ.engine import Conflict, Decision
from dsqlkit.local.startup import Refusal, greeting, startup

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)


_EXTENDED = frozenset({wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE, wire.CLOSE})
_ENDS_AT_READY = frozenset({wire.QUERY, wire.SYNC, wire.FUNCTION_CALL})
_COMPLETES = {
    wire.PARSE: frozenset({wire.PARSE_COMPLETE}),
    wire.BIND: frozenset({wire.BIND_COMPLETE}),
    wire.CLOSE: frozenset({wire.CLOSE_COMPLETE}),
    wire.DESCRIBE: frozenset({wire.ROW_DESCRIPTION, wire.NO_DATA}),
    wire.EXECUTE: frozenset({wire.COMMAND_COMPLETE, wire.EMPTY_QUERY, wire.PORTAL_SUSPENDED}),
}
_COPY_IN_MESSAGES = frozenset({wire.COPY_DATA, wire.COPY_DONE, wire.COPY_FAIL})
_IDLE = ord("I")
_IN_BLOCK = ord("T")
_FAILED = ord("E")
_STORAGE_KINDS = frozenset({"select", "dml", "ddl", "utility"})
# PostgreSQL's ways of saying that another transaction won: a serialization failure, a lock
# wait cut short by lock_timeout, a deadlock.
_CONFLICT_STATES = frozenset({"40001", "55P03", "40P01"})
# Text PostgreSQL cannot parse; its syntax error is replaced by the refusal.
_REFUSED_SQL = "DSQLKIT REFUSED"
OC000 = dialect.Refusal("40001", "change conflicts with another transaction (OC000)")
OC001 = dialect.Refusal("40001", "schema has been updated by another transaction (OC001)")
_OC000_FRAME = wire.error_response(OC000.sqlstate, OC000.message)
_OC001_FRAME = wire.error_response(OC001.sqlstate, OC001.message)
# Unit answers are held back for a possible transparent replay up to this size; a bigger
# answer is streamed, and a conflict after that point is reported at the statement.
_MAX_HELD_ANSWER = 1 << 20
_MAX_RECORDED_TRANSACTION = 8 << 20
# Inside a scratch transaction a lock wait means the dry run is needed: keep it short.
_SCRATCH_LOCK_TIMEOUT_MS = 1
# A statement cancelled within this many seconds after the endpoint asked for it was
# cancelled by the endpoint (a cancel request reaches the backend some time after it is sent,
# possibly after the statement it aimed at).
_CANCEL_WINDOW = 1.0
# Each unit of a scratch transaction runs after this savepoint, so that one that waited on a
# lock can be undone and answered with its dry run.
_SAVEPOINT_UNIT = wire.query("SAVEPOINT dsqlkit_unit")
_ROLLBACK_TO_UNIT = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_unit")
# Every transaction block runs inside this savepoint, taken before its first statement: rolling
# back to it releases the block's locks and keeps its snapshot (see dsqlkit.local.occ.engine).
_SAVEPOINT_TXN = wire.query("SAVEPOINT dsqlkit_txn")
_ROLLBACK_TO_TXN = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_txn")
# What a replay must answer as the first run did: rows, command tags, and their order.
_HASHED = frozenset({wire.DATA_ROW, wire.COMMAND_COMPLETE, wire.EMPTY_QUERY,
                     wire.PORTAL_SUSPENDED})
_ROLLBACK_STATEMENT = "dsqlkit_rollback"
_MISSING_STATEMENT = "dsqlkit_missing"


@dataclass(frozen=True, slots=True)
class Presentation:
    """How to show the answer of a stand-in statement: the command tag to report (with the
    row count when ``counted``), and whether its rows are part of the answer."""

    tag: str | None = None
    counted: bool = False
    keep_rows: bool = True

    @classmethod
    def of(cls, dry: DryRun) -> Presentation:
        return cls(tag=dry.tag, counted=dry.tag is not None, keep_rows=dry.keep_rows)


@dataclass(frozen=True, slots=True)
class Special:
    """What to do with the backend's answer to one forwarded message.

    ``error``: replace the first ErrorResponse with this frame (a refused statement).
    ``commit_error``: replace the CommandComplete with this frame (a COMMIT the endpoint
    turned into a ROLLBACK). ``discard``: drop the answer (a message the endpoint added).
    ``present``: the message runs a stand-in statement (a dry run, a local answer); make its
    answer look like the original's. ``present_by_result``: the same for some statements of
    a simple Query, by their position. ``answer``: the endpoint answers the message itself
    with these frames and forwards nothing (see :data:`_BEGIN_TAGS`).
    """

    error: bytes | None = None
    commit_error: bytes | None = None
    discard: bool = False
    present: Presentation | None = None
    present_by_result: dict[int, Presentation] | None = None
    answer: bytes | None = None


_Expect = tuple[int, "Special | None"]
# What a message check decided: (replacement frame or None, what to do with the answer);
# None when the session ended; _PENDING when the text is still being analysed.
_PENDING: Any = object()
_Checked = Any
# What the catalog decided for one statement: a refusal, and whether its waiver applies.
_Fact = tuple["dialect.Refusal | None", bool]
# Texts at least this long are analysed in a thread, off the event loop.
_ANALYZE_INLINE = 65536
_JOB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_DSQL_SETTING_DEFAULTS = {"disable_sync_create_index": "on"}




class Session:
    """A client connection from the startup packet to its end."""

    def __init__(self, server: Server, client: Link, *, sni: str | None) -> None:
        self.server = server
        self.client = client
        self.sni = sni
        self.backend: BackendSession | None = None
        self.user = ""
        self.key = (0, 0)
        self.started = time.monotonic()
        self.settings: dict[str, str] = {}
        # The row limit is enforced in the backend (see catalog.py), the rest here.
        self.rules = dialect.TransactionRules(
            row_limit=None, age_limit=server.config.transaction_age_limit)
        # Named prepared statements, for a Bind that runs one again.
        self.prepared: dict[str, tuple[dialect.Analysis, list[int]]] = {}
        # The names among them that hold a COMMIT.
        self._prepared_commits: set[str] = set()
        # -- relay state
        # Client messages not yet forwarded: [data, frames, index of the next frame].
        self.held: deque[list[Any]] = deque()
        self.expect: deque[_Expect] = deque()
        self.unit_closed = True
        self.backend_skipping = False
        self.copy_in = False
        # A COPY ... FROM STDIN is in flight: its data may come before the CopyInResponse.
        self.copy_expected = False
        self.txn_status = _IDLE
        self.expired = False
        self.busy = False
        # -- the unit in flight
        self.recording = False
        self.unit_msgs: list[tuple[int, bytes]] = []
        self.unit_expects: list[_Expect] = []
        self.unit_out: list[bytes] = []
        self.unit_out_size = 0
        self.unit_flushed = False
        self.unit_error = False
        self.unit_committed = False
        self.unit_ddl = False
        self.conflict: dict[str, str] | None = None
        self.conflict_state = ""
        # -- the transaction block
        self.txn_log: list[list[tuple[int, bytes]]] = []
        self.txn_log_size = 0
        self.txn_replayable = True
        self.txn_ddl = False
        # Nothing but BEGIN ran in the backend's open block yet.
        self.block_clean = False
        # Tables the DDL of this unit / transaction created and changed.
        self.unit_ddl_created: list[str] = []
        self.unit_ddl_changed: list[str] = []
        self.txn_ddl_created: list[str] = []
        self.txn_ddl_changed: list[str] = []
        # The transaction lost and continues in a scratch transaction (see _start_scratch).
        self.in_scratch = False
        # The scratch transaction was rolled back to make way for another session: it
        # replays the block again before its next unit.
        self.scratch_stale = False
        # The backend's block holds the dsqlkit_txn savepoint taken before its first statement.
        self.savepoint = False
        # The unit in flight is exactly a BEGIN (its block can take the savepoint next).
        self.unit_only_begin = False
        # The backend was rolled back to dsqlkit_txn (parked): replay before running again.
        self.backend_parked = False
        # A digest of the backend's answers to the block so far (rows, tags), for replays.
        self.txn_hash = hashlib.blake2b(digest_size=16)
        # When the endpoint last cancelled this backend's statement (a cycle of lock waits).
        self.endpoint_cancel_at = -_CANCEL_WINDOW
        # The transaction lost while its statement ran: release its locks once it is idle.
        self.park_when_idle = False
        self._commit_error: bytes | None = None
        self._rollback_prepared = False
        self._internal: _Internal | None = None
        self._rerun: asyncio.Future[bool] | None = None
        self._pending_analysis: tuple[str, dialect.Analysis] | None = None
        self._catalog_answer: tuple[str, dict[int, _Fact]] | None = None
        # Stand-in statements prepared by name, and portals bound to them.
        self._stmt_present: dict[str, Presentation] = {}
        self._portal_present: dict[str, Presentation] = {}
        self._result_index = 0
        self.unit_in_block = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_client: list[bytes] = []
        self._to_backend: list[bytes] = []
        # A BEGIN answered here, not yet sent (see _BEGIN_TAGS).
        self._deferred_begin: bytes | None = None
        # Counted in server.sessions_waiting: the backend owes this session an answer.
        self._waiting = False
        self._age_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------ startup

    async def run(self) -> None:
        """Serve the session until either side closes."""
        try:
            started = await asyncio.wait_for(startup(self.server, self.client, self.sni),
                                             self.server.config.startup_timeout)
        except Refusal as r:
            self._fatal(r.frame())
            return
        except BackendRefused as exc:
            self._fatal(exc.frame)
            return
        except wire.ProtocolViolation as exc:
            self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))
            return
        except (LinkClosed, ConnectionError):
            self.close()
            return
        except asyncio.TimeoutError:
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "timed out during startup", severity="FATAL"))
            return
        except LocalEndpointError as exc:
            log.warning("session startup failed: %s", exc)
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "server unavailable", severity="FATAL"))
            return
        self.user = started.user
        self.settings.update(started.settings)
        self.backend = started.backend
        self.key = self.server.register(self)
        self.client.write(greeting(started.backend, self.key))
        self._start_relay()
        await self.done

    # ------------------------------------------------------------ relay

    def _start_relay(self) -> None:
        assert self.backend is not None
        b = self.backend.link
        c = self.client
        c.peer, b.peer = b, c
        c.on_lost = self.close
        b.on_lost = self._backend_lost
        c.on_violation = self._client_violation
        b.on_violation = lambda exc: self.close()
        c.on_frames = self._on_client_frames
        b.on_frames = self._guarded_backend_frames
        age = self.server.config.max_connection_age
        if age > 0:
            remaining = age - (time.monotonic() - self.started)
            self._age_timer = asyncio.get_running_loop().call_later(
                max(remaining, 0.0), self._age_reached
            )
        # Bytes that arrived together with the password message are already buffered.
        c.data_received(b"")
        b.data_received(b"")

    # -- client to backend -------------------------------------------------------------

    def _on_client_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        self.held.append([data, frames, 0])
        try:
            self._pump()
        except Exception as exc:
            self._internal_error(exc)

    def _pump(self) -> None:
        """Forward held client messages, in order, in as few writes as possible.

        Stops at a unit boundary (Sync, Query, Flush) while the backend still owes
        responses (:meth:`_unit_done` resumes), and while a conflict is being absorbed.
        """
        held = self.held
        expect = self.expect
        out = self._to_backend
        while held and not self.busy and not self._closed:
            batch = held[0]
            data: bytes = batch[0]
            frames: list[tuple[int, int, int]] = batch[1]
            i: int = batch[2]
            n = len(frames)
            seg = frames[i][1]  # start of the bytes not yet queued in ``out``
            while i < n:
                mtype, start, end = frames[i]
                if self.unit_closed and expect and not (
                    mtype in _COPY_IN_MESSAGES and (self.copy_in or self.copy_expected)
                ):
                    break
                if self.unit_closed and not expect:
                    if start > seg:  # earlier messages go out before anything the unit adds
                        out.append(data[seg:start])
                        seg = start
                    if not self._unit_begins(mtype, data, start, end):
                        self._pause(batch, i, seg, data)
                        return
                    if self._closed:
                        return
                replacement: bytes | None = None
                pushed: _Expect | None = None
                special: Special | None = None
                if (mtype == wire.PARSE or mtype == wire.QUERY) and not (
                        mtype == wire.QUERY and self.copy_in):
                    # A statement text: DSQL's rules decide what the backend runs.
                    checked = (self._check_parse if mtype == wire.PARSE
                               else self._check_query)(data, start, end)
                    if checked is None:
                        return  # the session ended
                    if checked is _PENDING:
                        self._pause(batch, i, seg, data)
                        return
                    replacement, special = checked
                    if special is not None and special.answer is not None:
                        # A BEGIN answered here; it goes to the backend with what follows.
                        if start > seg:
                            out.append(data[seg:start])
                        seg = end
                        self._deferred_begin = data[start:end]
                        self.txn_status = _IN_BLOCK
                        self._to_client.append(special.answer)
                        i += 1
                        continue
                if mtype in _EXTENDED:
                    if mtype == wire.PARSE:
                        special = self._remember_statement(data, start, special)
                    elif mtype == wire.BIND:
                        checked = self._check_bind(data, start, end)
                        if checked is None:
                            return
                        if checked is _PENDING:
                            self._pause(batch, i, seg, data)
                            return
                        replacement, special = checked
                        if self._stmt_present or self._portal_present:
                            self._remember_portal(data, start, end)
                    elif mtype == wire.EXECUTE and self._commit_error is not None:
                        special = Special(commit_error=self._commit_error)
                        self._commit_error = None
                    elif self._portal_present or self._stmt_present:
                        special = self._presentation_for(mtype, data, start, end)
                    if not self.backend_skipping:
                        pushed = (mtype, special)
                    self.unit_closed = False
                elif mtype in _ENDS_AT_READY:
                    if self.copy_in:
                        pass  # the backend ignores Sync during COPY FROM STDIN
                    elif mtype == wire.QUERY:
                        pushed = (mtype, special)
                        self.unit_closed = True
                    else:
                        pushed = (mtype, None)
                        self.unit_closed = True
                        if mtype == wire.SYNC:
                            self.backend_skipping = False
                            self.rules.end_batch()
                elif mtype == wire.FLUSH:
                    self.unit_closed = True
                elif mtype in _COPY_IN_MESSAGES:
                    if mtype != wire.COPY_DATA:
                        self.copy_in = False
                        self.copy_expected = False
                elif mtype == wire.TERMINATE:
                    out.append(data[seg:start])
                    self._flush()
                    self.close()
                    return
                else:
                    out.append(data[seg:start])
                    self._flush()
                    self._client_violation(
                        wire.ProtocolViolation(f"invalid frontend message type {mtype}"))
                    return
                if pushed is not None:
                    expect.append(pushed)
                if self.recording:
                    self._record(mtype, replacement or data[start:end], pushed)
                if replacement is not None:
                    out.append(data[seg:start])
                    if replacement:
                        out.append(replacement)
                    seg = end
                i += 1
            last = frames[i - 1][2] if i > batch[2] else seg
            if last > seg:
                out.append(data if seg == 0 and last == len(data) else data[seg:last])
            if i < n:
                batch[2] = i
                break
            held.popleft()
        self._flush()

    def _pause(self, batch: list[Any], i: int, seg: int, data: bytes) -> None:
        """Stop before message ``i`` (its text is being analysed off the event loop)."""
        start = batch[1][i][1]
        if start > seg:
            self._to_backend.append(data[seg:start])
        batch[2] = i
        self._flush()

    def _analysis(self, sql: str) -> dialect.Analysis | None:
        """The analysis of ``sql``; None while a long text is analysed in a thread.

        Parsing a large text can take seconds, which must not stall every other session.
        """
        if len(sql) < _ANALYZE_INLINE:
            return dialect.analyze(sql)
        pending = self._pending_analysis
        if pending is not None and pending[0] == sql:
            self._pending_analysis = None
            return pending[1]
        self.busy = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, dialect.analyze, sql)

        def ready(f: asyncio.Future[dialect.Analysis]) -> None:
            self.busy = False
            if self._closed:
                return
            self._pending_analysis = (sql, f.result())
            self._pump()

        fut.add_done_callback(ready)
        return None

    def _remember_statement(
        self, data: bytes, start: int, special: Special | None
    ) -> Special | None:
        """A Parse: remember whether this statement name now holds a stand-in."""
        name = data[start + 5 : data.index(b"\0", start + 5)].decode()
        if special is not None and special.present is not None:
            self._stmt_present[name] = special.present
            return None
        if self._stmt_present:
            self._stmt_present.pop(name, None)
        return special

    def _remember_portal(self, data: bytes, start: int, end: int) -> None:
        portal, statement = wire.parse_bind_names(data[start:end])
        present = self._stmt_present.get(statement)
        if present is None:
            self._portal_present.pop(portal, None)
        else:
            self._portal_present[portal] = present

    def _presentation_for(self, mtype: int, data: bytes, start: int, end: int) -> Special | None:
        try:
            if mtype == wire.DESCRIBE:
                kind, name = wire.parse_describe_or_close(data[start:end])
                found = (self._stmt_present if kind == "S" else self._portal_present).get(name)
            elif mtype == wire.EXECUTE:
                found = self._portal_present.get(wire.parse_execute(data[start:end])[0])
            else:
                return None
        except wire.ProtocolViolation:
            return None  # PostgreSQL answers a malformed message with 08P01 and the end
        return Special(present=found) if found is not None else None

    def _record(self, mtype: int, frame: bytes, pushed: _Expect | None) -> None:
        self.unit_msgs.append((mtype, frame))
        if pushed is not None:
            self.unit_expects.append(pushed)
        self.txn_log_size += len(frame)
        if self.txn_log_size > _MAX_RECORDED_TRANSACTION:
            self.txn_replayable = False

    def _flush(self) -> None:
        if self._to_backend:
            assert self.backend is not None
            out = self._to_backend
            if self._deferred_begin is not None:
                # Nothing went to the backend since the BEGIN was answered: every pending
                # expectation is for a message in ``out``, after the BEGIN.
                out.insert(0, self._deferred_begin)
                self.expect.appendleft((wire.QUERY, _DISCARD))
                self._deferred_begin = None
            self.backend.link.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if not self._waiting and self.expect:
                self._start_waiting()
        if self._to_client:
            out = self._to_client
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """The backend is idle and a new unit starts: decide how to watch it.

        Returns False when the backend must first be brought back (a parked transaction
        replays, a lost one moves to its scratch transaction); the unit waits for that.
        """
        server = self.server
        in_block = self.txn_status == _IN_BLOCK
        commit_mode = server.config.occ_mode == "commit"
        if in_block and commit_mode and self.savepoint:
            txn = server.engine.txn(self.sid)
            if self.backend_parked and txn is not None:
                ends = self._unit_ends_block(mtype, data, start, end)
                if txn.lost is None and ends != "rollback":
                    self._spawn_busy(self._replay())
                    return False
                if txn.lost is not None and ends is None:
                    self._spawn_busy(self._scratch_for_lost())
                    return False
            elif self.in_scratch and self.scratch_stale:
                self._spawn_busy(self._start_scratch())
                return False
        self.recording = in_block and commit_mode
        self.unit_msgs = []
        self.unit_expects = []
        self.unit_out = []
        self.unit_out_size = 0
        self.unit_flushed = False
        self.unit_error = False
        self.unit_committed = False
        self.unit_ddl = False
        self.unit_ddl_created = []
        self.unit_ddl_changed = []
        self.unit_only_begin = False
        self.unit_in_block = self.txn_status != _IDLE
        self.conflict = None
        if in_block and server.engine.txn(self.sid) is None:
            # The block's first statement: it takes the snapshot, after the savepoint that
            # lets the endpoint park the block (possible only if nothing ran in it yet).
            clean = self.block_clean or self._deferred_begin is not None
            server.engine.begin(self.sid, parkable=commit_mode and clean)
            self.txn_hash = hashlib.blake2b(digest_size=16)
            if commit_mode and clean:
                self._to_backend.append(_SAVEPOINT_TXN)
                self.expect.append((wire.QUERY, _DISCARD))
                self.savepoint = True
        self.block_clean = False
        if self.in_scratch and in_block:
            self._to_backend.append(_SAVEPOINT_UNIT)
            self.expect.append((wire.QUERY, _DISCARD))
        if in_block and server.faults.roll("disconnect"):
            log.info("fault injection: dropping a connection in the middle of a transaction")
            self.client.abort()
            self.close()
        return True

    def _unit_ends_block(self, mtype: int, data: bytes, start: int, end: int
                         ) -> str | None:
        """"commit" or "rollback" when the unit starting with this message is just that."""
        try:
            if mtype == wire.QUERY:
                sql = wire.parse_query(data[start:end])
            elif mtype == wire.PARSE:
                sql = wire.parse_parse(data[start:end])[1]
            elif mtype == wire.BIND:
                name = wire.parse_bind_names(data[start:end])[1]
                return "commit" if name in self._prepared_commits else None
            else:
                return None
        except wire.ProtocolViolation:
            return None
        statements = [s for s in dialect.analyze(sql).statements if s.kind != "empty"]
        if len(statements) == 1 and statements[0].tcl_action in ("commit", "rollback"):
            return statements[0].tcl_action
        return None

    # -- DSQL's rules, per statement ---------------------------------------------------

    def _statement_policy(self, analysis: dialect.Analysis, *, extended: bool) -> Any:
        """Apply DSQL's rules to the statements of one Query or Parse.

        Returns ``(text, special)``: the text PostgreSQL should run instead (None:
        unchanged) and what to do with the backend's answer; or _PENDING while the catalog
        is being asked about the text.
        """
        if analysis.unparsed:
            masked = analysis.masked_text
            return (masked if masked != analysis.text else None), None
        facts: dict[int, _Fact] = {}
        if not analysis.passthrough:
            asked = self._catalog_facts(analysis)
            if asked is _PENDING:
                return _PENDING
            facts = asked
        if self.txn_status == _IN_BLOCK and any(
                st.tcl_action == "commit" for st in analysis.statements):
            # First committer wins: a transaction that collided with one whose COMMIT is
            # at the backend learns its fate before it commits.
            partner = self.server.engine.committing_partner(self.sid)
            if partner is not None:
                self._spawn_busy(self.server.commit_finished(partner))
                return _PENDING
        rules = self.rules
        if not extended:
            rules.begin_batch()
        texts: list[str] = []
        shown: dict[int, Presentation] = {}
        changed = False
        ddl = False
        index = 0
        for i, stmt in enumerate(analysis.statements):
            if stmt.kind == "empty":
                continue
            fact_refusal, waive = facts.get(i, (None, False))
            verdict = rules.check(stmt, waive=waive)
            refusal = verdict.refusal or fact_refusal
            if refusal is not None and verdict.refusal is None:
                rules.errored(stmt)
            if (refusal is None and stmt.kind in _STORAGE_KINDS
                    and self.txn_status != _FAILED):
                refusal = self._schema_conflict(stmt)
                if refusal is not None:
                    rules.errored(stmt)
            if refusal is not None:
                if not extended:
                    rules.end_batch()
                frame = wire.error_response(refusal.sqlstate, refusal.message,
                                            detail=verdict.detail)
                return _REFUSED_SQL, Special(error=frame)
            if stmt.tcl_action == "commit" and self.txn_status == _IN_BLOCK:
                failure = self._commit_failure()
                rules.completed(stmt)
                if failure is not None:
                    if not extended:
                        rules.end_batch()
                    if extended:
                        self._commit_error = failure
                        return "ROLLBACK", None
                    return "ROLLBACK", Special(commit_error=failure)
                texts.append(stmt.backend_sql)
                index += 1
                continue
            rules.completed(stmt)
            if stmt.is_ddl:
                ddl = True
                self.unit_ddl_created.extend(stmt.ddl_created)
                self.unit_ddl_changed.extend(stmt.ddl_changed)
                if self.txn_status == _IN_BLOCK:
                    self.server.engine.ddl(self.sid)
            elif stmt.tcl_action == "begin" and len(analysis.statements) == 1:
                self.unit_only_begin = True
            answered = self._answer_here(stmt)
            if answered is not None:
                texts.append(answered[0])
                shown[index] = answered[1]
                changed = True
            else:
                changed = changed or stmt.rewritten is not None
                texts.append(stmt.backend_sql)
            index += 1
        if not extended:
            rules.end_batch()
        if ddl:
            self.unit_ddl = True
        text = ";".join(texts) if changed else None
        if not shown:
            return text, None
        if extended:
            return text, Special(present=shown[0])
        return text, Special(present_by_result=shown)

    def _answer_here(self, stmt: dialect.Statement) -> tuple[str, Presentation] | None:
        """SQL that makes PostgreSQL answer what DSQL answers for ``stmt``, if it differs
        from running the statement: a background job's id, an IAM mapping, a setting only
        DSQL has, a reported version."""
        if stmt.job is not None:
            job = stmt.job
            job_id = "".join(secrets.choice(_JOB_ID_ALPHABET) for _ in range(26))
            kind = "INDEX_BUILD" if job.kind == "index_build" else "VALIDATE_CONSTRAINT"
            sql = (f"SELECT sys.dsqlkit_submit_job({_literal(job_id)}, {_literal(kind)}, "
                   f"{_literal(job.concurrent_sql or job.sql)}, "
                   f"{_literal(job.object_name)}, {_literal(_regclass(job.relation))}) "
                   "AS job_id")
            return sql, Presentation(tag=job.tag)
        if stmt.iam is not None:
            iam = stmt.iam
            sql = (f"SELECT sys.dsqlkit_iam({_literal(iam.action)}, {_literal(iam.role)}, "
                   f"{_literal(iam.arn)})")
            return sql, Presentation(tag=f"AWS IAM {iam.action.upper()}", keep_rows=False)
        param = stmt.set_param or stmt.show_param
        if param in dialect.DSQL_ONLY_SETTINGS:
            if stmt.kind == "set":
                if stmt.set_value is None:
                    self.settings.pop(param, None)
                else:
                    self.settings[param] = stmt.set_value
            elif stmt.kind == "show":
                value = self.settings.get(param, _DSQL_SETTING_DEFAULTS.get(param, ""))
                answer = dialect.LocalAnswer("SHOW", (param,), ((value,),))
                return _answer_sql(answer), Presentation(tag="SHOW")
        if stmt.local_answer is not None:
            answer = stmt.local_answer
            return _answer_sql(answer), Presentation(tag=answer.tag,
                                                     keep_rows=bool(answer.columns))
        return None

    def _catalog_facts(self, analysis: dialect.Analysis) -> Any:
        """What only the catalog can decide for these statements (see the dialect's
        ``drop_columns``, ``adopt_indexes``, ``index_columns`` and ``waiver``): a dict of
        ``statement index -> (refusal, waive)``, or _PENDING while the backend is asked."""
        statements = analysis.statements
        if not any(s.drop_columns or s.adopt_indexes or s.index_columns or s.waiver
                   for s in statements):
            return {}
        known = self._catalog_answer
        if known is not None and known[0] == analysis.text:
            self._catalog_answer = None
            return known[1]
        if self.unit_msgs or self.expect or self.txn_status == _FAILED:
            # The backend is not idle (or ignores everything): let PostgreSQL decide.
            return {}
        self.busy = True
        self._spawn(self._ask_catalog(analysis))
        return _PENDING

    async def _ask_catalog(self, analysis: dialect.Analysis) -> None:
        facts: dict[int, _Fact] = {}
        try:
            for i, stmt in enumerate(analysis.statements):
                refusal: dialect.Refusal | None = None
                waive = False
                for rel, column in stmt.drop_columns:
                    rows = await self._query_rows(
                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                        "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE "
                        f"i.indisprimary AND i.indrelid = to_regclass({_literal(_regclass(rel))})"
                    )
                    if any(r[0] == column for r in rows):
                        refusal = dialect.Refusal(
                            "0A000", f"cannot drop primary key column {column}")
                for rel, index_name in stmt.adopt_indexes:
                    target = _regclass(dialect.Relation(rel.schema, index_name))
                    rows = await self._query_rows(
                        "SELECT (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = "
                        f"to_regclass({_literal(target)})), EXISTS (SELECT 1 FROM "
                        f"sys.dsqlkit_jobs WHERE object_name = {_literal(index_name)} AND "
                        "status IN ('submitted', 'processing'))"
                    )
                    if rows and (rows[0][1] == "t" or rows[0][0] == "f"):
                        refusal = dialect.Refusal("55000", f'index "{index_name}" is not valid')
                if stmt.index_columns is not None:
                    rel, columns = stmt.index_columns
                    names = ", ".join(_literal(c) for c in columns) or "NULL"
                    rows = await self._query_rows(
                        "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                        f"to_regclass({_literal(_regclass(rel))}) AND attname IN ({names})"
                    )
                    for (type_name,) in rows:
                        if type_name in ("json", "jsonb"):
                            refusal = dialect.Refusal(
                                "0A000", f"datatype {type_name} is not supported in a key")
                if stmt.waiver == "sync_index_on_empty_table" and self.settings.get(
                    "disable_sync_create_index", "on"
                ).lower() in ("off", "false", "0"):
                    job_rel = stmt.index_columns[0] if stmt.index_columns else None
                    if job_rel is not None:
                        rows = await self._query_rows(
                            f"SELECT NOT EXISTS (SELECT 1 FROM {_qualified(job_rel)})")
                        waive = bool(rows) and rows[0][0] == "t"
                if refusal is not None or waive:
                    facts[i] = (refusal, waive)
        except (ConnectionError, LocalEndpointError) as exc:
            log.info("session ended while reading the catalog: %s", exc)
            self.close()
            return
        finally:
            self.busy = False
        self._catalog_answer = (analysis.text, facts)
        if not self._closed:
            self._pump()

    async def _query_rows(self, sql: str) -> list[list[str | None]]:
        """Rows of an internal query (text form); an error reads as no rows."""
        internal = await self._run_internal_full(wire.query(sql), 1)
        if internal.errors:
            return []
        return [[None if v is None else v.decode("utf-8", "replace") for v in row]
                for row in internal.rows]

    def _parsed(self, parse: Callable[[bytes], Any], data: bytes, start: int, end: int
                ) -> Any:
        """A message's fields, or None after ending the session for a malformed one."""
        try:
            return parse(data[start:end])
        except wire.ProtocolViolation as exc:
            self._violation_in_pump(exc)
            return None

    def _check_query(self, data: bytes, start: int, end: int) -> _Checked:
        sql = self._parsed(wire.parse_query, data, start, end)
        if sql is None:
            return None
        if not self.server.config.rules:
            return None, None
        analysis = self._analysis(sql)
        if analysis is None:
            return _PENDING
        if any(stmt.copy_from_stdin for stmt in analysis.statements):
            self.copy_expected = True
        policy = self._statement_policy(analysis, extended=False)
        if policy is _PENDING:
            return _PENDING
        text, special = policy
        if (text is None and special is None and self.txn_status == _IDLE and not self.expect
                and self.unit_closed and not self.backend_skipping
                and len(analysis.statements) == 1
                and analysis.statements[0].tcl_action == "begin"):
            tag = _BEGIN_TAGS.get(" ".join(sql.rstrip().rstrip(";").upper().split()))
            if tag is not None:
                return None, _BEGIN_ANSWERS[tag]
        return (wire.query(text) if text is not None else None), special

    def _check_parse(self, data: bytes, start: int, end: int) -> _Checked:
        fields = self._parsed(wire.parse_parse, data, start, end)
        if fields is None:
            return None
        name, sql, oids = fields
        if not self.server.config.rules:
            return None, None
        analysis = self._analysis(sql)
        if analysis is None:
            return _PENDING
        commit = (len(analysis.statements) == 1
                  and analysis.statements[0].tcl_action == "commit")
        if name:
            self.prepared[name] = (analysis, oids)
            if commit:
                self._prepared_commits.add(name)
            else:
                self._prepared_commits.discard(name)
        if len(analysis.statements) > 1:
            return None, None  # PostgreSQL refuses several commands in one Parse itself
        if name and commit:
            return None, None  # its executions are checked at Bind
        policy = self._statement_policy(analysis, extended=True)
        if policy is _PENDING:
            return _PENDING
        text, special = policy
        if text is None:
            return None, special
        return wire.parse_message(name, text, oids), special

    def _check_bind(self, data: bytes, start: int, end: int) -> _Checked:
        """A Bind runs a prepared statement again: OC001 if the session's catalog of a table
        it uses is stale; and a named COMMIT must not commit a transaction that has to fail."""
        checks_schema = self.server.engine.schema_mode != "off" and self.prepared
        if not checks_schema and (self.txn_status != _IN_BLOCK or not self._prepared_commits):
            return None, None  # (PostgreSQL itself answers a malformed Bind with 08P01)
        frame = data[start:end]
        names = self._parsed(wire.parse_bind_names, data, start, end)
        if names is None:
            return None
        _, statement = names
        prepared = self.prepared.get(statement) if checks_schema else None
        if prepared is not None and self.txn_status != _FAILED:
            for stmt in prepared[0].statements:
                if stmt.kind in _STORAGE_KINDS and self._schema_conflict(stmt) is not None:
                    self.rules.errored(stmt)
                    # Bind a statement that does not exist; its error becomes OC001.
                    return (wire.rebind(frame, _MISSING_STATEMENT),
                            Special(error=_OC001_FRAME))
        if self.txn_status != _IN_BLOCK or statement not in self._prepared_commits:
            return None, None
        partner = self.server.engine.committing_partner(self.sid)
        if partner is not None:
            self._spawn_busy(self.server.commit_finished(partner))
            return _PENDING
        self.rules.completed(self.prepared[statement][0].statements[0])
        failure = self._commit_failure()
        if failure is None:
            return None, None
        # Bind our own prepared ROLLBACK instead, and answer its Execute with the error.
        self._commit_error = failure
        rebound = wire.rebind(frame, _ROLLBACK_STATEMENT)
        if self._rollback_prepared:
            return rebound, None
        self._rollback_prepared = True
        self.expect.append((wire.PARSE, _DISCARD))
        return wire.parse_message(_ROLLBACK_STATEMENT, "ROLLBACK", []) + rebound, None

    def _violation_in_pump(self, exc: wire.ProtocolViolation) -> None:
        self._to_backend.clear()
        self._client_violation(exc)

    # -- OCC: schema versions and commit failures --------------------------------------

    def _schema_conflict(self, stmt: dialect.Statement) -> dialect.Refusal | None:
        """OC001 when this session's catalog of a table the statement uses is stale."""
        server = self.server
        if server.engine.access(self.sid, stmt.relations,
                                storage=stmt.kind in _STORAGE_KINDS) is not None:
            return OC001
        if server.faults.roll("oc001"):
            return OC001
        return None

    def _commit_failure(self) -> bytes | None:
        """The error a COMMIT must answer instead of committing, if any."""
        server = self.server
        decision = server.engine.commit_decision(self.sid)
        if decision.decision is Decision.FAIL:
            return _OC001_FRAME if decision.conflict is Conflict.SCHEMA else _OC000_FRAME
        if decision.decision is not Decision.PROCEED:
            # A parked transaction replays before its unit starts; this is a bug.
            log.error("COMMIT of a transaction in state %s", decision.decision)
            return _OC000_FRAME
        if server.faults.roll("occ"):
            return _OC000_FRAME
        return None

    # -- backend to client -------------------------------------------------------------

    def _guarded_backend_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        try:
            self._on_backend_frames(data, frames)
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """A bug in the endpoint must cost one session, with an error it can read."""
        log.error("internal error in a session; closing it", exc_info=exc)
        self._fatal(wire.error_response("XX000", "internal error in dsqlkit local; see its log",
                                        severity="FATAL"))

    def _on_backend_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        internal = self._internal
        if internal is not None:
            internal.feed(data, frames)
            if internal.done():
                self._internal = None
            return
        expect = self.expect
        out = self.unit_out if self.recording else self._to_client
        forwarded = self.server.sessions_waiting <= 1 and self._passes_unchanged(frames)
        if forwarded:
            # The client gets this answer now; the bookkeeping below runs while it reads.
            # (Only while no other session waits for the backend: under load, finishing
            # first and then waking the client costs less CPU in all.)
            end_all = frames[-1][2]
            self.client.write(data if end_all == len(data) else data[:end_all])
            out = []
        seg = 0
        close_after = False
        for mtype, start, end in frames:
            replacement: bytes | None = None
            special = expect[0][1] if expect else None
            if mtype == wire.ERROR_RESPONSE:
                replacement, close_after = self._backend_error(
                    data[start:end], special, close_after)
            elif mtype == wire.COMMAND_COMPLETE:
                if special is not None and special.commit_error is not None:
                    replacement = special.commit_error
                    self.unit_error = True
                elif data[start + 5 : end - 1] == b"COMMIT":
                    self.unit_committed = True
            if special is not None and special.discard:
                replacement = b""
            else:
                if self.recording and mtype in _HASHED:
                    self.txn_hash.update(data[start:end])
                if special is not None:
                    present = special.present
                    if present is None and special.present_by_result is not None:
                        present = special.present_by_result.get(self._result_index)
                    if present is not None:
                        replacement = _present(present, mtype, data, start, end,
                                               expect[0][0], replacement)
            if mtype == wire.COMMAND_COMPLETE or mtype == wire.EMPTY_QUERY:
                self._result_index += 1
            elif mtype == wire.NOTICE_RESPONSE and self.unit_ddl and data.find(
                    b"skipping", start, end) >= 0:
                # "relation ... already exists, skipping": an IF [NOT] EXISTS DDL that
                # changed nothing; it does not make other sessions' catalogs stale.
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
                if kind in _ENDS_AT_READY:
                    expect.popleft()
                self.txn_status = data[start + 5]
                self._result_index = 0
            elif mtype == wire.ERROR_RESPONSE:
                if kind in _EXTENDED:
                    # The backend now skips every extended message up to the next Sync.
                    while expect and expect[0][0] in _EXTENDED:
                        expect.popleft()
                    if not expect:
                        self.backend_skipping = True
            elif kind in _EXTENDED:
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
            if self.unit_out_size > _MAX_HELD_ANSWER and self.conflict is None:
                # Too big to hold back: stream it, and give up a transparent replay.
                self._to_client.extend(self.unit_out)
                self.unit_out.clear()
                self.unit_flushed = True
                self.txn_replayable = False
        if self.recording and self.copy_in and not self.unit_flushed:
            # The client sends COPY data only once it has the CopyInResponse: hand it over
            # now (this unit can no longer be replayed transparently).
            self.unit_flushed = True
            self.txn_replayable = False
        if self.unit_flushed or close_after:
            self._to_client.extend(self.unit_out)
            self.unit_out.clear()
        if close_after:
            self._flush()
            self.close()
            return
        if not expect:
            self._unit_done()
        else:
            self._flush()

    def _start_waiting(self) -> None:
        self._waiting = True
        self.server.sessions_waiting += 1
        monitor = self.server.monitor
        if monitor is not None:
            monitor.started_waiting(self)

    def _not_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.server.sessions_waiting -= 1
            monitor = self.server.monitor
            if monitor is not None:
                monitor.stopped_waiting(self)

    def _passes_unchanged(self, frames: list[tuple[int, int, int]]) -> bool:
        """Whether :meth:`_on_backend_frames` would forward these frames exactly as they are.

        It mirrors the reasons that loop replaces a frame: an error, a special answer, a
        conflict being absorbed (the loop checks that it agrees). Nothing queued for the
        client may go first. A unit being recorded holds its answer back, in case a conflict
        makes it run again; this answer can only go now if it is the whole of it, ending
        with the unit's ReadyForQuery with no error on the way.
        """
        if self._to_client or self.conflict is not None:
            return False
        if self.recording and (self.unit_out or self.unit_flushed
                               or frames[-1][0] != wire.READY_FOR_QUERY
                               or sum(e[0] in _ENDS_AT_READY for e in self.expect) != 1):
            return False
        for expected in self.expect:
            if expected[1] is not None:
                return False
        return all(frame[0] != wire.ERROR_RESPONSE for frame in frames)

    def _backend_error(
        self, frame: bytes, special: Special | None, close_after: bool
    ) -> tuple[bytes | None, bool]:
        """Decide what the client sees of a backend ErrorResponse."""
        fields = wire.parse_fields(frame)
        self.unit_error = True
        sqlstate = fields.get("C", "")
        if fields.get("S") == "FATAL" or sqlstate == "08P01":
            # A protocol violation or a FATAL error ends the session, as it does for
            # PostgreSQL (some violations are only ERRORs there).
            return None, True
        if special is not None and special.error is not None:
            return special.error, close_after  # a refusal: the rules recorded it already
        if (sqlstate == "57014"
                and time.monotonic() - self.endpoint_cancel_at < _CANCEL_WINDOW):
            # The endpoint cancelled the statement to break a cycle of lock waits: this
            # transaction gives way, as a conflict.
            sqlstate = "40001"
        if sqlstate in _CONFLICT_STATES:
            mode = self.server.config.occ_mode
            if (self.recording and not self.unit_flushed and self.txn_replayable
                    and self.conflict is None):
                self.conflict = fields
                self.conflict_state = sqlstate
                return b"", close_after  # absorbed: the client never sees it
            self.rules.errored(_ANY_STATEMENT)
            if mode != "off":
                return _OC000_FRAME, close_after
            return None, close_after
        self.rules.errored(_ANY_STATEMENT)
        if "dsqlkit_" in fields.get("W", ""):
            # An error raised by the endpoint's own triggers: drop their PL/pgSQL context.
            fields.pop("W", None)
            fields.pop("P", None)
            return wire.encode_fields(wire.ERROR_RESPONSE, fields), close_after
        return None, close_after

    def _unit_done(self) -> None:
        """The backend answered the whole unit."""
        self._not_waiting()
        self.copy_expected = False
        rerun = self._rerun
        if self.conflict is not None:
            self.unit_out = []
            if rerun is not None:
                self._rerun = None
                rerun.set_result(False)
                return
            self.busy = True  # hold client messages from now, not from when the task starts
            self._spawn(self._absorb_conflict())
            return
        if self.recording:
            self._to_client.extend(self.unit_out)
            self.unit_out = []
            self.txn_log.append(self.unit_msgs)
            self.recording = False
        if self.unit_ddl:
            self.txn_ddl = True
            self.txn_ddl_created.extend(self.unit_ddl_created)
            self.txn_ddl_changed.extend(self.unit_ddl_changed)
        if not self.txn_replayable and self.savepoint:
            self.server.engine.unparkable(self.sid)
        if self.txn_status == _IDLE:
            self._transaction_ended()
        elif self.unit_only_begin and not self.unit_in_block:
            self.block_clean = True  # the unit was exactly the block's BEGIN
        if self.park_when_idle and rerun is None:
            self.park_when_idle = False
            if self.txn_status == _IN_BLOCK and not self.held:
                self._flush()
                self.park()
                if self.busy:
                    return
        if rerun is not None:
            self._rerun = None
            rerun.set_result(True)
            return
        if self.expired and self.txn_status == _IDLE and not self.held:
            self._flush()
            self._end_for_age()
            return
        self._pump()

    def _transaction_ended(self) -> None:
        """The backend is idle again: the block (or autocommit statement) is over."""
        committed = self.unit_committed if self.unit_in_block else not self.unit_error
        engine = self.server.engine
        created = self.txn_ddl_created if self.txn_ddl else ()
        changed = self.txn_ddl_changed if self.txn_ddl else ()
        if engine.txn(self.sid) is not None:
            doomed = engine.end(self.sid, committed=committed, created=created,
                                changed=changed)
            self.server.transaction_finished(self.sid, doomed)
        elif self.txn_ddl and committed:
            engine.committed_statement(self.sid, created=created, changed=changed)
        self.txn_log = []
        self.txn_log_size = 0
        self.txn_replayable = True
        self.txn_ddl = False
        self.txn_ddl_created = []
        self.txn_ddl_changed = []
        self.in_scratch = False
        self.scratch_stale = False
        self.savepoint = False
        self.backend_parked = False
        self.block_clean = False

    # -- making way, replaying, continuing a lost transaction ----------------------------

    @property
    def sid(self) -> int:
        """The session's id for the OCC engine (the pid handed to the client)."""
        return self.key[0]

    @property
    def backend_pid(self) -> int | None:
        return self.backend.pid if self.backend is not None else None

    def backend_idle(self) -> bool:
        """Nothing of the client's or the endpoint's runs on the backend."""
        return (self.backend is not None and not self._closed and not self.expect
                and not self.busy and self._internal is None and not self._to_backend)

    def lost(self) -> None:
        """Another transaction won a conflict against this one (it committed first). This
        one's COMMIT will fail; release its locks now rather than when someone waits."""
        if self.backend_idle():
            self.park()
        else:
            self.park_when_idle = True

    def park(self) -> None:
        """Release this transaction's locks for a session that waits on them (the lock
        monitor asks): roll back to the block's savepoint, keeping its snapshot. The block
        replays before it runs again (see dsqlkit.local.occ.engine)."""
        if (not self.backend_idle() or not self.savepoint or self.txn_status != _IN_BLOCK
                or self.backend_parked or self.scratch_stale):
            return
        self._spawn_busy(self._park())

    async def _park(self) -> None:
        await self._run_internal(_ROLLBACK_TO_TXN, 1)
        if self.in_scratch:
            self.scratch_stale = True
        else:
            self.backend_parked = True
            self.server.engine.parked(self.sid)

    def cancel_for_conflict(self) -> None:
        """Cancel the running statement: it is part of a cycle of lock waits (or its
        transaction has lost and must not hold up others); it gives way as a conflict."""
        backend = self.backend
        if backend is None or self._closed or (not self.expect and self._internal is None):
            return
        self.endpoint_cancel_at = time.monotonic()
        self._spawn(send_cancel(self.server.backend_address(), backend.pid, backend.secret))

    def _spawn_busy(self, coro: Any) -> None:
        """Run endpoint work on the backend; client messages wait until it is done."""
        self.busy = True
        self._spawn(self._busy(coro))

    async def _busy(self, coro: Any) -> None:
        try:
            await coro
        except (ConnectionError, LocalEndpointError) as exc:
            log.info("session ended during endpoint work on its backend: %s", exc)
            self.close()
        except Exception as exc:
            self._internal_error(exc)
        finally:
            self.busy = False
            if not self._closed:
                if self.expired and self.txn_status == _IDLE and not self.held:
                    self._end_for_age()
                else:
                    self._pump()

    async def _replay(self) -> None:
        """A parked block runs its statements again, in its own snapshot, before anything
        else. It has lost if they fail (someone committed a row it wrote) or answer
        differently from the first time (a volatile function, a key taken meanwhile)."""
        payload, ready = self._log_payload()
        same = True
        if ready:
            internal = await self._run_internal_full(payload, ready, hashed=True)
            same = not internal.errors and internal.digest() == self.txn_hash.digest()
        if same:
            self.backend_parked = False
            self.server.engine.replayed(self.sid)
            return
        log.debug("a parked transaction's replay differs: it has lost")
        await self._run_internal(_ROLLBACK_TO_TXN, 1)
        self.server.engine.lose(self.sid, Conflict.DATA)

    async def _scratch_for_lost(self) -> None:
        """A transaction that lost while parked goes on in a scratch transaction."""
        await self._start_scratch()
        self.backend_parked = False

    def _log_payload(self) -> tuple[bytes, int]:
        """The block's messages so far, to send again, and how many ReadyForQuery end them."""
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
                if mtype in _ENDS_AT_READY:
                    ready += 1
        if parts and last not in _ENDS_AT_READY:
            parts.append(wire.SYNC_MSG)
            ready += 1
        return b"".join(parts), ready

    # -- absorbing a conflict ----------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _absorb_conflict(self) -> None:
        """PostgreSQL refused this unit with a conflict inside a transaction block, where
        DSQL would answer the statement and fail the COMMIT.

        The transaction has lost. Roll the backend back and continue it in a scratch
        transaction (the block so far replayed, where possible), run the unit again there
        for the client, and fail the COMMIT. If the unit would wait on a row lock again, run
        its lock-free dry run instead (:mod:`dsqlkit.local.occ`); if it has none, report the
        conflict at this statement.
        """
        self.busy = True
        unit = self.unit_msgs
        expects = self.unit_expects
        try:
            if not self.in_scratch:
                log.debug("conflict (%s): continuing in a scratch transaction",
                          self.conflict_state)
                self.server.engine.lose(self.sid, Conflict.DATA)
                await self._start_scratch()
                if await self._run_again(unit, expects):
                    return
            # The unit waited on a lock in the scratch transaction: undo it to the savepoint
            # taken before it and answer with its dry run.
            await self._run_internal(_ROLLBACK_TO_UNIT, 1)
            dry = self._dry_unit(unit)
            if dry is not None and await self._run_again(*dry):
                return
            log.debug("no lock-free answer for this statement; reporting the conflict now")
            await self._fail_at_statement(unit)
        except (ConnectionError, LocalEndpointError) as exc:
            log.info("session ended while absorbing a conflict: %s", exc)
            self.close()
        finally:
            self.busy = False
            if not self._closed:
                if self.expired and self.txn_status == _IDLE and not self.held:
                    self._end_for_age()
                else:
                    self._pump()

    async def _start_scratch(self) -> None:
        """Roll back, begin a READ COMMITTED transaction with a short lock timeout, and
        replay the block's earlier units in it so that it sees its own writes; if replaying
        fails (it may wait on the winner's locks), continue without them."""
        begin = (wire.query("ROLLBACK") + wire.query("BEGIN ISOLATION LEVEL READ COMMITTED")
                 + wire.query(f"SET LOCAL lock_timeout = {_SCRATCH_LOCK_TIMEOUT_MS}")
                 + _SAVEPOINT_TXN)
        payload, ready = self._log_payload()
        errors = await self._run_internal(begin + payload, 4 + ready)
        if errors:
            log.debug("replay failed (%s); the scratch transaction starts empty",
                      errors[0].get("C"))
            await self._run_internal(begin, 4)
        await self._run_internal(_SAVEPOINT_UNIT, 1)
        self.in_scratch = True
        self.scratch_stale = False
        self.savepoint = True
        self.backend_parked = False

    async def _run_again(self, unit: list[tuple[int, bytes]], expects: list[_Expect]) -> bool:
        """Send the unit again; its answer goes to the client. False on another conflict."""
        assert self.backend is not None
        self._rerun = asyncio.get_running_loop().create_future()
        self.recording = True
        self.unit_msgs = unit
        self.unit_expects = expects
        self.unit_out = []
        self.unit_out_size = 0
        self.unit_flushed = False
        self.unit_error = False
        self.unit_committed = False
        self.conflict = None
        parts = []
        for mtype, frame in unit:
            if mtype == wire.PARSE and frame[5] != 0:
                # The first run created this prepared statement; close it so that the
                # Parse succeeds again (closing a missing statement is not an error).
                name = frame[5 : frame.index(b"\0", 5)]
                parts.append(wire.message(wire.CLOSE, b"S" + name + b"\0"))
                self.expect.append((wire.CLOSE, _DISCARD))
            parts.append(frame)
        self.expect.extend(expects)
        self.backend.link.write(b"".join(parts))
        if not self._waiting:
            self._start_waiting()
        return await self._rerun

    def _dry_unit(
        self, unit: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, bytes]], list[_Expect]] | None:
        """The unit with each locking statement replaced by its dry run, or None."""
        msgs: list[tuple[int, bytes]] = []
        expects: list[_Expect] = []
        by_statement: dict[str, DryRun | None] = {}
        by_portal: dict[str, DryRun | None] = {}
        for mtype, frame in unit:
            special: Special | None = None
            if mtype == wire.QUERY:
                ok, converted = _dry_text(wire.parse_query(frame))
                if not ok:
                    return None
                if converted is not None:
                    frame = wire.query(converted.sql)
                    special = Special(present=Presentation.of(converted))
            elif mtype == wire.PARSE:
                name, sql, oids = wire.parse_parse(frame)
                ok, converted = _dry_text(sql)
                if not ok:
                    return None
                by_statement[name] = converted
                if converted is not None:
                    frame = wire.parse_message(name, converted.sql, oids)
            elif mtype == wire.BIND:
                portal, statement = wire.parse_bind_names(frame)
                if statement in by_statement:
                    by_portal[portal] = by_statement[statement]
                else:
                    prepared = self.prepared.get(statement)
                    if prepared is None:
                        return None
                    ok, converted = _dry_text(prepared[0].text)
                    if not ok:
                        return None
                    by_portal[portal] = converted
                    if converted is not None:
                        # A statement prepared earlier: prepare its dry run under another name.
                        dry_name = f"dsqlkit_dry_{statement}"
                        msgs.append((wire.PARSE,
                                     wire.parse_message(dry_name, converted.sql, prepared[1])))
                        expects.append((wire.PARSE, _DISCARD))
                        frame = wire.rebind(frame, dry_name)
            elif mtype == wire.DESCRIBE:
                kind, name = wire.parse_describe_or_close(frame)
                found = by_statement.get(name) if kind == "S" else by_portal.get(name)
                special = Special(present=Presentation.of(found)) if found is not None else None
            elif mtype == wire.EXECUTE:
                portal, _ = wire.parse_execute(frame)
                found = by_portal.get(portal)
                special = Special(present=Presentation.of(found)) if found is not None else None
            elif mtype not in (wire.SYNC, wire.FLUSH, wire.CLOSE):
                return None
            msgs.append((mtype, frame))
            if mtype != wire.FLUSH:
                expects.append((mtype, special))
        return msgs, expects

    async def _fail_at_statement(self, unit: list[tuple[int, bytes]]) -> None:
        """No lock-free answer exists: report the conflict at this statement, as an error
        that aborts the block (DSQL reports it at COMMIT; see docs/local.md)."""
        await self._run_internal(
            wire.query("ROLLBACK") + wire.query("BEGIN") + wire.query("SELECT 1/0"), 3)
        self.in_scratch = False
        self.savepoint = False
        self.txn_status = _FAILED
        self.rules.errored(_ANY_STATEMENT)
        out = [_OC000_FRAME]
        if unit and unit[-1][0] in _ENDS_AT_READY:
            out.append(wire.ready_for_query(_FAILED))
        self.recording = False
        self.txn_log = []
        self.client.write(b"".join(out))

    async def _run_internal(self, payload: bytes, ready: int) -> list[dict[str, str]]:
        return (await self._run_internal_full(payload, ready)).errors

    async def _run_internal_full(self, payload: bytes, ready: int, *,
                                 hashed: bool = False) -> _Internal:
        assert self.backend is not None
        internal = _Internal(ready, hashed=hashed)
        self._internal = internal
        self.backend.link.write(payload)
        # The lock monitor watches the endpoint's own work too: a replay may wait on a lock.
        if not self._waiting:
            self._start_waiting()
        try:
            await internal.future
        finally:
            if not self.expect:
                self._not_waiting()
        return internal

    # ------------------------------------------------------------ ending

    def _age_reached(self) -> None:
        self.expired = True
        if not self.expect and not self.held and self.txn_status == _IDLE:
            self._end_for_age()

    def _end_for_age(self) -> None:
        limit = self.server.config.max_connection_age
        log.info("closing a session at the connection age limit (%ss)", limit)
        self._fatal(wire.error_response(
            "08006", f"connection age limit of {limit:g}s exceeded", severity="FATAL"))

    def _client_violation(self, exc: wire.ProtocolViolation) -> None:
        self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))

    def _backend_lost(self) -> None:
        if not self._closed:
            log.warning("backend session lost; closing the client session")
        self.close()

    def _fatal(self, frame: bytes) -> None:
        self._to_client.clear()
        self.client.write(frame)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._not_waiting()
        if self._age_timer is not None:
            self._age_timer.cancel()
        if self.key != (0, 0):
            self.server.engine.forget(self.sid)
            self.server.transaction_finished(self.sid)
        self.server.unregister(self)
        if self.backend is not None:
            self.backend.link.write(wire.TERMINATE_MSG)
            self.backend.link.close()
        self.client.close()
        # A slow path waiting on the backend (a replay, a catalog question) will never get
        # its answer now.
        internal = self._internal
        if internal is not None and not internal.future.done():
            internal.future.set_exception(ConnectionError("session closed"))
        if self._rerun is not None and not self._rerun.done():
            self._rerun.set_exception(ConnectionError("session closed"))
        if not self.done.done():
            self.done.set_result(None)


class _Internal:
    """Collects the backend's answers to messages the endpoint sent on its own."""

    def __init__(self, ready: int, *, hashed: bool = False) -> None:
        self.ready = ready
        self.errors: list[dict[str, str]] = []
        # Raw values: replayed client statements may answer in binary format.
        self.rows: list[list[bytes | None]] = []
        self.future: asyncio.Future[list[dict[str, str]]] = (
            asyncio.get_running_loop().create_future())
        # A replay's answers, digested as a recorded block's are (Session.txn_hash).
        self._hash = hashlib.blake2b(digest_size=16) if hashed else None

    def digest(self) -> bytes:
        return self._hash.digest() if self._hash is not None else b""

    def feed(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        hashed = self._hash
        for mtype, start, end in frames:
            if hashed is not None and mtype in _HASHED:
                hashed.update(data[start:end])
            if mtype == wire.ERROR_RESPONSE:
                self.errors.append(wire.parse_fields(data[start:end]))
            elif mtype == wire.DATA_ROW:
                self.rows.append(wire.parse_data_row(data[start:end]))
            elif mtype == wire.READY_FOR_QUERY:
                self.ready -= 1
                if self.ready == 0 and not self.future.done():
                    self.future.set_result(self.errors)

    def done(self) -> bool:
        return self.ready <= 0


_ANY_STATEMENT = dialect.analyze("SELECT 1").statements[0]
_DISCARD = Special(discard=True)
# A plain BEGIN that arrives when the session is idle cannot fail, and PostgreSQL takes no
# snapshot until the first statement after it. The endpoint answers it itself and sends it
# in front of the next message, which saves every transaction one backend round trip.
# (Only option-free spellings: the answer must be exactly PostgreSQL's.)
_BEGIN_TAGS = {"BEGIN": "BEGIN", "BEGIN TRANSACTION": "BEGIN", "BEGIN WORK": "BEGIN",
               "START TRANSACTION": "START TRANSACTION"}
_BEGIN_ANSWERS = {
    tag: Special(answer=wire.command_complete(tag) + wire.ready_for_query(_IN_BLOCK))
    for tag in set(_BEGIN_TAGS.values())
}
_READ_KINDS = frozenset({"select", "show", "set", "empty"})


def _dry_text(sql: str) -> tuple[bool, DryRun | None]:
    """``(possible, dry run)`` for a statement text: the dry run is None when the text can
    run as it is (it takes no lock); ``possible`` is false when it has none."""
    converted = dry_run(sql)
    if converted is not None:
        return True, converted
    analysis = dialect.analyze(sql)
    ok = all(s.kind in _READ_KINDS and s.locking is None for s in analysis.statements)
    return ok, None


def _present(
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


def _literal(value: str | None) -> str:
    """A SQL string literal (standard_conforming_strings is on), or NULL."""
    if value is None:
        return "NULL"
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(rel: dialect.Relation) -> str:
    return _ident(rel.name) if rel.schema is None else f"{_ident(rel.schema)}.{_ident(rel.name)}"


def _regclass(rel: dialect.Relation) -> str:
    """A relation as text that ``to_regclass``/``regclass`` resolve like the statement did."""
    return _qualified(rel)


def _answer_sql(answer: dialect.LocalAnswer) -> str:
    """A SELECT whose result is ``answer``: text columns with the given names and rows."""
    if not answer.columns:
        return "SELECT"
    selects = []
    for row in answer.rows or ((None,) * len(answer.columns),):
        cols = ", ".join(f"{_literal(v)}::text AS {_ident(c)}"
                         for v, c in zip(row, answer.columns, strict=True))
        selects.append(f"SELECT {cols}")
    sql = " UNION ALL ".join(selects)
    return sql if answer.rows else f"{sql} WHERE false"

