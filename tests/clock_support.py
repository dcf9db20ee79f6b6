"""Time that tests move by hand, and the events they wait for instead of sleeping.

A :class:`ManualClock` drives a :class:`~dsqlkit.auth.tokens.TokenProvider` (``clock=``),
the pools' lifetimes (``clock=``) and the local endpoint's connection and transaction ages
and connection-rate quota (``LocalDSQL(clock=)``); a test moves it, then calls
``provider.wake()`` and waits on :class:`Mints` (the provider's ``on_mint`` hook) for the
mint that follows, or calls the endpoint's ``check_ages()``. :func:`settles` waits for a
state another thread reaches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


class ManualClock:
    """Epoch seconds that move only when the test says. It starts at the real time, so a
    token it dates is accepted by an endpoint that checks dates on the real clock, for as
    long as the clock stays within DSQL's 15 minutes of allowed skew ahead of it."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Mints:
    """A TokenProvider's ``on_mint`` hook: records each mint attempt's outcome (None for a
    new token, else the error) and lets a test wait for the next ones, from a thread or a
    coroutine, whichever thread the mint ran in."""

    def __init__(self) -> None:
        self.outcomes: list[BaseException | None] = []
        self._cond = threading.Condition()

    def __call__(self, error: BaseException | None) -> None:
        with self._cond:
            self.outcomes.append(error)
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.outcomes)

    def wait(self, count: int, timeout: float = 10.0) -> list[BaseException | None]:
        """Block until ``count`` mints were attempted; their outcomes."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.outcomes) >= count, timeout), (
                f"{len(self.outcomes)} token mints, expected {count}")
            return list(self.outcomes)

    async def await_(self, count: int, timeout: float = 10.0) -> list[BaseException | None]:
        # A worker thread waits, so that a refresh task keeps running on the event loop.
        return await asyncio.to_thread(self.wait, count, timeout)


def settles(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Block until ``condition()`` holds: for a state another thread reaches (the endpoint
    saw a socket close, a worker started) when it offers no event to wait on. It is polled
    every few milliseconds; ``timeout`` only bounds a run that never gets there."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)
