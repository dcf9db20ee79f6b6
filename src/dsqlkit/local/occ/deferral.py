"""Deferred point writes: one session's side.

DSQL never makes a statement wait, and a transaction learns that it lost only at COMMIT.
PostgreSQL makes a write wait on the row lock of another open transaction, and refuses it at
once if its row was committed since the snapshot. For *point writes* (an ``UPDATE`` that pins
a unique key to a parameter, :mod:`dsqlkit.local.occ.points`) the endpoint knows which row a
write touches before it runs, so it need not let PostgreSQL find out the slow way:

* The write's row was written by another open transaction (the engine's *holders*): it would
  wait. It answers from its dry run instead, at once, and is *deferred*: once its dry run
  found the row, the two transactions collide (the first to commit wins) and the write waits
  in the session for its turn to run for real.
* The row was committed by a transaction whose COMMIT was sent after this one took its
  snapshot: PostgreSQL would refuse the write. It answers from its dry run, and if that found
  the row, the transaction has lost (as it would have at this statement; DSQL reports it at
  COMMIT). Nothing runs.
* Otherwise the write runs, and once it changed the row this transaction holds it.

A deferred write runs for real, in the transaction's snapshot, before its next unit, unless
the transaction has lost by then (a holder committed first) or the next unit is another
point write of the same table on another key (it cannot see the deferred row). At COMMIT, a
holder whose own COMMIT is at the backend decides first; the others make way (they replay
later, and lose if this one commits). If the real write then fails, the row was committed
meanwhile: the transaction has lost.

Whether a table's UPDATEs may be deferred at all (no constraint that could refuse the new
value, a unique key) is asked once per statement text and catalog version, on the session's
own backend, before the unit that first uses it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsqlkit.local import wire
from dsqlkit.local.occ.engine import Conflict, Plan
from dsqlkit.local.occ.points import Atom, PointWrite, TableInfo, point_write, table_query
from dsqlkit.local.protocol import (
    DISCARD,
    FAILED,
    IDLE,
    IN_BLOCK,
    Message,
    Special,
)

if TYPE_CHECKING:
    from dsqlkit.local.occ.session import SessionOcc

log = logging.getLogger(__name__)

# The names dry runs of the client's prepared statements are prepared under.
DRY_PREFIX = "dsqlkit_dry_"
# What the catalog said is kept for at most this many statement texts (and users).
_MAX_TABLES = 4096
# The statements deferred writes run as (by text).
_DEFERRED = "dsqlkit_deferred_"


@dataclass(slots=True)
class _Write:
    """A point write of this unit: what the engine planned, and what runs it later."""

    atom: Atom
    plan: Plan
    sql: str
    oids: list[int]
    bind: bytes  # the client's Bind


class Deferral:
    def __init__(self, occ: SessionOcc) -> None:
        self.occ = occ
        # Point writes answered from their dry runs, to run before the next unit.
        self.deferred: list[_Write] = []
        # The point write of the unit in flight, settled when its answer is in.
        self._pending: _Write | None = None
        # The unnamed statement's text and parameter types (the last Parse of "").
        self._unnamed: tuple[str, list[int]] | None = None

    def clear(self) -> None:
        self.deferred.clear()
        self._pending = None

    # -- statements ---------------------------------------------------------------------------

    def parsed(self, frame: bytes) -> None:
        """A Parse goes to the backend: remember the unnamed statement's text."""
        if len(frame) > 5 and frame[5] != 0:
            return  # a named statement (the statement policy keeps those)
        try:
            name, sql, oids = wire.parse_parse(frame)
        except wire.ProtocolViolation:
            self._unnamed = None
            return
        if not name:
            self._unnamed = (sql, oids)

    def _statement(self, name: str) -> tuple[str, list[int]] | None:
        if not name:
            return self._unnamed
        prepared = self.occ.policy.prepared.get(name)
        return None if prepared is None else (prepared[0].text, prepared[1])

    def _table(self, sql: str) -> TableInfo | None:
        """What the catalog says of the UPDATE's table, as the session's user sees it (the
        engine keeps it until the next DDL)."""
        return self.occ.server.engine.tables.get((self.occ.host.user, sql))

    def _write(self, frame: bytes) -> tuple[PointWrite, str, list[int], Atom] | None:
        """The deferrable point write a Bind runs, keyed by its atom; None for others
        (and for a malformed Bind: PostgreSQL answers it)."""
        found = self._bound(frame)
        return None if found is None else self._keyed(found[0], found[1], frame)

    def _bound(self, frame: bytes) -> tuple[str, list[int]] | None:
        """The text and parameter types of the statement a Bind runs (None if unknown, or
        the Bind is malformed: PostgreSQL answers it)."""
        try:
            return self._statement(wire.parse_bind_names(frame)[1])
        except wire.ProtocolViolation:
            return None

    def _keyed(self, sql: str, oids: list[int],
               frame: bytes) -> tuple[PointWrite, str, list[int], Atom] | None:
        write = point_write(sql)
        if write is None or write.dry is None:
            return None
        table = self._table(sql)
        if table is None or not table.deferrable or table.key_type is None:
            return None
        try:
            fmt, value = wire.parse_bind_parameter(frame, write.param)
        except wire.ProtocolViolation:
            return None
        declared = oids[write.param - 1] if write.param <= len(oids) else 0
        atom = write.atom(fmt, value, declared, table.key_type)
        return None if atom is None else (write, sql, oids, atom)

    # -- between units -------------------------------------------------------------------------

    def before_unit(self, mtype: int, data: bytes, start: int, end: int) -> Awaitable[None] | None:
        """Work that must run before the unit that starts with this message (the relay
        holds until it is done; then it asks again), or None."""
        occ = self.occ
        relay = occ.relay
        txn = occ.server.engine.txn(occ.host.sid)
        healthy = relay.txn_status != FAILED and (
            relay.txn_status == IDLE or relay.deferred_begin is not None
            or (txn is not None and txn.lost is None))
        if healthy:  # (else nowhere to ask the catalog without touching the client's block)
            unknown = self._unknown_table(mtype, data, start, end)
            if unknown is not None:
                return self._look_up(*unknown)
        if self.deferred:
            ends = occ.policy.ends_block(mtype, data, start, end)
            if (txn is None or txn.lost is not None or relay.txn_status != IN_BLOCK
                    or ends == "rollback"):
                self.deferred.clear()
            elif ends == "commit":
                return self._run(committing=True)
            elif not self._disjoint(mtype, data, start, end):
                return self._run(committing=False)
        return None

    def _unknown_table(self, mtype: int, data: bytes, start: int,
                       end: int) -> tuple[str, PointWrite] | None:
        """A deferrable UPDATE the unit starts with whose table is not looked up yet."""
        if mtype == wire.PARSE:
            try:
                sql = wire.parse_parse(data[start:end])[1]
            except wire.ProtocolViolation:
                return None  # the statement policy reports it
        elif mtype == wire.BIND:
            found = self._bound(data[start:end])
            if found is None:
                return None
            sql = found[0]
        else:
            return None
        write = point_write(sql)
        if write is None or write.dry is None or self._table(sql) is not None:
            return None
        return sql, write

    def _disjoint(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """The unit is one point write on the deferred writes' table and key, of another
        row ([Parse,] Bind, Describe, Execute, Sync): it can run before them (its answer
        cannot depend on them)."""
        if mtype != wire.BIND and mtype != wire.PARSE:
            return False
        ahead = self.occ.relay.unit_ahead()
        if ahead is None:
            return False
        parsed: tuple[str, list[int]] | None = None
        binds: list[bytes] = []
        try:
            for kind, frame in ahead:
                if kind == wire.PARSE and not binds and parsed is None:
                    name, sql, oids = wire.parse_parse(frame)
                    parsed = (sql, oids)
                elif kind == wire.BIND:
                    binds.append(frame)
                elif kind not in (wire.DESCRIBE, wire.EXECUTE, wire.SYNC):
                    return False
            if len(binds) != 1:
                return False
            statement = wire.parse_bind_names(binds[0])[1]
        except wire.ProtocolViolation:
            return False
        if parsed is not None and name != statement:
            return False
        found = parsed or self._statement(statement)
        keyed = None if found is None else self._keyed(found[0], found[1], binds[0])
        if keyed is None:
            return False
        atom = keyed[3]
        return all(w.atom[:2] == atom[:2] and w.atom != atom for w in self.deferred)

    async def _look_up(self, sql: str, write: PointWrite) -> None:
        occ = self.occ
        engine = occ.server.engine
        version = engine.catalog_version
        collected = await occ.host.run_internal(wire.query(table_query(write)), 1)
        if collected.errors:
            # The endpoint's own catalog query failed inside the client's block (it should
            # not): the block cannot go on as it was.
            log.warning("session %s: looking up table %s failed: %s", occ.host.sid,
                        write.relation, collected.errors[0].get("M"))
            engine.lose(occ.host.sid, Conflict.DATA)
        elif engine.catalog_version == version:
            if len(engine.tables) >= _MAX_TABLES:
                engine.tables.clear()  # (statement texts without end, until a DDL)
            engine.tables[(occ.host.user, sql)] = TableInfo.from_row(
                collected.rows[0] if collected.rows else [])

    # -- a unit's point write ------------------------------------------------------------------

    def bind(self, frame: bytes) -> tuple[bytes, Special] | None:
        """A Bind: the messages that answer it from its dry run instead (see the module
        docs), or None to run it as it is."""
        occ = self.occ
        relay = occ.relay
        if not (occ.savepoint and relay.recording and relay.txn_status == IN_BLOCK):
            return None
        engine = occ.server.engine
        sid = occ.host.sid
        txn = engine.txn(sid)
        if txn is None:
            return None
        found = self._write(frame)
        if found is None:
            return None
        write, sql, oids, atom = found
        if txn.lost is not None:
            # Lost already: a write that would wait answers from its dry run at once (it
            # would after its lock timeout).
            if not (occ.lost_mode and engine.held_by_others(sid, atom)
                    and relay.sole_statement()):
                return None
        else:
            if not relay.sole_statement():
                # Its answer cannot be told from the others' (whether it changed the row):
                # it runs, untracked.
                return None
            plan = engine.plan(sid, atom)
            self._pending = _Write(atom, plan, sql, oids, frame)
            if plan is Plan.RUN:
                return None
        dry = write.dry
        assert dry is not None
        name = DRY_PREFIX + wire.parse_bind_names(frame)[1]
        relay.extra_expects.extend(((wire.CLOSE, DISCARD), (wire.PARSE, DISCARD)))
        return (wire.close_statement(name) + wire.parse_message(name, dry.sql, oids)
                + wire.rebind(frame, name)), Special(present=dry.presentation)

    def unit_done(self) -> None:
        """The unit's answer is in: settle its point write by the rows it found."""
        pending, self._pending = self._pending, None
        occ = self.occ
        relay = occ.relay
        if pending is None:
            return
        engine = occ.server.engine
        sid = occ.host.sid
        txn = engine.txn(sid)
        if txn is None or txn.lost is not None:
            return
        tag = relay.last_tag
        rows = tag[tag.rfind(b" ") + 1 :]
        changed = (not relay.unit_error and relay.conflict is None and rows.isdigit()
                   and rows != b"0")
        if pending.plan is Plan.RUN:
            engine.ran(sid, pending.atom, changed=changed)
        if not changed:
            return  # no row: nothing to hold, and nothing to defer
        # The unit ran a statement that read rows: the block's snapshot is taken.
        engine.snapshot_taken(sid)
        if pending.plan is not Plan.RUN and engine.found(sid, pending.atom):
            self.deferred.append(pending)

    # -- running them --------------------------------------------------------------------------

    async def _run(self, *, committing: bool) -> None:
        """Run the deferred writes for real, unless the block has lost meanwhile. First a
        transaction it collided with whose COMMIT is at the backend decides; at COMMIT, the
        holders of the rows make way. A write that fails means the block has lost (its
        backend block then failed; it goes on from its savepoint)."""
        occ = self.occ
        engine = occ.server.engine
        sid = occ.host.sid
        while True:
            txn = engine.txn(sid)
            if txn is None or txn.lost is not None:
                self.deferred.clear()
                return
            partner = engine.committing_partner(sid)
            if partner is None:
                break
            await occ.server.commit_finished(partner)
        if committing:
            for other in engine.holders(sid, [write.atom for write in self.deferred]):
                session = occ.server.by_sid.get(other)
                if session is not None:
                    session.occ.make_way()
        deferred, self.deferred = self.deferred, []
        parts: list[bytes] = []
        logged: list[Message] = []
        for write in deferred:
            # One statement name per text: a replay of the block binds it again.
            name = _DEFERRED + hashlib.blake2b(
                write.sql.encode() + repr(write.oids).encode(), digest_size=8).hexdigest()
            parse = wire.parse_message(name, write.sql, write.oids)
            bind = wire.rebind(write.bind, name, portal="")
            run = [(wire.PARSE, parse), (wire.BIND, bind),
                   (wire.EXECUTE, wire.execute_message()), (wire.SYNC, wire.SYNC_MSG)]
            parts.append(wire.close_statement(name))
            parts += (frame for _, frame in run)
            logged += run
        relay = occ.relay
        # Their answers count in the block's digest, as a replay gives them again.
        collected = await occ.host.run_internal(b"".join(parts), len(deferred),
                                                into=relay.txn_hash)
        if collected.errors:
            log.debug("session %s: a deferred write failed (%s): it has lost", sid,
                      collected.errors[0].get("C"))
            engine.lose(sid, Conflict.DATA)
            return
        for write in deferred:
            engine.ran(sid, write.atom)
        relay.log_unit(logged)
        if not relay.txn_replayable:
            engine.unparkable(sid)


__all__ = ["DRY_PREFIX", "Deferral"]
