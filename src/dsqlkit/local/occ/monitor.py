"""The lock monitor: notices when a client's backend waits on another client's lock, and has
the engine (:mod:`dsqlkit.local.occ.engine`) decide what to do about it.

What a backend waits for, and on whom, the monitor learns from one query on its own backend
connection (``pg_stat_activity.wait_event`` and ``pg_blocking_pids``). It asks:

* at once when PostgreSQL reports the wait: the PostgreSQL the endpoint manages logs every
  lock wait that lasted ``deadlock_timeout`` (1 ms, ``--lock-timeout``), and the endpoint
  reads its log as it is written (:mod:`dsqlkit.local.occ.lockwaits`). The log only says
  *when* to ask: a client can put text that looks like a lock wait into the log (in an
  identifier, say), so what to do is decided from the query's answer alone.
* when a session has waited for its backend longer than ``delay``: the only way for a backend
  given by ``--backend-url`` (every ``--lock-timeout``), and a slow safety net otherwise.

A holder that was busy with a statement is made way for when it becomes idle
(:meth:`LockMonitor.became_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import psycopg

from dsqlkit.local.backend import BackendAddress
from dsqlkit.local.occ.engine import Action, ActionKind, Backend, Engine, Wait, WaitKind

log = logging.getLogger(__name__)

_QUERY = (
    "SELECT pid, wait_event, pg_blocking_pids(pid) FROM pg_stat_activity "
    "WHERE wait_event_type = 'Lock' AND pid = ANY(%s)"
)


class Monitored(Protocol):
    """A client session as the monitor sees it."""

    @property
    def sid(self) -> int: ...

    @property
    def backend_pid(self) -> int | None: ...

    def backend_idle(self) -> bool: ...

    def park(self) -> None: ...


class LockMonitor:
    def __init__(
        self,
        engine: Engine,
        address: Callable[[], BackendAddress],
        sessions: Callable[[], Iterable[Monitored]],
        *,
        delay: float = 0.001,
    ) -> None:
        self.engine = engine
        self.address = address
        self.sessions = sessions
        self.delay = delay
        # Sessions whose backend owes them an answer, with the loop time they started waiting.
        self.waiting: dict[Monitored, float] = {}
        # Waiting sessions the server's log says to ask about now.
        self._urgent: set[Monitored] = set()
        # Busy holders, and who waits on them, on what.
        self._awaited: dict[Monitored, list[tuple[Monitored, WaitKind]]] = {}
        self._wake = asyncio.Event()  # set while any session waits
        self._report = asyncio.Event()  # the log reported a wait
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.stats = {"polls": 0, "waits_seen": 0, "waits_reported": 0}

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def reported(self, pids: Iterable[int]) -> None:
        """PostgreSQL logged lock waits of these backends: ask about them now."""
        by_pid = self._by_pid()
        found = {by_pid[pid] for pid in pids if pid in by_pid and by_pid[pid] in self.waiting}
        if not found:
            return
        self.stats["waits_reported"] += len(found)
        self._urgent |= found
        self._report.set()
        self._wake.set()

    def became_idle(self, session: Monitored) -> None:
        """A session finished its unit: make way for those still waiting on its locks."""
        awaited = self._awaited.pop(session, None)
        if not awaited or session.backend_pid is None:
            return
        waits = [Wait(w.backend_pid, kind, (session.backend_pid,)) for w, kind in awaited
                 if w in self.waiting and w.backend_pid is not None]
        if waits:
            self._resolve(waits, self._by_pid())

    def forget(self, session: Monitored) -> None:
        self.waiting.pop(session, None)
        self._awaited.pop(session, None)
        self._urgent.discard(session)

    def _by_pid(self) -> dict[int, Monitored]:
        return {s.backend_pid: s for s in self.sessions() if s.backend_pid is not None}

    def _resolve(self, waits: list[Wait], by_pid: Mapping[int, Monitored]) -> None:
        backends = {pid: Backend(s.sid, s.backend_idle()) for pid, s in by_pid.items()}
        by_sid = {s.sid: s for s in by_pid.values()}
        for action in self.engine.resolve(waits, backends):
            self._carry_out(action, by_sid)

    def _remember_busy_holders(self, waits: list[Wait],
                               by_pid: Mapping[int, Monitored]) -> None:
        for wait in waits:
            waiter = by_pid.get(wait.pid)
            if waiter is None:
                continue
            for pid in wait.blockers:
                holder = by_pid.get(pid)
                if holder is not None and not holder.backend_idle():
                    pending = self._awaited.setdefault(holder, [])
                    if (waiter, wait.kind) not in pending:
                        pending.append((waiter, wait.kind))

    def started_waiting(self, session: Monitored) -> None:
        if session not in self.waiting:
            self.waiting[session] = asyncio.get_running_loop().time()
            if not self._wake.is_set():
                self._wake.set()

    def stopped_waiting(self, session: Monitored) -> None:
        self.waiting.pop(session, None)
        self._urgent.discard(session)

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.debug("lock monitor lost its backend connection: %s", exc)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
                await asyncio.sleep(0.2)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self._urgent:
                urgent = [s for s in self._urgent if s in self.waiting]
                self._urgent.clear()
                pids = [pid for pid in (s.backend_pid for s in urgent) if pid is not None]
                if pids:
                    await self._poll(pids)
                continue
            if not self.waiting:
                self._wake.clear()
                continue
            now = loop.time()
            oldest = min(self.waiting.values())
            if now - oldest < self.delay:
                await self._pause(oldest + self.delay - now)
                continue
            due = [s for s, since in self.waiting.items() if now - since >= self.delay]
            pids = [pid for pid in (s.backend_pid for s in due) if pid is not None]
            if pids:
                await self._poll(pids)
            # Never poll more often than every ``delay`` (unless the log reports a wait).
            await self._pause(self.delay)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the log reports a wait."""
        self._report.clear()
        if self._urgent:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._report.wait(), seconds)

    async def _poll(self, pids: list[int]) -> None:
        self.stats["polls"] += 1
        waits = await self._ask(pids)
        if not waits:
            return
        self.stats["waits_seen"] += len(waits)
        by_pid = self._by_pid()
        self._resolve(waits, by_pid)
        self._remember_busy_holders(waits, by_pid)

    async def _ask(self, pids: list[int]) -> list[Wait]:
        """Which of these backends wait on a lock, and on whom (PostgreSQL's own answer)."""
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self.address().dsn(), autocommit=True, application_name="dsqlkit-lock-monitor")
        cur = await self._conn.execute(_QUERY, [pids])
        rows = await cur.fetchall()
        return [Wait(int(str(pid)), WaitKind.of(str(event) if event else None),
                     tuple(int(b) for b in blockers or ()))  # type: ignore[attr-defined]
                for pid, event, blockers in rows]

    @staticmethod
    def _carry_out(action: Action, sessions: Mapping[int, Monitored]) -> None:
        session = sessions.get(action.sid)
        if session is not None and action.kind is ActionKind.PARK:
            session.park()


__all__ = ["LockMonitor", "Monitored"]
