"""Helpers for the driver integration tests (tests/test_connect_*.py).

They run against ``dsqlkit local``: real TLS, real token verification, a real PostgreSQL
behind it. Tests that need other endpoint settings start a second endpoint over the same
backend with :func:`extra_endpoint`. Token lifetimes, refreshes, pool lifetimes and the
endpoint's connection-age cap run on a :class:`~clock_support.ManualClock`
(:class:`ClockedPlan`, :class:`AgeCapRun`): the tests move time forward rather than wait
for it. Load runs a fixed number of rounds, never for a duration.
"""

from __future__ import annotations

import asyncio
import select
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    ExitStack,
    contextmanager,
)
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

# The age-cap scenario at DSQL's own scale, on one ManualClock that the endpoint (its
# connection-age cap) and the pool (its max_lifetime, left at the 55-minute default) both
# read: the endpoint cuts connections at AGE_CAP, as DSQL does at 60 minutes. In each step
# (:class:`AgeCapRun`) the clock moves CHECKOUT seconds while the test holds every pooled
# connection, and the endpoint checks ages at once: the pool must have retired each one
# early enough for a checkout of that length (55 + 4 < 60 minutes). No real time passes
# between the pool's check and the endpoint's, so the test cannot depend on a margin.
AGE_CAP = 3600.0
CHECKOUT = 240.0


@contextmanager
def extra_endpoint(base: LocalDSQL, **settings: Any) -> Iterator[LocalDSQL]:
    """Another endpoint over ``base``'s backend, e.g. with ``clock=`` (a ManualClock that
    its connection-age cap reads: move it, then call ``check_ages()``)."""
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

    def add(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.errors += other.errors

    def check(self, minimum: int) -> None:
        assert not self.errors, f"{len(self.errors)} failed queries, first: {self.errors[0]!r}"
        assert self.ok >= minimum, f"only {self.ok} queries ran"


def run_threads(work: Callable[[], None], rounds: int, workers: int = 4) -> LoadResult:
    """Call ``work`` ``rounds`` times in each of ``workers`` concurrent threads; count
    outcomes. (A count, not a duration: a slow machine runs the same test, only slower.)"""
    result = LoadResult()
    lock = threading.Lock()
    start = threading.Barrier(workers)

    def loop() -> None:
        start.wait()
        for _ in range(rounds):
            try:
                work()
            except Exception as exc:
                with lock:
                    result.errors.append(exc)
            else:
                with lock:
                    result.ok += 1

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


async def run_tasks(work: Callable[[], Awaitable[None]], rounds: int,
                    workers: int = 4) -> LoadResult:
    """The asyncio version of :func:`run_threads`."""
    result = LoadResult()

    async def loop() -> None:
        for _ in range(rounds):
            try:
                await work()
            except Exception as exc:
                result.errors.append(exc)
            else:
                result.ok += 1

    await asyncio.gather(*(loop() for _ in range(workers)))
    return result


class AgeCapRun:
    """The age-cap scenario (see AGE_CAP): an endpoint and a pool on one ManualClock.

    Each of :meth:`steps` runs a burst of concurrent load (whose first checkouts retire the
    connections past their lifetime), then the test checks out every connection of the
    pool, calls :meth:`checkout_lasts` (the clock moves CHECKOUT seconds and the endpoint
    cuts every session past its cap) and runs a query on each: a connection the pool
    handed out too late in its life fails there. All connections are checked out when the
    clock moves, so none is being opened meanwhile: the pool and the endpoint date each
    one at the same moment of the clock.
    """

    MAX_STEPS = 40  # 28 steps of 4 minutes take every connection through two lifetimes

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.load = LoadResult()
        self.taken = 0  # steps

    @contextmanager
    def endpoint(self, base: LocalDSQL) -> Iterator[LocalDSQL]:
        with extra_endpoint(base, max_connection_age=AGE_CAP, clock=self.clock) as ep:
            self.ep = ep
            yield ep

    def steps(self, done: Callable[[], bool]) -> Iterator[int]:
        """Steps until ``done()`` (every connection replaced twice); fails past MAX_STEPS."""
        for step in range(self.MAX_STEPS):
            if done():
                return
            self.taken += 1
            yield step
        raise AssertionError(f"not done after {self.MAX_STEPS} steps of {CHECKOUT:g} s")

    def checkout_lasts(self) -> None:
        """The held connections stay checked out for CHECKOUT seconds; the endpoint cuts
        what is past its cap."""
        self.clock.advance(CHECKOUT)
        self.ep.check_ages()

    def drive(self, done: Callable[[], bool],
              checkout: Callable[[], AbstractContextManager[Any]],
              query: Callable[[Any], object]) -> None:
        """The whole scenario for a thread pool: ``checkout()`` hands out a connection,
        ``query(conn)`` runs a statement on it."""
        def work() -> None:
            with checkout() as conn:
                query(conn)

        for _ in self.steps(done):
            self.load.add(run_threads(work, rounds=3, workers=6))
            with ExitStack() as stack:
                held = [stack.enter_context(checkout()) for _ in range(4)]
                self.checkout_lasts()
                for conn in held:
                    query(conn)
        self.load.check(minimum=18 * self.taken)

    async def drive_async(self, done: Callable[[], bool],
                          checkout: Callable[[], AbstractAsyncContextManager[Any]],
                          query: Callable[[Any], Awaitable[object]]) -> None:
        """:meth:`drive` for an asyncio pool."""
        async def work() -> None:
            async with checkout() as conn:
                await query(conn)

        for _ in self.steps(done):
            self.load.add(await run_tasks(work, rounds=3, workers=6))
            async with AsyncExitStack() as stack:
                held = [await stack.enter_async_context(checkout()) for _ in range(4)]
                self.checkout_lasts()
                for conn in held:
                    await query(conn)
        self.load.check(minimum=18 * self.taken)


def age_out(ep: LocalDSQL, clock: ManualClock) -> None:
    """Move ``ep``'s clock past its connection-age cap and let it act: it sends a FATAL
    error to each idle session and closes it (one in a transaction, when that ends)."""
    clock.advance(ep.max_connection_age + 1)
    ep.check_ages()


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
