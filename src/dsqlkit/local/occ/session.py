"""One session's side of the OCC: it carries out the engine's decisions on its own backend.

* Every transaction block runs inside the savepoint ``dsqlkit_txn``, taken before its first
  statement (:meth:`SessionOcc.unit_begins`).
* *Park* (the lock monitor asks, or the block lost): roll back to that savepoint, which
  releases the block's locks and keeps its REPEATABLE READ snapshot.
* *Replay*: before a parked block runs again, its recorded units run again in the same
  snapshot; their answers must digest to what the client was sent, or the block has lost.
* A block that lost goes on in a *scratch* transaction (READ COMMITTED, its units replayed so
  that it reads its own writes, a 1 ms lock timeout); a unit that would wait there answers
  from its dry run (:mod:`dsqlkit.local.occ.dryrun`), and its COMMIT fails.
* A conflict PostgreSQL reports at a statement (a row committed since the snapshot) is hidden:
  the unit runs again in the scratch transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from dsqlkit.local import dialect, wire
from dsqlkit.local.backend import BackendSession, send_cancel
from dsqlkit.local.occ.dryrun import DryRun, dry_run
from dsqlkit.local.occ.engine import Conflict
from dsqlkit.local.policy import ANY_STATEMENT, OC000_FRAME, StatementPolicy
from dsqlkit.local.protocol import (
    DISCARD,
    ENDS_AT_READY,
    FAILED,
    IDLE,
    IN_BLOCK,
    Collector,
    Expect,
    Message,
    Phase,
    Presentation,
    Relay,
    Special,
)

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)

# PostgreSQL's ways of saying that another transaction won: a serialization failure, a lock
# wait cut short by lock_timeout, a deadlock.
_CONFLICT_STATES = frozenset({"40001", "55P03", "40P01"})
# Inside a scratch transaction a lock wait means the dry run is needed: keep it short.
_SCRATCH_LOCK_TIMEOUT_MS = 1
# A statement cancelled within this many seconds after the endpoint asked for it was
# cancelled by the endpoint (a cancel request reaches the backend some time after it is sent,
# possibly after the statement it aimed at).
_CANCEL_WINDOW = 1.0
_SAVEPOINT_UNIT = wire.query("SAVEPOINT dsqlkit_unit")
_ROLLBACK_TO_UNIT = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_unit")
SAVEPOINT_TXN = wire.query("SAVEPOINT dsqlkit_txn")
_ROLLBACK_TO_TXN = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_txn")
_READ_KINDS = frozenset({"select", "show", "set", "empty"})


class OccHost(Protocol):
    """What a session's OCC needs from its session."""

    @property
    def sid(self) -> int: ...

    @property
    def backend(self) -> BackendSession | None: ...

    def hold_for(self, work: Awaitable[object]) -> None: ...

    def spawn(self, work: Awaitable[object]) -> None: ...

    async def run_internal(self, payload: bytes, ready: int, *,
                           hashed: bool = False) -> Collector: ...

    def backend_idle(self) -> bool: ...


class SessionOcc:
    def __init__(self, host: OccHost, relay: Relay, policy: StatementPolicy,
                 server: Server) -> None:
        self.host = host
        self.relay = relay
        self.policy = policy
        self.server = server
        self.commit_mode = server.config.occ_mode == "commit"
        # Nothing but BEGIN ran in the backend's open block yet.
        self.block_clean = False
        # The backend's block holds the dsqlkit_txn savepoint taken before its first statement.
        self.savepoint = False
        # The backend was rolled back to dsqlkit_txn (parked): replay before running again.
        self.backend_parked = False
        # The block lost and continues in a scratch transaction.
        self.in_scratch = False
        # The scratch transaction was rolled back to make way for another session: it is
        # rebuilt before its next unit.
        self.scratch_stale = False
        # The block lost while a statement of it ran: release its locks once it is idle.
        self.park_when_idle = False
        # When the endpoint last cancelled this backend's statement, and whether that cancel
        # has not been seen yet (one at a time: a second one could hit the endpoint's work).
        self.cancelled_at = -_CANCEL_WINDOW
        self.cancel_pending = False
        # The tables the block's DDL created and changed.
        self.txn_ddl = False
        self.txn_ddl_created: list[str] = []
        self.txn_ddl_changed: list[str] = []
        self._rerun: asyncio.Future[bool] | None = None

    # -- units ------------------------------------------------------------------------------

    def unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """A unit starts (the relay is between units). False: the backend must first be
        brought back (a parked block replays, a lost one moves to its scratch
        transaction); the relay holds until then."""
        relay = self.relay
        engine = self.server.engine
        sid = self.host.sid
        in_block = relay.txn_status == IN_BLOCK
        if in_block and self.commit_mode and self.savepoint:
            txn = engine.txn(sid)
            if self.backend_parked and txn is not None:
                ends = self.policy.ends_block(mtype, data, start, end)
                if txn.lost is None and ends != "rollback":
                    self.host.hold_for(self._replay())
                    return False
                if txn.lost is not None and ends is None:
                    self.host.hold_for(self._start_scratch())
                    return False
            elif self.in_scratch and self.scratch_stale:
                self.host.hold_for(self._start_scratch())
                return False
        relay.recording = in_block and self.commit_mode
        if in_block and engine.txn(sid) is None:
            # The block's first statement: it takes the snapshot, after the savepoint that
            # lets the endpoint park the block (possible only if nothing ran in it yet).
            clean = self.block_clean or relay.deferred_begin is not None
            engine.begin(sid, parkable=self.commit_mode and clean)
            relay.txn_hash = hashlib.blake2b(digest_size=16)
            if self.commit_mode and clean:
                relay.prefix(SAVEPOINT_TXN)
                self.savepoint = True
        self.block_clean = False
        if self.in_scratch and in_block:
            relay.prefix(_SAVEPOINT_UNIT)
        return True

    def conflict_answer(self, fields: dict[str, str]) -> tuple[bool, bytes | None]:
        """``(is a conflict, what the client sees)`` for a backend error: a conflict inside
        a recorded unit is hidden (b"": the unit runs again); elsewhere it becomes DSQL's
        OC000 (None: as it is, with ``--occ off``)."""
        sqlstate = fields.get("C", "")
        if sqlstate == "57014" and self._our_cancel():
            # The endpoint cancelled the statement to break a cycle of lock waits: this
            # transaction gives way, as a conflict.
            sqlstate = "40001"
        elif sqlstate == "25P02" and not self.policy.rules.failed:
            # The backend's block failed where the client's did not: the endpoint's own work
            # on it was interrupted. The block cannot go on as it was: treat as lost.
            sqlstate = "40001"
        if sqlstate not in _CONFLICT_STATES:
            return False, None
        if self.relay.absorb(fields):
            return True, b""
        self.policy.rules.errored(ANY_STATEMENT)
        return True, OC000_FRAME if self.server.config.occ_mode != "off" else None

    def unit_done(self) -> bool:
        """The backend answered the unit. True when the OCC takes it from here (a unit that
        ran again, or a conflict to hide): the session must not go on."""
        relay = self.relay
        rerun = self._rerun
        if rerun is not None:
            self._rerun = None
            rerun.set_result(relay.conflict is None)
            return True
        if relay.conflict is not None:
            self.host.hold_for(self._absorb_conflict(relay.unit_msgs, relay.unit_expects))
            return True
        if relay.unit_ddl:
            self.txn_ddl = True
            self.txn_ddl_created.extend(self.policy.unit_ddl_created)
            self.txn_ddl_changed.extend(self.policy.unit_ddl_changed)
        if not relay.txn_replayable and self.savepoint:
            self.server.engine.unparkable(self.host.sid)
        if relay.txn_status == IDLE:
            self.transaction_ended()
        elif self.policy.unit_only_begin and not relay.unit_in_block:
            self.block_clean = True  # the unit was exactly the block's BEGIN
        if self.park_when_idle:
            self.park_when_idle = False
            if relay.txn_status == IN_BLOCK and not relay.held:
                relay.flush()
                self.park()
                return relay.phase is Phase.HELD
        return False

    def transaction_ended(self) -> None:
        """The backend is idle again: the block (or autocommit statement) is over."""
        relay = self.relay
        committed = relay.unit_committed if relay.unit_in_block else not relay.unit_error
        engine = self.server.engine
        sid = self.host.sid
        created = self.txn_ddl_created if self.txn_ddl else ()
        changed = self.txn_ddl_changed if self.txn_ddl else ()
        if engine.txn(sid) is not None:
            doomed = engine.end(sid, committed=committed, created=created, changed=changed)
            self.server.transaction_finished(sid, doomed)
        elif self.txn_ddl and committed:
            engine.committed_statement(sid, created=created, changed=changed)
        relay.forget_transaction()
        self.txn_ddl = False
        self.txn_ddl_created = []
        self.txn_ddl_changed = []
        self.in_scratch = False
        self.scratch_stale = False
        self.savepoint = False
        self.backend_parked = False
        self.block_clean = False

    def closed(self) -> None:
        if self._rerun is not None and not self._rerun.done():
            self._rerun.set_exception(ConnectionError("session closed"))

    # -- making way ---------------------------------------------------------------------------

    def lost(self) -> None:
        """Another transaction won a conflict against this one (it committed first). This
        one's COMMIT will fail; release its locks now rather than when someone waits."""
        if self.host.backend_idle():
            self.park()
        else:
            self.park_when_idle = True

    def park(self) -> None:
        """Release this block's locks for a session that waits on them (the lock monitor
        asks): roll back to the block's savepoint, keeping its snapshot."""
        if (not self.host.backend_idle() or not self.savepoint
                or self.relay.txn_status != IN_BLOCK or self.backend_parked
                or self.scratch_stale):
            return
        self.host.hold_for(self._park())

    async def _park(self) -> None:
        log.debug("session %s makes way (scratch: %s)", self.host.sid, self.in_scratch)
        await self._internal(_ROLLBACK_TO_TXN, 1)
        if self.in_scratch:
            self.scratch_stale = True
        else:
            self.backend_parked = True
            self.server.engine.parked(self.host.sid)

    def cancel_for_conflict(self) -> None:
        """Cancel the running statement: it is part of a cycle of lock waits; it gives way as
        a conflict."""
        backend = self.host.backend
        if backend is None or not self.relay.busy:
            return
        if self.cancel_pending and time.monotonic() - self.cancelled_at < _CANCEL_WINDOW:
            return
        self.cancel_pending = True
        self.cancelled_at = time.monotonic()
        log.debug("session %s: cancelling its statement (a cycle of lock waits)",
                  self.host.sid)
        self.host.spawn(send_cancel(self.server.backend_address(), backend.pid,
                                    backend.secret))

    def _our_cancel(self) -> bool:
        """Whether a 57014 just seen comes from the endpoint's cancel. (PostgreSQL signals a
        cancelled backend twice, to its pid and to its process group, so one cancel request
        can interrupt two statements in a row.)"""
        if time.monotonic() - self.cancelled_at < _CANCEL_WINDOW:
            self.cancel_pending = False
            return True
        return False

    async def _internal(self, payload: bytes, ready: int, *, hashed: bool = False,
                        again: bool = True) -> Collector:
        """The endpoint's own messages; run once more if the endpoint's cancel (meant for a
        client statement that had ended meanwhile) interrupted them."""
        collected = await self.host.run_internal(payload, ready, hashed=hashed)
        if any(e.get("C") == "57014" for e in collected.errors) and self._our_cancel():
            log.debug("session %s: the endpoint's cancel hit its own work", self.host.sid)
            if again:
                collected = await self.host.run_internal(payload, ready, hashed=hashed)
        return collected

    async def _replay(self) -> None:
        """A parked block runs its statements again, in its own snapshot, before anything
        else. It has lost if they fail (someone committed a row it wrote) or answer
        differently from the first time (a volatile function, a key taken meanwhile)."""
        payload, ready = self.relay.log_payload()
        same = True
        if ready:
            collected = await self._internal(payload, ready, hashed=True, again=False)
            same = not collected.errors and collected.digest() == self.relay.txn_hash.digest()
        if same:
            log.debug("session %s replayed %d messages", self.host.sid, ready)
            self.backend_parked = False
            self.server.engine.replayed(self.host.sid)
            return
        log.debug("session %s: its replay differs (%s); it has lost", self.host.sid,
                  collected.errors[0].get("C") if ready and collected.errors else "answers")
        await self._internal(_ROLLBACK_TO_TXN, 1)
        self.server.engine.lose(self.host.sid, Conflict.DATA)

    # -- a lost transaction goes on ------------------------------------------------------------

    async def _absorb_conflict(self, unit: list[Message], expects: list[Expect]) -> None:
        """PostgreSQL refused this unit with a conflict inside a transaction block, where
        DSQL would answer the statement and fail the COMMIT: the block has lost. It goes on
        in a scratch transaction, where the unit runs again for the client; if the unit
        would wait on a lock there, its dry run answers instead; if it has none, the
        conflict is reported at this statement."""
        if _commits(unit):
            # The unit also commits: running it again would commit the scratch transaction.
            self.server.engine.lose(self.host.sid, Conflict.DATA)
            await self._fail_at_statement(unit)
            return
        if not self.in_scratch:
            log.debug("session %s: conflict (%s): continuing in a scratch transaction",
                      self.host.sid, (self.relay.conflict or {}).get("C"))
            self.server.engine.lose(self.host.sid, Conflict.DATA)
            await self._start_scratch()
            if await self._run_again(unit, expects):
                return
        # The unit waited on a lock in the scratch transaction: undo it to the savepoint taken
        # before it and answer with its dry run.
        await self._internal(_ROLLBACK_TO_UNIT, 1)
        dry = self._dry_unit(unit)
        if dry is not None and await self._run_again(*dry):
            return
        log.debug("session %s: no lock-free answer; reporting the conflict now",
                  self.host.sid)
        await self._fail_at_statement(unit)

    async def _start_scratch(self) -> None:
        """Roll back, begin a READ COMMITTED transaction with a short lock timeout, and
        replay the block's earlier units in it so that it sees its own writes; if replaying
        fails (it may wait on the winner's locks), go on without them."""
        begin = (wire.query("ROLLBACK") + wire.query("BEGIN ISOLATION LEVEL READ COMMITTED")
                 + wire.query(f"SET LOCAL lock_timeout = {_SCRATCH_LOCK_TIMEOUT_MS}")
                 + SAVEPOINT_TXN)
        payload, ready = self.relay.log_payload()
        collected = await self._internal(begin + payload, 4 + ready, again=False)
        if collected.errors:
            log.debug("session %s: scratch replay failed (%s); it starts empty",
                      self.host.sid, collected.errors[0].get("C"))
            await self._internal(begin, 4)
        await self._internal(_SAVEPOINT_UNIT, 1)
        self.in_scratch = True
        self.scratch_stale = False
        self.savepoint = True
        self.backend_parked = False

    async def _run_again(self, unit: list[Message], expects: list[Expect]) -> bool:
        """Send the unit again; its answer goes to the client. False on another conflict."""
        self._rerun = asyncio.get_running_loop().create_future()
        self.relay.send_again(unit, expects)
        return await self._rerun

    def _dry_unit(self, unit: list[Message]) -> tuple[list[Message], list[Expect]] | None:
        """The unit with each locking statement replaced by its dry run, or None."""
        msgs: list[Message] = []
        expects: list[Expect] = []
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
                    special = Special(present=_presentation(converted))
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
                    prepared = self.policy.prepared.get(statement)
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
                        expects.append((wire.PARSE, DISCARD))
                        frame = wire.rebind(frame, dry_name)
            elif mtype == wire.DESCRIBE:
                kind, name = wire.parse_describe_or_close(frame)
                found = by_statement.get(name) if kind == "S" else by_portal.get(name)
                special = Special(present=_presentation(found)) if found is not None else None
            elif mtype == wire.EXECUTE:
                portal, _ = wire.parse_execute(frame)
                found = by_portal.get(portal)
                special = Special(present=_presentation(found)) if found is not None else None
            elif mtype not in (wire.SYNC, wire.FLUSH, wire.CLOSE):
                return None
            msgs.append((mtype, frame))
            if mtype != wire.FLUSH:
                expects.append((mtype, special))
        return msgs, expects

    async def _fail_at_statement(self, unit: list[Message]) -> None:
        """No lock-free answer exists: report the conflict at this statement, as an error
        that aborts the block (DSQL reports it at COMMIT; see docs/local.md)."""
        await self._internal(
            wire.query("ROLLBACK") + wire.query("BEGIN") + wire.query("SELECT 1/0"), 3)
        relay = self.relay
        self.in_scratch = False
        self.savepoint = False
        relay.txn_status = FAILED
        self.policy.rules.errored(ANY_STATEMENT)
        out = [OC000_FRAME]
        if unit and unit[-1][0] in ENDS_AT_READY:
            out.append(wire.ready_for_query(FAILED))
        relay.recording = False
        relay.forget_transaction()
        relay.to_client.extend(out)
        relay.flush()


def _commits(unit: list[Message]) -> bool:
    """Whether a recorded unit holds a COMMIT (a Query's, or a Parse's)."""
    for mtype, frame in unit:
        try:
            if mtype == wire.QUERY:
                sql = wire.parse_query(frame)
            elif mtype == wire.PARSE:
                sql = wire.parse_parse(frame)[1]
            else:
                continue
        except wire.ProtocolViolation:
            continue
        if any(s.tcl_action == "commit" for s in dialect.analyze(sql).statements):
            return True
    return False


def _presentation(dry: DryRun) -> Presentation:
    return Presentation(tag=dry.tag, counted=dry.tag is not None, keep_rows=dry.keep_rows)


def _dry_text(sql: str) -> tuple[bool, DryRun | None]:
    """``(possible, dry run)`` for a statement text: the dry run is None when the text can
    run as it is (it takes no lock); ``possible`` is false when it has none."""
    converted = dry_run(sql)
    if converted is not None:
        return True, converted
    analysis = dialect.analyze(sql)
    ok = all(s.kind in _READ_KINDS and s.locking is None for s in analysis.statements)
    return ok, None


__all__ = ["SAVEPOINT_TXN", "OccHost", "SessionOcc"]
