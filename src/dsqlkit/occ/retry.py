"""Retry loops around whole transactions: attempt iterators, callbacks and a decorator.

The attempt iterators are the only loops. ``retry_on_occ`` and the decorator are written on top
of them, and all of them defer every decision to :class:`~dsqlkit.occ.policy.RetryState`, so
the sync and async variants cannot drift apart: the async iterator differs from the sync one in
a single ``await``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import aclosing
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from dsqlkit.errors import ConfigError
from dsqlkit.occ.metrics import OCCMetrics
from dsqlkit.occ.policy import OCCRetryConfig, RandomSource, RetryState

__all__ = [
    "Attempt",
    "occ_attempts",
    "occ_attempts_async",
    "occ_retry",
    "retry_on_occ",
    "retry_on_occ_async",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_DEFAULT = OCCRetryConfig()


def _resolve(config: OCCRetryConfig | None) -> OCCRetryConfig:
    if config is None:
        return _DEFAULT
    if not isinstance(config, OCCRetryConfig):
        raise ConfigError(
            f"expected an OCCRetryConfig or None, got {type(config).__name__}: build one with "
            f"OCCRetryConfig(...) or a preset such as OCCRetryConfig.high_contention()"
        )
    return config


class Attempt:
    """One attempt, used as ``with attempt:`` around the whole transaction.

    Leaving the block normally ends the loop. An OCC error is swallowed and the loop waits and
    yields the next attempt; any other error propagates unchanged; the last OCC error becomes
    :class:`~dsqlkit.errors.OCCRetryExhausted`.
    """

    __slots__ = ("_delay", "_entered", "_state", "_succeeded", "number")

    def __init__(self, state: RetryState) -> None:
        self._state = state
        self.number = state.attempt
        """1-based number of this attempt."""
        self._entered = False
        self._succeeded = False
        self._delay: float | None = None

    def __enter__(self) -> Attempt:
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self._state.on_success()
            self._succeeded = True
            return False
        # KeyboardInterrupt, SystemExit and task cancellation are never retried.
        if not isinstance(exc, Exception):
            return False
        delay = self._state.on_error(exc)
        if delay is None:
            return False
        self._delay = delay
        return True

    def _next_delay(self) -> float | None:
        """None once the loop is over, else the wait before the next attempt."""
        if not self._entered:
            raise RuntimeError(
                "an OCC attempt was not used: write `with attempt:` around the transaction "
                "inside the loop"
            )
        return None if self._succeeded else self._delay

    def __repr__(self) -> str:
        return f"<Attempt {self.number}/{self._state.config.max_attempts}>"


def occ_attempts(
    config: OCCRetryConfig | None = None,
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Attempt]:
    """Attempts for code that cannot be a callback; put the whole transaction in each one.

    ``rng``, ``clock`` and ``sleep`` exist for tests and simulations.
    """
    state = RetryState(_resolve(config), metrics=metrics, rng=rng, clock=clock)
    while True:
        attempt = Attempt(state)
        yield attempt
        delay = attempt._next_delay()
        if delay is None:
            return
        sleep(delay)


async def occ_attempts_async(
    config: OCCRetryConfig | None = None,
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> AsyncGenerator[Attempt, None]:
    """:func:`occ_attempts` for ``async for``; waits with ``asyncio.sleep`` unless told."""
    if sleep is None:
        # Imported here: asyncio costs a sync-only process (a Lambda init) ~20 ms.
        import asyncio

        sleep = asyncio.sleep
    state = RetryState(_resolve(config), metrics=metrics, rng=rng, clock=clock)
    while True:
        attempt = Attempt(state)
        yield attempt
        delay = attempt._next_delay()
        if delay is None:
            return
        await sleep(delay)


def retry_on_occ(
    config: OCCRetryConfig | None,
    fn: Callable[[], T],
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``fn`` (the whole transaction, BEGIN to COMMIT) until it stops losing OCC conflicts.

    Returns what ``fn`` returns. A non-OCC error propagates unchanged, on the first attempt;
    running out of attempts or budget raises ``OCCRetryExhausted`` with the last conflict as
    ``__cause__``. ``fn`` runs again from the start, so it must not have side effects outside
    the database transaction that are unsafe to repeat.
    """
    for attempt in occ_attempts(config, metrics=metrics, rng=rng, clock=clock, sleep=sleep):
        with attempt:
            return fn()
    raise AssertionError("unreachable: the attempts end only with success or an exception")


async def retry_on_occ_async(
    config: OCCRetryConfig | None,
    fn: Callable[[], Awaitable[T]],
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> T:
    """:func:`retry_on_occ` for a coroutine function: ``await retry_on_occ_async(cfg, fn)``."""
    attempts = occ_attempts_async(config, metrics=metrics, rng=rng, clock=clock, sleep=sleep)
    # aclosing: returning from inside ``async for`` would otherwise leave the generator to the
    # event loop's finaliser.
    async with aclosing(attempts):
        async for attempt in attempts:
            with attempt:
                return await fn()
    raise AssertionError("unreachable: the attempts end only with success or an exception")


@overload
def occ_retry(fn: F, /) -> F: ...


@overload
def occ_retry(
    config: OCCRetryConfig | None = None,
    /,
    *,
    metrics: OCCMetrics | None = None,
    **overrides: Any,
) -> Callable[[F], F]: ...


def occ_retry(
    config: Any = None,
    /,
    *,
    metrics: OCCMetrics | None = None,
    **overrides: Any,
) -> Any:
    """Decorate a function that runs a whole transaction so that OCC conflicts re-run it.

    Works on plain and ``async def`` functions, bare (``@occ_retry``) or configured
    (``@occ_retry(OCCRetryConfig.high_contention(), max_attempts=50)``); keyword overrides are
    applied to the config (or to the defaults) and validated once, at decoration time.
    """
    if callable(config) and not isinstance(config, OCCRetryConfig) and not overrides:
        return occ_retry(None, metrics=metrics)(config)
    resolved = _resolve(config)
    if overrides:
        resolved = resolved.with_options(**overrides)

    def decorate(fn: F) -> F:
        import inspect

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await retry_on_occ_async(
                    resolved, lambda: fn(*args, **kwargs), metrics=metrics
                )

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return retry_on_occ(resolved, lambda: fn(*args, **kwargs), metrics=metrics)

        return cast(F, wrapper)

    return decorate
