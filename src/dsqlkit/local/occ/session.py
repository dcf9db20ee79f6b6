"""One session's side of the OCC: it carries out the engine's decisions on its own backend.

* Every transaction block runs inside the savepoint ``dsqlkit_txn``, taken before its first
  statement (:meth:`SessionOcc.unit_begins`).
* *Park* (the lock monitor asks, or the block lost): roll back to that savepoint, which
  releases the block's locks and keeps its REPEATABLE READ snapshot.
* *Replay*: before a parked block runs again, its recorded units run again in the same
  snapshot; their answers must digest to what the client was sent, or the block has lost.
* A block that lost goes on in its own snapshot, from its savepoint (its earlier writes are
  gone), with a 1 ms lock timeout: each unit runs in a savepoint of its own, and a unit that
  would wait, or that meets a row committed since the snapshot, answers from its dry run
  (:mod:`dsqlkit.local.occ.dryrun`) instead. Its COMMIT fails.
* A conflict PostgreSQL reports at a statement (a row committed since the snapshot) is hidden:
  the block has lost, and the unit answers from its dry run.
* *Deferred writes*: a point write that PostgreSQL would make wait on another open
  transaction's row lock, or refuse, answers from its dry run at once
  (:mod:`dsqlkit.local.occ.deferral` decides when it runs, if ever).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from dsqlkit.local import dialect, wire
from dsqlkit.local.backend import BackendSession
from dsqlkit.local.occ.deferral import DRY_PREFIX, Deferral
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
    Relay,
    Special,
)

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)

# PostgreSQL's ways of saying that another transaction won: a serialization failure, a lock
# wait cut short by lock_timeout, a deadlock.
_CONFLICT_STATES = frozenset({"40001", "55P03", "40P01"})
_SAVEPOINT_UNIT = wire.query("SAVEPOINT dsqlkit_unit")
_ROLLBACK_TO_UNIT = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_unit")
# A lost block goes on from its savepoint, in its snapshot; there a lock wait means the dry
# run is needed, so the wait is kept short. (SET LOCAL here lasts until the block's savepoint
# is rolled back to again.)
_LOST_START = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_txn; SET LOCAL lock_timeout = 1; "
                         "SAVEPOINT dsqlkit_unit")
SAVEPOINT_TXN = wire.query("SAVEPOINT dsqlkit_txn")
# A block's first message to the backend: DSQL's isolation level whatever the session's
# default says (a client could change that through a function), then the savepoint.
_BLOCK_START = wire.query(
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SAVEPOINT dsqlkit_txn")
_ROLLBACK_TO_TXN = wire.query("ROLLBACK TO SAVEPOINT dsqlkit_txn")
_READ_KINDS = frozenset({"select", "show", "set", "empty"})


class OccHost(Protocol):
    """What a session's OCC needs from its session."""

    @property
    def sid(self) -> int: ...

    @property
    def user(self) -> str: ...

    @property
    def backend(self) -> BackendSession | None: ...

    def hold_for(self, work: Awaitable[object]) -> None: ...

    def spawn(self, work: Awaitable[object]) -> None: ...

    async def run_internal(self, payload: bytes, ready: int, *, hashed: bool = False,
                           into: hashlib.blake2b | None = None) -> Collector: ...

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
        # The block lost and goes on from its savepoint (see the module docs).
        self.lost_mode = False
        # The block lost while a statement of it ran: release its locks once it is idle.
        self.park_when_idle = False
        # The tables the block's DDL created and changed.
        self.txn_ddl = False
        self.txn_ddl_created: list[str] = []
        self.txn_ddl_changed: list[str] = []
        self._rerun: asyncio.Future[bool] | None = None
        # Point writes answered from their dry runs (see the module docs).
        self.deferral = Deferral(self)

    # -- units ------------------------------------------------------------------------------

    def unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """A unit starts (the relay is between units). False: the backend must first be
        brought back (a parked block replays); the relay holds until then. A lost block
        goes on from its savepoint (see the module docs)."""
        relay = self.relay
        engine = self.server.engine
        sid = self.host.sid
        in_block = relay.txn_status == IN_BLOCK
        if in_block and self.commit_mode and self.savepoint:
            txn = engine.txn(sid)
            if txn is not None and txn.lost is None and self.backend_parked and (
                    self.policy.ends_block(mtype, data, start, end) != "rollback"):
                # A transaction it collided with is committing: if that commits, this one
                # has lost and need not replay.
                partner = engine.committing_partner(sid)
                self.host.hold_for(self._replay() if partner is None
                                   else self.server.commit_finished(partner))
                return False
        if self.commit_mode:
            work = self.deferral.before_unit(mtype, data, start, end)
            if work is not None:
                self.host.hold_for(work)
                return False
        relay.recording = in_block and self.commit_mode
        if in_block and engine.txn(sid) is None:
            # The block's first statement: it takes the snapshot, after the savepoint that
            # lets the endpoint park the block (possible only if nothing ran in it yet).
            clean = self.block_clean or relay.deferred_begin is not None
            if not clean:
                log.debug("session %s: a block with statements before its savepoint", sid)
            engine.begin(sid, parkable=self.commit_mode and clean)
            relay.txn_hash = hashlib.blake2b(digest_size=16)
            if self.commit_mode and clean:
                relay.prefix(_BLOCK_START)
                self.savepoint = True
        self.block_clean = False
        if in_block and self.savepoint:
            txn = engine.txn(sid)
            if txn is not None and txn.lost is not None:
                if self.lost_mode:
                    relay.prefix(_SAVEPOINT_UNIT)
                elif self.policy.ends_block(mtype, data, start, end) is None:
                    relay.prefix(_LOST_START)
                    self.lost_mode = True
                    self.backend_parked = False
        return True

    # -- conflicts ------------------------------------------------------------------------------

    def conflict_answer(self, fields: dict[str, str]) -> tuple[bool, bytes | None]:
        """``(is a conflict, what the client sees)`` for a backend error: a conflict inside
        a recorded unit is hidden (b"": the unit runs again); elsewhere it becomes DSQL's
        OC000 (None: as it is, with ``--occ off``)."""
        sqlstate = fields.get("C", "")
        if sqlstate == "25P02" and not self.policy.rules.failed:
            # The backend's block failed where the client's did not: the endpoint's own work
            # on it was interrupted. The block cannot go on as it was: treat as lost.
            sqlstate = "40001"
        if sqlstate not in _CONFLICT_STATES:
            return False, None
        if self.relay.conflict is not None or self.relay.absorb(fields):
            return True, b""  # the unit runs again; its errors too are not the client's
        self.policy.rules.errored(ANY_STATEMENT)
        return True, OC000_FRAME if self.server.config.occ_mode != "off" else None

    def unit_done(self) -> bool:
        """The backend answered the unit. True when the OCC takes it from here (a unit that
        ran again, or a conflict to hide): the session must not go on."""
        relay = self.relay
        self.deferral.unit_done()
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
        self.lost_mode = False
        self.savepoint = False
        self.backend_parked = False
        self.block_clean = False
        self.deferral.clear()

    def closed(self) -> None:
        if self._rerun is not None and not self._rerun.done():
            self._rerun.set_exception(ConnectionError("session closed"))

    # -- making way ---------------------------------------------------------------------------

    def lost(self) -> None:
        """Another transaction won a conflict against this one (it committed first). This
        one's COMMIT will fail; release its locks now rather than when someone waits."""
        self.make_way()

    def make_way(self) -> None:
        """Another transaction is about to write rows this block wrote: release its locks
        now, or as soon as its statement ends."""
        if self.host.backend_idle():
            self.park()
        else:
            self.park_when_idle = True

    def park(self) -> None:
        """Release this block's locks for a session that waits on them (the lock monitor
        asks): roll back to the block's savepoint, keeping its snapshot."""
        if not self.host.backend_idle() or not self.savepoint or self.backend_parked:
            return
        status = self.relay.txn_status
        if status == IN_BLOCK:
            self.host.hold_for(self._park())
        elif status == FAILED and self.lost_mode:
            # A statement of the lost block failed: only its own savepoint was rolled back,
            # and the block's earlier units still hold their locks.
            self.host.hold_for(self._release_failed())

    async def _release_failed(self) -> None:
        log.debug("session %s: its failed block makes way", self.host.sid)
        # Roll back everything, and fail the block again: the client must still see it
        # failed (only ROLLBACK helps), and it now holds no lock.
        await self._internal(_ROLLBACK_TO_TXN + wire.query("SELECT 1/0"), 2)
        self.backend_parked = True

    async def _park(self) -> None:
        log.debug("session %s makes way (lost: %s)", self.host.sid, self.lost_mode)
        await self._internal(_ROLLBACK_TO_TXN, 1)
        self.backend_parked = True
        # A lost block starts again from its savepoint at its next unit.
        self.lost_mode = False
        self.server.engine.parked(self.host.sid)

    async def _internal(self, payload: bytes, ready: int, *,
                        hashed: bool = False) -> Collector:
        return await self.host.run_internal(payload, ready, hashed=hashed)

    async def _replay(self) -> None:
        """A parked block runs its statements again, in its own snapshot, before anything
        else. It has lost if they fail (someone committed a row it wrote) or answer
        differently from the first time (a volatile function, a key taken meanwhile)."""
        payload, ready = self.relay.log_payload()
        same = True
        if ready:
            collected = await self._internal(payload, ready, hashed=True)
            same = (not collected.errors
                    and collected.digest() == self.relay.txn_hash.digest())
        if same:
            log.debug("session %s replayed its block", self.host.sid)
            self.backend_parked = False
            self.server.engine.replayed(self.host.sid)
            return
        log.debug("session %s: its replay differs; it has lost", self.host.sid)
        self.server.engine.lose(self.host.sid, Conflict.DATA)
        # Roll back what the replay left; the block goes on from its savepoint as a lost
        # one at its next unit.
        await self._internal(_ROLLBACK_TO_TXN, 1)

    # -- a lost transaction goes on ------------------------------------------------------------

    async def _absorb_conflict(self, unit: list[Message], expects: list[Expect]) -> None:
        """PostgreSQL refused this unit with a conflict inside a transaction block, where
        DSQL would answer the statement and fail the COMMIT: the block has lost. The unit
        answers from its dry run, in the block's snapshot (the block goes on from its
        savepoint); a unit with no dry run runs again there if it has not already, and else
        reports the conflict at this statement."""
        sid = self.host.sid
        if _commits(unit):
            # The unit also commits: running any of it again would commit.
            self.server.engine.lose(sid, Conflict.DATA)
            await self._fail_at_statement(unit)
            return
        first = not self.lost_mode
        if first:
            log.debug("session %s: conflict (%s): it has lost", sid,
                      (self.relay.conflict or {}).get("C"))
            self.server.engine.lose(sid, Conflict.DATA)
            start = _LOST_START
            self.lost_mode = True
            self.backend_parked = False
        else:
            start = _ROLLBACK_TO_UNIT
        dry = self._dry_unit(unit)
        if dry is not None and await self._run_again(*dry, prefix=start):
            return
        if dry is None and first and await self._run_again(unit, expects, prefix=start):
            return
        log.debug("session %s: no lock-free answer; reporting the conflict now", sid)
        await self._fail_at_statement(unit)

    async def _run_again(self, unit: list[Message], expects: list[Expect], *,
                         prefix: bytes = b"") -> bool:
        """Send the unit again (after the endpoint's ``prefix``, a Query whose answer is
        dropped); its answer goes to the client. False on another conflict."""
        self._rerun = asyncio.get_running_loop().create_future()
        self.relay.send_again(unit, expects, prefix=prefix)
        return await self._rerun

    def _dry_unit(self, unit: list[Message]) -> tuple[list[Message], list[Expect]] | None:
        """The unit with each locking statement replaced by its dry run, or None.

        A statement the unit prepares by name keeps its own text (the client runs it again
        later); its dry run is prepared under another name, which the unit's Binds and
        Describes use.
        """
        msgs: list[Message] = []
        expects: list[Expect] = []
        by_statement: dict[str, DryRun | None] = {}
        renamed: dict[str, str] = {}
        by_portal: dict[str, DryRun | None] = {}
        for mtype, frame in unit:
            special: Special | None = None
            if mtype == wire.QUERY:
                ok, converted = _dry_text(wire.parse_query(frame))
                if not ok:
                    return None
                if converted is not None:
                    frame = wire.query(converted.sql)
                    special = Special(present=converted.presentation)
            elif mtype == wire.PARSE:
                name, sql, oids = wire.parse_parse(frame)
                ok, converted = _dry_text(sql)
                if not ok:
                    return None
                by_statement[name] = converted
                if converted is not None and name:
                    # The client's statement as it is (its first run prepared it; the run
                    # again prepares it anew), then its dry run under another name.
                    renamed[name] = DRY_PREFIX + name
                    msgs.append((mtype, frame))
                    expects.append((mtype, DISCARD))
                    frame = wire.parse_message(renamed[name], converted.sql, oids)
                elif converted is not None:
                    frame = wire.parse_message(name, converted.sql, oids)
            elif mtype == wire.BIND:
                portal, statement = wire.parse_bind_names(frame)
                if statement in by_statement:
                    by_portal[portal] = by_statement[statement]
                    if statement in renamed:
                        frame = wire.rebind(frame, renamed[statement])
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
                        dry_name = DRY_PREFIX + statement
                        msgs.append((wire.PARSE,
                                     wire.parse_message(dry_name, converted.sql, prepared[1])))
                        expects.append((wire.PARSE, DISCARD))
                        frame = wire.rebind(frame, dry_name)
            elif mtype == wire.DESCRIBE:
                kind, name = wire.parse_describe_or_close(frame)
                if kind == "S":
                    found = by_statement.get(name)
                    if name in renamed:
                        frame = wire.message(wire.DESCRIBE,
                                             b"S" + renamed[name].encode() + b"\0")
                else:
                    found = by_portal.get(name)
                special = Special(present=found.presentation) if found is not None else None
            elif mtype == wire.EXECUTE:
                portal, _ = wire.parse_execute(frame)
                found = by_portal.get(portal)
                special = Special(present=found.presentation) if found is not None else None
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
        self.lost_mode = False
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
