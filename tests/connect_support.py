"""Helpers for the driver integration tests (tests/test_connect_*.py).

They run against ``dsqlkit local``: real TLS, real token verification, a real PostgreSQL
behind it. Tests that need other endpoint settings start a second endpoint over the same
backend with :func:`extra_endpoint`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dsqlkit.auth.sigv4 import Credentials
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
                pause: float = 0.0) -> LoadResult:
    """Call ``work`` in a loop from ``workers`` threads for ``seconds``; count outcomes."""
    result = LoadResult()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
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
                    pause: float = 0.0) -> LoadResult:
    """The asyncio version of :func:`run_threads`."""
    result = LoadResult()
    stop = time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < stop:
            try:
                await work()
            except Exception as exc:
                result.errors.append(exc)
            else:
                result.ok += 1
            await asyncio.sleep(pause)

    await asyncio.gather(*(loop() for _ in range(workers)))
    return result
