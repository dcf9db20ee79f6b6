"""The retry policy, written once: configuration, the delay sequence, and the per-call state.

Everything here is pure or takes its side effects as arguments (random source, clock), so the
sync loop, the async loop, the decorator, the attempt iterators and the transaction runners all
share one decision procedure and differ only in how they sleep.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dsqlkit._log import get_logger
from dsqlkit.errors import ConfigError, OCCRetryExhausted
from dsqlkit.occ.classify import OCCType, classify_occ, sqlstate_of
from dsqlkit.occ.metrics import OCCMetrics, default_metrics

__all__ = [
    "OCCRetryConfig",
    "OnRetry",
    "RandomSource",
    "RetryState",
    "delays",
]

# logging.getLogger(__name__), imported only once logging is in use (cold start).
logger = get_logger(__name__)

OnRetry = Callable[[int, float, BaseException], object]
"""``on_retry(attempt, delay, error)``: ``attempt`` is the 1-based number of the attempt that
just failed, ``delay`` the seconds we are about to wait, ``error`` its OCC exception."""

# A single wait longer than DSQL's five-minute transaction-age limit serves no purpose, and a
# value this large almost always means milliseconds were passed where seconds are expected.
_MAX_SANE_DELAY = 300.0

# 2**63 times any positive base overflows every sensible max_delay; capping the exponent keeps
# the float arithmetic finite when max_attempts is large (retry-until-deadline configurations).
_MAX_EXPONENT = 63


class RandomSource(Protocol):
    def random(self) -> float: ...


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class OCCRetryConfig:
    """How hard to retry a transaction that lost an optimistic-concurrency conflict.

    The defaults are the Rust sqlx connector's documented ones: 3 attempts in total (the first
    included), waits of 100 ms then 200 ms, each plus up to 25 % jitter. They suit occasional
    conflicts between a few writers. Under sustained contention they give up too early (the
    seed experiment: 5 writers on one row, one of them exhausts); use :meth:`high_contention`.
    For latency-critical paths where a conflict is rare and a quick second try is all you
    want, use :meth:`low_latency`.

    The wait before retry ``n`` (``n = 1`` for the first retry) is
    ``d = min(base_delay * 2**(n-1), max_delay)`` plus a uniform jitter in ``[0, jitter_factor*d)``.
    Jitter keeps writers that collided once from colliding again on the same schedule.

    ``deadline`` is a total time budget in seconds measured from the first attempt: no new
    attempt starts if its wait would end past the budget. It does not interrupt an attempt in
    flight (use ``statement_timeout`` for that); DSQL itself aborts transactions older than
    five minutes.

    ``on_retry(attempt, delay, error)`` is called before each wait; an exception it raises ends
    the retry loop and propagates.
    """

    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 5.0
    jitter_factor: float = 0.25
    deadline: float | None = None
    on_retry: OnRetry | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigError(
                f"max_attempts must be an int (total attempts, the first included), "
                f"got {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ConfigError(
                f"max_attempts must be at least 1 (it counts the first attempt too; "
                f"1 means no retry), got {self.max_attempts}"
            )
        base = _number("base_delay", self.base_delay)
        cap = _number("max_delay", self.max_delay)
        if base < 0:
            raise ConfigError(f"base_delay must be >= 0 seconds, got {base}")
        if cap > _MAX_SANE_DELAY:
            raise ConfigError(
                f"max_delay of {cap} s exceeds {_MAX_SANE_DELAY:.0f} s, DSQL's transaction age "
                f"limit; delays are in seconds (pass 0.1 for 100 ms)"
            )
        if base > cap:
            raise ConfigError(
                f"base_delay ({base} s) must not exceed max_delay ({cap} s); both are in "
                f"seconds: lower base_delay or raise max_delay"
            )
        jitter = _number("jitter_factor", self.jitter_factor)
        if not 0.0 <= jitter <= 1.0:
            raise ConfigError(
                f"jitter_factor must be between 0.0 and 1.0 (a fraction of the delay), got {jitter}"
            )
        if self.deadline is not None:
            budget = _number("deadline", self.deadline)
            if budget <= 0:
                raise ConfigError(
                    f"deadline must be a positive number of seconds, or None for no time "
                    f"budget, got {budget}"
                )
        if self.on_retry is not None and not callable(self.on_retry):
            raise ConfigError(
                f"on_retry must be callable as on_retry(attempt, delay, error), "
                f"got {self.on_retry!r}"
            )

    def with_options(self, **changes: Any) -> OCCRetryConfig:
        """A copy with some fields changed, validated like a new config."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"unknown OCCRetryConfig option(s) {sorted(unknown)}; valid options are "
                f"{sorted(self.__dataclass_fields__)}"
            )
        return replace(self, **changes)

    @classmethod
    def low_latency(cls, **changes: Any) -> OCCRetryConfig:
        """5 attempts, waits from 1 ms doubling to at most 50 ms, 25 % jitter.

        For request paths where conflicts are rare and a caller would rather fail fast than
        wait: the four retries together wait at most about 19 ms (1+2+4+8 ms plus jitter), and
        five attempts cover the occasional two- or three-way collision.
        """
        preset = cls(max_attempts=5, base_delay=0.001, max_delay=0.05, jitter_factor=0.25)
        return preset.with_options(**changes)

    @classmethod
    def high_contention(cls, **changes: Any) -> OCCRetryConfig:
        """20 attempts, a 100-125 ms wait before each retry, 30 s budget.

        For workloads where many writers hit the same rows (counters, hot accounts). Chosen by
        measurement (``bench/occ_contention.py``: 10 workers moving money among 10 accounts,
        strategies interleaved and compared round by round): goodput there is set by two
        costs, attempts wasted on re-colliding and the tail of transactions still sleeping
        when everything else is done. Short first waits (1-10 ms, as in the official Python
        connector or the ~5 ms that exponential schemes usually start from) waste attempts:
        1.3-1.5 attempts per commit, 5-10 % less goodput than the seed defaults. Waits that
        keep doubling toward seconds (the seed defaults with more attempts) build a tail: up to
        10 % less. A steady ~100 ms wait takes a loser out of the race for several transaction
        lengths and needed 1.08 attempts per commit; it beat the seed defaults' goodput in
        most rounds (median +7-12 %, with conflicts reported at the statement and, later, at
        COMMIT as on DSQL) while never dropping a transfer and with a lower p99. Steady ~50 ms
        waits did about as well with a lower p99, less consistently; 200 ms was too long.

        20 attempts bound the added wait to about 2.4 s; the 30 s budget stops slow
        transactions well inside DSQL's five-minute limit. For transactions much longer than
        the local benchmark's few milliseconds, widen ``jitter_factor`` so that retrying
        writers spread over more than one transaction length.
        """
        preset = cls(
            max_attempts=20, base_delay=0.1, max_delay=0.1, jitter_factor=0.25, deadline=30.0
        )
        return preset.with_options(**changes)


def delays(config: OCCRetryConfig, rng: RandomSource | None = None) -> Iterator[float]:
    """The wait in seconds before each retry: ``max_attempts - 1`` values, lazily.

    The one place the backoff formula lives. ``rng`` defaults to the module-level random
    generator; pass a seeded ``random.Random`` for reproducible sequences.
    """
    uniform = (rng if rng is not None else random).random
    base, cap, jitter = config.base_delay, config.max_delay, config.jitter_factor
    for n in range(1, config.max_attempts):
        delay = min(base * 2.0 ** min(n - 1, _MAX_EXPONENT), cap)
        yield delay + delay * jitter * uniform()


class RetryState:
    """One call's progress through the policy: the state machine every retry loop drives.

    A loop runs an attempt, then reports the outcome: :meth:`on_success`, or :meth:`on_error`,
    which answers with the seconds to wait before the next attempt, ``None`` if the error is
    not an OCC conflict (the loop re-raises it unchanged), or raises
    :class:`~dsqlkit.errors.OCCRetryExhausted` when attempts or the time budget are used up.
    The loops themselves only sleep (``time.sleep`` or ``asyncio.sleep``).
    """

    __slots__ = ("_clock", "_delays", "_started", "attempt", "config", "last_occ_type", "metrics")

    def __init__(
        self,
        config: OCCRetryConfig,
        *,
        metrics: OCCMetrics | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else default_metrics
        self.attempt = 1
        self.last_occ_type: OCCType | None = None
        self._delays = delays(config, rng)
        self._clock = clock
        self._started = clock()

    def on_success(self) -> None:
        self.metrics.record_success(self.attempt)

    def on_error(self, exc: BaseException) -> float | None:
        occ_type = classify_occ(exc)
        if occ_type is None:
            self.metrics.record_failure()
            return None
        self.metrics.record_conflict(occ_type)
        self.last_occ_type = occ_type
        delay = next(self._delays, None)
        over_budget = False
        if delay is not None and self.config.deadline is not None:
            over_budget = self._clock() - self._started + delay > self.config.deadline
        if delay is None or over_budget:
            self.metrics.record_exhausted(self.attempt)
            # The error text can quote SQL and parameters (SQLAlchemy adds both), so the log
            # line carries only the class, SQLSTATE and OCC type.
            logger.debug(
                "OCC retry exhausted: type=%s sqlstate=%s error=%s attempts=%d reason=%s",
                occ_type.name,
                sqlstate_of(exc),
                type(exc).__name__,
                self.attempt,
                "deadline" if over_budget else "max_attempts",
            )
            raise OCCRetryExhausted(
                self.attempt, occ_type, exc, deadline_exceeded=over_budget
            ) from exc
        logger.debug(
            "OCC conflict, retrying: type=%s error=%s attempt=%d/%d delay=%.4fs",
            occ_type.name,
            type(exc).__name__,
            self.attempt,
            self.config.max_attempts,
            delay,
        )
        if self.config.on_retry is not None:
            self.config.on_retry(self.attempt, delay, exc)
        self.attempt += 1
        return delay
