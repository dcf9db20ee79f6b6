"""The lock monitor: notices when a client's backend waits on another client's lock, and has
the engine (:mod:`dsqlkit.local.occ.engine`) decide what to do about it.

PostgreSQL tells no one that a backend started waiting, so the monitor asks: when a session
has waited for its backend longer than ``delay`` (default 1 ms, ``--lock-timeout``), one query
on the monitor's own backend connection lists which of the waiting backends wait on a lock and
for whom (``pg_stat_activity.wait_event`` and ``pg_blocking_pids``). A statement that is
merely slow costs that one query; a statement that waits on a lock is released within about
``delay`` plus two backend round trips.
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

    def cancel_for_conflict(self) -> None: ...


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
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.stats = {"polls": 0, "waits_seen": 0}

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

    def started_waiting(self, session: Monitored) -> None:
        if session not in self.waiting:
            self.waiting[session] = asyncio.get_running_loop().time()
            if not self._wake.is_set():
                self._wake.set()

    def stopped_waiting(self, session: Monitored) -> None:
        self.waiting.pop(session, None)

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
            if not self.waiting:
                self._wake.clear()
                continue
            now = loop.time()
            oldest = min(self.waiting.values())
            if now - oldest < self.delay:
                await asyncio.sleep(oldest + self.delay - now)
                continue
            due = [s for s, since in self.waiting.items() if now - since >= self.delay]
            pids = [pid for pid in (s.backend_pid for s in due) if pid is not None]
            if pids:
                await self._poll(pids)
            # Never poll more often than every ``delay``.
            await asyncio.sleep(self.delay)

    async def _poll(self, pids: list[int]) -> None:
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self.address().dsn(), autocommit=True, application_name="dsqlkit-lock-monitor")
        self.stats["polls"] += 1
        cur = await self._conn.execute(_QUERY, [pids])
        rows = await cur.fetchall()
        if not rows:
            return
        waits = [Wait(int(str(pid)), WaitKind.of(str(event) if event else None),
                      tuple(int(b) for b in blockers or ()))  # type: ignore[attr-defined]
                 for pid, event, blockers in rows]
        self.stats["waits_seen"] += len(waits)
        by_pid = {s.backend_pid: s for s in self.sessions() if s.backend_pid is not None}
        backends = {pid: Backend(s.sid, s.backend_idle()) for pid, s in by_pid.items()}
        by_sid = {s.sid: s for s in by_pid.values()}
        for action in self.engine.resolve(waits, backends):
            self._carry_out(action, by_sid)

    @staticmethod
    def _carry_out(action: Action, sessions: Mapping[int, Monitored]) -> None:
        session = sessions.get(action.sid)
        if session is None:
            return
        if action.kind is ActionKind.PARK:
            session.park()
        else:
            session.cancel_for_conflict()


__all__ = ["LockMonitor", "Monitored"]
