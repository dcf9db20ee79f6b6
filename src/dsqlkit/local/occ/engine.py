"""DSQL's optimistic concurrency, decided without I/O: who collides with whom, who wins at
COMMIT, which transactions have lost, and which sessions' catalogs are stale.

DSQL takes no locks. Every transaction runs on its snapshot, no statement waits, and of two
transactions whose writes (or ``FOR UPDATE`` / ``FOR KEY SHARE`` reads) overlap, the one that
commits first wins; the other's COMMIT fails with ``40001 ... (OC000)``. PostgreSQL, under the
endpoint, locks rows and makes the second toucher wait. The endpoint owns every backend session,
so it turns PostgreSQL's waits into DSQL's outcome:

* Each transaction block runs inside a savepoint taken right after its BEGIN. A backend that
  makes another one wait (the *holder*) is *parked*: rolled back to that savepoint, which
  releases its locks but keeps its REPEATABLE READ snapshot. The waiter goes on at once.
* A parked transaction replays its statements (in the same snapshot) before it runs again. A
  row that someone committed since its snapshot makes the replay fail with PostgreSQL's own
  serialization error: the transaction has lost. A replay that answers differently from what the
  client already saw (a volatile function, a unique key someone else took) has lost too.
* Every wait is recorded as a *collision* between the two transactions. When one of them
  commits, the other loses (``OC000``), whichever touched the row first: the first committer
  wins. A collision on a table lock (a DDL and a transaction that used the table) makes the
  other side lose with ``OC001`` only when the DDL commits.
* A transaction that lost keeps answering (a *doomed continuation*) and fails at COMMIT.
* Point writes (an UPDATE keyed by a unique key, :mod:`dsqlkit.local.occ.points`) are known
  by their row before they run: the engine keeps which open transactions changed each row,
  and when each row was last committed, so that a write that would wait or be refused is
  answered from its dry run instead (:meth:`Engine.plan`, :mod:`dsqlkit.local.occ.deferral`).

Schema changes (``OC001``), in the default ``relation`` mode: a session remembers the catalog
version at which it last used each table; a committed DDL that changed a table it had used
since the table was created makes its next statement on that table fail, and a transaction
that used the table before the change fails at COMMIT. Creating a table affects nobody (no one
can have used it), and a dropped and re-created table is a new table. ``strict`` mode keeps the
broad rule: any DDL fails every other session's next statement that touches storage.

This module decides; the sessions (:mod:`dsqlkit.local.session`) and the lock monitor
(:mod:`dsqlkit.local.occ.monitor`) carry the decisions out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from dsqlkit.local.occ.points import Atom, TableInfo

SchemaMode = Literal["relation", "strict", "off"]


class Conflict(enum.Enum):
    """Why a transaction lost: DSQL's two OCC codes."""

    DATA = "OC000"
    SCHEMA = "OC001"


class TxnState(enum.Enum):
    ACTIVE = "active"  # its backend transaction holds its work: writes and locks
    PARKED = "parked"  # rolled back to its savepoint; replays its statements before it runs
    COMMITTING = "committing"  # its COMMIT is at the backend
    LOST = "lost"  # doomed: answers on, and its COMMIT fails


class WaitKind(enum.Enum):
    """What a backend waits for, from ``pg_stat_activity.wait_event``."""

    ROW = "row"  # a row another transaction wrote or locked (tuple, transactionid)
    RELATION = "relation"  # a table lock: a DDL and a transaction that used the table
    OTHER = "other"  # anything else (e.g. CREATE INDEX CONCURRENTLY waiting for snapshots)

    @classmethod
    def of(cls, wait_event: str | None) -> WaitKind:
        if wait_event in ("tuple", "transactionid"):
            return cls.ROW
        if wait_event == "relation":
            return cls.RELATION
        return cls.OTHER


@dataclass(slots=True)
class Txn:
    """One client transaction block, as the engine sees it."""

    sid: int
    seq: int
    catalog: int  # the catalog version when it began
    # Its backend can be rolled back to its start and replayed (see the module docs).
    parkable: bool = True
    state: TxnState = TxnState.ACTIVE
    lost: Conflict | None = None
    ddl: bool = False
    # Transactions it collided with, and on what.
    partners: dict[int, WaitKind] = field(default_factory=dict)
    # Tables it used, with the catalog version at its first use of each.
    relations: dict[str, int] = field(default_factory=dict)
    # The point writes it ran (see :mod:`dsqlkit.local.occ.points`), the commit count when
    # its snapshot was surely taken, and when its COMMIT was sent (see Engine.plan).
    atoms: set[Atom] = field(default_factory=set)
    snap: int | None = None
    commit_at: int | None = None


class Plan(enum.Enum):
    """How to run a point write (:meth:`Engine.plan`)."""

    RUN = "run"  # as it is
    DEFER = "defer"  # from its dry run; another open transaction holds the row
    LOSE_IF_FOUND = "lose"  # from its dry run; the row was committed since the snapshot


class RowState(enum.Enum):
    """How an open transaction writes a point write's row."""

    BOUND = "bound"  # its write is running
    HELD = "held"  # its write changed the row: it holds the row lock
    DEFERRING = "deferring"  # its write found the row in its dry run, and waits to run


class Decision(enum.Enum):
    PROCEED = "proceed"  # send the COMMIT
    REPLAY = "replay"  # replay the parked transaction first, then ask again
    WAIT = "wait"  # a transaction it collided with is committing: ask again when it is done
    FAIL = "fail"  # answer the COMMIT with the conflict


@dataclass(frozen=True, slots=True)
class CommitDecision:
    decision: Decision
    conflict: Conflict | None = None
    partner: int | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """A backend that waits on a lock, and the backends it waits for (by backend pid)."""

    pid: int
    kind: WaitKind
    blockers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Backend:
    """What the engine needs to know about a client session's backend at this moment."""

    sid: int
    idle: bool  # nothing of the client's or the endpoint's is running on it


class ActionKind(enum.Enum):
    PARK = "park"  # roll the holder back to its savepoint (it is idle)


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    sid: int


class Engine:
    """The OCC decisions of one endpoint. Sessions are identified by an ``int`` (``sid``)."""

    def __init__(self, schema_mode: SchemaMode = "relation") -> None:
        self.schema_mode: SchemaMode = schema_mode
        self._txns: dict[int, Txn] = {}
        self._seq = 0
        # Catalog versions: bumped by every committed DDL.
        self.catalog_version = 0
        self._created: dict[str, int] = {}
        self._changed: dict[str, int] = {}
        # Per session: table -> version when it last used it (relation mode), or the last
        # catalog version it saw at all (strict mode).
        self._seen: dict[int, dict[str, int]] = {}
        self._seen_any: dict[int, int] = {}
        # Point writes: the open transactions that write each atom's row, and how; and when
        # each atom was last committed, counted in COMMITs sent.
        self._rows: dict[Atom, dict[int, RowState]] = {}
        # What the catalog says of tables, by (user, statement text), until the next DDL.
        self.tables: dict[tuple[str, str], TableInfo] = {}
        self._committed_at: dict[Atom, int] = {}
        self._commits = 0
        self.stats = {"collisions": 0, "parks": 0, "lost_at_commit": 0, "deferred": 0,
                      "foreseen": 0}

    # -- transactions ------------------------------------------------------------------------

    def begin(self, sid: int, *, parkable: bool = True) -> Txn:
        """The session's transaction block sent its first statement to the backend."""
        self._seq += 1
        txn = Txn(sid=sid, seq=self._seq, catalog=self.catalog_version, parkable=parkable)
        self._txns[sid] = txn
        self._seen_any.setdefault(sid, self.catalog_version)
        return txn

    def txn(self, sid: int) -> Txn | None:
        return self._txns.get(sid)

    def parked(self, sid: int) -> None:
        txn = self._txns.get(sid)
        if txn is not None and txn.state is TxnState.ACTIVE:
            txn.state = TxnState.PARKED
            self.stats["parks"] += 1

    def replayed(self, sid: int) -> None:
        txn = self._txns.get(sid)
        if txn is not None and txn.state is TxnState.PARKED:
            txn.state = TxnState.ACTIVE

    def unparkable(self, sid: int) -> None:
        """The transaction can no longer be replayed (COPY data, a streamed answer)."""
        txn = self._txns.get(sid)
        if txn is not None:
            txn.parkable = False

    def committing_partner(self, sid: int) -> int | None:
        """A transaction this one collided with whose COMMIT is at the backend: this one's
        COMMIT must wait for its outcome (first committer wins)."""
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return None
        for partner in txn.partners:
            other = self._txns.get(partner)
            if other is not None and other.state is TxnState.COMMITTING:
                return partner
        return None

    def lose(self, sid: int, conflict: Conflict) -> None:
        """The transaction has lost (its replay or a statement met a committed change)."""
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return
        txn.lost = conflict
        txn.state = TxnState.LOST
        self._forget_partners(txn)
        self._drop_atoms(txn, committed=False)

    def ddl(self, sid: int) -> None:
        txn = self._txns.get(sid)
        if txn is not None:
            txn.ddl = True

    def commit_decision(self, sid: int) -> CommitDecision:
        """What to do with the COMMIT of the session's transaction block."""
        txn = self._txns.get(sid)
        if txn is None:
            return CommitDecision(Decision.PROCEED)
        if txn.lost is not None:
            self.stats["lost_at_commit"] += 1
            return CommitDecision(Decision.FAIL, txn.lost)
        if self._stale_at_commit(txn):
            self.lose(sid, Conflict.SCHEMA)
            self.stats["lost_at_commit"] += 1
            return CommitDecision(Decision.FAIL, Conflict.SCHEMA)
        partner = self.committing_partner(sid)
        if partner is not None:
            return CommitDecision(Decision.WAIT, partner=partner)
        if txn.state is TxnState.PARKED:
            return CommitDecision(Decision.REPLAY)
        txn.state = TxnState.COMMITTING
        txn.commit_at = self._commits
        self._commits += 1
        return CommitDecision(Decision.PROCEED)

    def end(self, sid: int, *, committed: bool, created: Iterable[str] = (),
            changed: Iterable[str] = ()) -> list[tuple[int, Conflict]]:
        """The transaction block ended (``committed``: its COMMIT succeeded at the backend).

        ``created``/``changed``: the tables its DDL created and changed. Returns the
        transactions that lost because this one committed first.
        """
        txn = self._txns.pop(sid, None)
        doomed: list[tuple[int, Conflict]] = []
        if txn is not None and committed and txn.lost is None:
            for partner, kind in txn.partners.items():
                other = self._txns.get(partner)
                if other is None or other.lost is not None:
                    continue
                if kind is WaitKind.ROW:
                    doomed.append((partner, Conflict.DATA))
                elif kind is WaitKind.RELATION and txn.ddl:
                    doomed.append((partner, Conflict.SCHEMA))
        if txn is not None:
            self._forget_partners(txn)
            self._drop_atoms(txn, committed=committed and txn.lost is None)
        for partner, conflict in doomed:
            self.lose(partner, conflict)
        if committed:
            created, changed = tuple(created), tuple(changed)
            if created or changed or (txn is not None and txn.ddl):
                self.ddl_committed(sid, created=created, changed=changed)
        return doomed

    def committed_statement(self, sid: int, *, created: Iterable[str] = (),
                            changed: Iterable[str] = ()) -> None:
        """An autocommit DDL statement committed."""
        self.ddl_committed(sid, created=tuple(created), changed=tuple(changed))

    def forget(self, sid: int) -> None:
        """The session closed."""
        txn = self._txns.pop(sid, None)
        if txn is not None:
            self._forget_partners(txn)
            self._drop_atoms(txn, committed=False)
        self._seen.pop(sid, None)
        self._seen_any.pop(sid, None)

    def _forget_partners(self, txn: Txn) -> None:
        for partner in txn.partners:
            other = self._txns.get(partner)
            if other is not None:
                other.partners.pop(txn.sid, None)
        txn.partners.clear()

    # -- collisions --------------------------------------------------------------------------

    def collide(self, waiter: int, holder: int, kind: WaitKind) -> None:
        """``waiter``'s backend waited on a lock ``holder``'s backend holds."""
        if kind is WaitKind.OTHER or waiter == holder:
            return
        a, b = self._txns.get(waiter), self._txns.get(holder)
        if a is None or b is None or a.lost is not None or b.lost is not None:
            return
        if holder not in a.partners:
            self.stats["collisions"] += 1
        # A row collision outranks a table one: either commit decides it.
        if a.partners.get(holder) is not WaitKind.ROW:
            a.partners[holder] = kind
            b.partners[waiter] = kind

    def resolve(self, waits: Sequence[Wait], backends: Mapping[int, Backend]) -> list[Action]:
        """Turn the backends' lock waits into actions, so that no client statement waits.

        ``backends`` maps the backend pid of each client session to its state; waits of
        other backends (the endpoint's own work) are left to PostgreSQL. An idle holder
        inside a transaction block is parked. A holder busy with a statement, or outside a
        transaction block, finishes first; statements that wait on each other in a cycle are
        PostgreSQL's to break (its deadlock check, after a short ``deadlock_timeout``, fails
        one of them, which counts as a conflict). A transaction that has lost never makes
        another give way.
        """
        actions: dict[int, Action] = {}
        for wait in waits:
            me = backends.get(wait.pid)
            if me is None:
                continue
            mine = self._txns.get(me.sid)
            if mine is not None and mine.lost is not None:
                continue
            for pid in wait.blockers:
                holder = backends.get(pid)
                if holder is None:
                    continue
                self.collide(me.sid, holder.sid, wait.kind)
                txn = self._txns.get(holder.sid)
                if (holder.idle and holder.sid not in actions and txn is not None
                        and txn.parkable and txn.state is not TxnState.PARKED):
                    actions[holder.sid] = Action(ActionKind.PARK, holder.sid)
        return list(actions.values())

    # -- point writes ------------------------------------------------------------------------

    def plan(self, sid: int, atom: Atom) -> Plan:
        """How the session's transaction should run a point write on ``atom`` (see
        :mod:`dsqlkit.local.occ.deferral`): from its dry run if the row was committed since
        its snapshot, or if another open transaction writes it; else as it is (then the
        write is *bound*: it runs)."""
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return Plan.RUN
        if txn.snap is not None and self._committed_at.get(atom, -1) >= txn.snap:
            return Plan.LOSE_IF_FOUND
        rows = self._rows.get(atom)
        if rows is not None:
            for other, state in rows.items():
                if other != sid and state is not RowState.DEFERRING:
                    return Plan.DEFER
        self._mark(sid, atom, RowState.BOUND)
        return Plan.RUN

    def snapshot_taken(self, sid: int) -> None:
        """A statement of the session's transaction read rows: its snapshot is taken. Every
        COMMIT sent from now on comes after it."""
        txn = self._txns.get(sid)
        if txn is not None and txn.snap is None:
            txn.snap = self._commits

    def ran(self, sid: int, atom: Atom, *, changed: bool = True) -> None:
        """The session's point write on ``atom`` ran: it changed the row (the transaction
        holds it now, and collides with those that deferred a write of it), or found none."""
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return
        rows = self._rows.get(atom, {})
        if not changed:
            if rows.get(sid) is RowState.BOUND:
                del rows[sid]
            return
        self._mark(sid, atom, RowState.HELD)
        for other, state in list(self._rows[atom].items()):
            if state is RowState.DEFERRING:
                self.collide(other, sid, WaitKind.ROW)

    def found(self, sid: int, atom: Atom) -> bool:
        """A point write answered from its dry run found its row. True: the write is
        deferred, and the transaction collides with those that changed the row. False: the
        row was committed since the transaction's snapshot; the transaction has lost."""
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return False
        if txn.snap is not None and self._committed_at.get(atom, -1) >= txn.snap:
            self.stats["foreseen"] += 1
            self.lose(sid, Conflict.DATA)
            return False
        self._mark(sid, atom, RowState.DEFERRING)
        for other, state in list(self._rows[atom].items()):
            if state is RowState.HELD and other != sid:
                self.collide(sid, other, WaitKind.ROW)
        self.stats["deferred"] += 1
        return True

    def holders(self, sid: int, atoms: Iterable[Atom]) -> list[int]:
        """The other transactions that changed these rows and can make way for this one:
        parkable and active (neither parked, committing nor lost)."""
        found: list[int] = []
        for atom in atoms:
            for other, state in self._rows.get(atom, {}).items():
                txn = self._txns.get(other)
                if (state is RowState.HELD and other != sid and other not in found
                        and txn is not None and txn.parkable
                        and txn.state is TxnState.ACTIVE):
                    found.append(other)
        return found

    def held_by_others(self, sid: int, atom: Atom) -> bool:
        """Another open transaction writes ``atom``'s row (its write would wait)."""
        return any(other != sid and state is not RowState.DEFERRING
                   for other, state in self._rows.get(atom, {}).items())

    def _mark(self, sid: int, atom: Atom, state: RowState) -> None:
        txn = self._txns.get(sid)
        if txn is None or txn.lost is not None:
            return
        rows = self._rows.setdefault(atom, {})
        if rows.get(sid) is not RowState.HELD:  # a row it changed stays held
            rows[sid] = state
        txn.atoms.add(atom)

    def _drop_atoms(self, txn: Txn, *, committed: bool) -> None:
        for atom in txn.atoms:
            rows = self._rows.get(atom)
            if rows is None:
                continue
            state = rows.pop(txn.sid, None)
            if not rows:
                del self._rows[atom]
            if committed and state is RowState.HELD and txn.commit_at is not None:
                self._committed_at[atom] = txn.commit_at
        if committed and len(self._committed_at) > 4096:
            # Only commits after the oldest snapshot matter, and only the last 2,048 are
            # kept: an older one is PostgreSQL's to find (it refuses the write).
            oldest = min((t.snap for t in self._txns.values() if t.snap is not None),
                         default=self._commits)
            keep = max(oldest, self._commits - 2048)
            self._committed_at = {a: n for a, n in self._committed_at.items() if n >= keep}
        txn.atoms.clear()

    # -- schema versions (OC001) -------------------------------------------------------------

    def access(self, sid: int, relations: Iterable[str], *, storage: bool) -> Conflict | None:
        """A statement of the session is about to use ``relations``: OC001 if its catalog
        is stale (see the module docs). ``storage``: the statement reads or writes data."""
        mode = self.schema_mode
        if mode == "off":
            return None
        if mode == "strict":
            seen = self._seen_any.get(sid, 0)
            if storage and seen < self.catalog_version:
                self._seen_any[sid] = self.catalog_version
                return Conflict.SCHEMA
            self._seen_any.setdefault(sid, self.catalog_version)
            return None
        version = self.catalog_version
        seen_by = self._seen.setdefault(sid, {})
        txn = self._txns.get(sid)
        stale = False
        for name in relations:
            last = seen_by.get(name)
            if (last is not None and last >= self._created.get(name, 0)
                    and self._changed.get(name, -1) > last):
                stale = True
            seen_by[name] = version
            if txn is not None:
                txn.relations.setdefault(name, version)
        return Conflict.SCHEMA if stale else None

    def _stale_at_commit(self, txn: Txn) -> bool:
        if self.schema_mode == "strict":
            if txn.catalog < self.catalog_version:
                self._seen_any[txn.sid] = self.catalog_version
                return True
            return False
        if self.schema_mode == "off":
            return False
        return any(self._changed.get(name, -1) > version
                   for name, version in txn.relations.items())

    def ddl_committed(self, sid: int, *, created: Sequence[str], changed: Sequence[str]) -> None:
        self.catalog_version += 1
        self.tables.clear()
        version = self.catalog_version
        seen_by = self._seen.setdefault(sid, {})
        for name in created:
            self._created[name] = version
            seen_by[name] = version
        for name in changed:
            self._changed[name] = version
            seen_by[name] = version
        self._seen_any[sid] = version


__all__ = [
    "Action",
    "ActionKind",
    "Backend",
    "CommitDecision",
    "Conflict",
    "Decision",
    "Engine",
    "Plan",
    "SchemaMode",
    "Txn",
    "TxnState",
    "Wait",
    "WaitKind",
]
