"""Helpers for the driver integration tests (tests/test_connect_*.py).

They run against ``dsqlkit local``: real TLS, real token verification, a real PostgreSQL
behind it. Tests that need other endpoint settings start a second endpoint over the same
backend with :func:`extra_endpoint`. Token lifetimes, refreshes and pool lifetimes run on a
:class:`~clock_support.ManualClock` (:class:`ClockedPlan`): the tests move time forward
rather than wait for it.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clock_support import ManualClock, Mints
from dsqlkit.auth import sigv4
from dsqlkit.auth.sigv4 import Credentials
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig
from dsqlkit.local import LocalDSQL

WRONG = Credentials("AKIAWRONGWRONGWRONG0", "wrong-secret-never-shown", None)

# The age-cap scenario, scaled down from DSQL's 60-minute cap: the endpoint cuts connections
# at AGE_CAP seconds and pools retire theirs at POOL_LIFETIME. Production keeps a 5-minute
# margin (55 of 60 min); half a second here absorbs the scheduling stalls of a loaded test
# machine that 5 minutes absorb in production.
AGE_CAP = 2.0
POOL_LIFETIME = 1.5


@contextmanager
def extra_endpoint(base: LocalDSQL, **settings: Any) -> Iterator[LocalDSQL]:
    """Another endpoint over ``base``'s backend, e.g. with ``max_connection_age=2``."""
    ep = LocalDSQL(ephemeral=True, port=0, backend_url=base.backend_url, **settings)
    ep.start()
    try:
        yield ep
    finally:
        ep.stop()


class SwitchableCredentials:
    """A dsqlkit credentials provider that can be made to fail (STS down), and counts calls."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.failing = False
        self.calls = 0
        self.failures = 0

    def __call__(self) -> Credentials:
        self.calls += 1
        if self.failing:
            self.failures += 1
            raise RuntimeError("credentials endpoint unavailable (test)")
        return self.credentials


@dataclass
class LoadResult:
    ok: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def check(self, minimum: int) -> None:
        assert not self.errors, f"{len(self.errors)} failed queries, first: {self.errors[0]!r}"
        assert self.ok >= minimum, f"only {self.ok} queries ran"


def run_threads(work: Callable[[], None], seconds: float, workers: int = 4,
                pause: float = 0.0, until: Callable[[], bool] | None = None) -> LoadResult:
    """Call ``work`` in a loop from ``workers`` threads for ``seconds`` (or, with ``until``,
    until it holds; ``seconds`` then bounds a run that never gets there); count outcomes."""
    result = LoadResult()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop and not (until is not None and until()):
            try:
                work()
            except Exception as exc:
                with lock:
                    result.errors.append(exc)
            else:
                with lock:
                    result.ok += 1
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


async def run_tasks(work: Callable[[], Awaitable[None]], seconds: float, workers: int = 4,
                    pause: float = 0.0, until: Callable[[], bool] | None = None) -> LoadResult:
    """The asyncio version of :func:`run_threads`."""
    result = LoadResult()
    stop = time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < stop and not (until is not None and until()):
            try:
                await work()
            except Exception as exc:
                result.errors.append(exc)
            else:
                result.ok += 1
            await asyncio.sleep(pause)

    await asyncio.gather(*(loop() for _ in range(workers)))
    return result


def wait_closed_by_server(*fds: int, timeout: float = 10.0) -> None:
    """Block until the server has closed (or written to) each socket: it sends a FATAL
    error and closes an idle session at the endpoint's connection age cap."""
    for fd in fds:
        readable, _, _ = select.select([fd], [], [], timeout)
        assert readable, "the endpoint did not close the connection"


class RecordingProvider(TokenProvider):
    """A TokenProvider that remembers every token it hands to a connection, and when (on
    its clock): the drivers ask it once per new connection."""

    handed: list[tuple[str, float]]

    def token(self) -> str:
        token = super().token()
        self.handed.append((token, self._clock()))
        return token

    async def atoken(self) -> str:
        token = await super().atoken()
        self.handed.append((token, self._clock()))
        return token


class ClockedPlan:
    """A pool's token and lifetime schedule, run on a :class:`ManualClock`.

    ``steps()`` moves the clock (and switches the credentials on and off); after each move
    the test waits for the mint it causes (``mints.wait(n)``; the step yields ``n``) and then
    uses the pool, which replaces every connection past ``lifetime``. :meth:`check` then
    asserts that every token handed to a new connection was valid at that moment on the
    clock; the endpoint, which verifies on the real clock, refusing none is checked by the
    test's queries succeeding.
    """

    TOKEN_SECS = 300  # refresh at 240 s; usable until 270 s; expires at 300 s

    def __init__(self, ep: LocalDSQL, *, lifetime: float = 100.0) -> None:
        self.ep = ep
        self.clock = ManualClock()
        self.mints = Mints()
        self.credentials = SwitchableCredentials(ep.credentials)
        config = DsqlConfig.from_connection_string(
            ep.url(), credentials_provider=self.credentials, token_duration_secs=self.TOKEN_SECS)
        self.provider = RecordingProvider.from_config(config, clock=self.clock,
                                                      on_mint=self.mints)
        self.provider.handed = []
        self.lifetime = lifetime

    def pool_args(self) -> dict[str, Any]:
        """Keyword arguments for a dsqlkit pool: this provider, this clock, this lifetime."""
        return {"token_provider": self.provider, "clock": self.clock,
                "max_lifetime": self.lifetime}

    def _move(self, seconds: float) -> int:
        """Move the clock; the number of mint attempts to wait for after it."""
        before = self.mints.count
        current = self.provider.current
        self.clock.advance(seconds)
        self.provider.wake()
        due = current is not None and self.clock() >= min(current.refresh_at,
                                                          self.provider._due_at())
        return before + 1 if due else before

    def rotation(self, steps: int = 8) -> Iterator[int]:
        """Every step outlives the pool's connections; the tokens are re-minted every 240 s
        (twice in 8 steps of 101 s, staying well within the 15 minutes of skew)."""
        yield self.mints.count
        for _ in range(steps):
            yield self._move(self.lifetime + 1)

    def refresh_failure(self) -> Iterator[int]:
        """The credentials fail from the refresh point on: connections opened meanwhile get
        the old token, still valid; the refresh is retried with backoff and recovers."""
        yield self.mints.count
        first = self.provider.current
        assert first is not None
        self.credentials.failing = True
        yield self._move(first.refresh_at - self.clock() + 1)  # 241 s: the refresh fails
        yield self._move(1)  # the first retry, 1 s later, fails too
        self.credentials.failing = False
        yield self._move(2)  # the second retry, 2 s later: a new token
        current = self.provider.current
        assert current is not None and current.issued_at > first.issued_at
        yield self._move(self.lifetime + 1)  # new connections, with the new token

    def check(self, *, connections: int, tokens: int) -> None:
        handed = self.provider.handed
        for token, at in handed:
            sigv4.verify_token(token, user="admin", region=self.ep.region,
                               hosts=self.ep.hostnames, lookup={
                                   self.ep.credentials.access_key: self.ep.credentials}.get,
                               now=datetime.fromtimestamp(at, timezone.utc))
        assert len(handed) >= connections, f"only {len(handed)} connections were opened"
        assert len({t for t, _ in handed}) >= tokens, "connections did not get new tokens"
