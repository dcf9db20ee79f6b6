"""Retry loops without a database: callbacks, decorator, attempt iterators, hooks, metrics."""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Callable

import asyncpg.exceptions
import psycopg.errors
import pytest
import sqlalchemy.exc

from dsqlkit.errors import ConfigError, DsqlError, OCCRetryExhausted
from dsqlkit.occ import (
    OCCMetrics,
    OCCRetryConfig,
    OCCType,
    default_metrics,
    occ_attempts,
    occ_attempts_async,
    occ_retry,
    retry_on_occ,
    retry_on_occ_async,
)

DATA = "change conflicts with another transaction (OC000)"
SCHEMA = "schema has been updated by another transaction (OC001)"
FAST = OCCRetryConfig(max_attempts=3, base_delay=0.001, max_delay=0.002, jitter_factor=0.0)


class Flaky:
    """Fails with the given errors in turn, then returns ``result``; counts calls."""

    def __init__(self, errors: list[BaseException], result: object = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result

    async def run_async(self) -> object:
        await asyncio.sleep(0)
        return self()


def conflicts(n: int, message: str = DATA) -> list[BaseException]:
    return [psycopg.errors.SerializationFailure(message) for _ in range(n)]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)

    async def async_sleep(self, delay: float) -> None:
        self.delays.append(delay)


# -- retry_on_occ ----------------------------------------------------------------------------


def test_return_value_survives_retries() -> None:
    sleeps = Sleeps()
    fn = Flaky(conflicts(2), result={"balance": 42})
    result = retry_on_occ(FAST, fn, metrics=OCCMetrics(), sleep=sleeps)
    assert result == {"balance": 42}
    assert fn.calls == 3
    assert sleeps.delays == pytest.approx([0.001, 0.002])


def test_success_on_the_first_attempt_does_not_sleep() -> None:
    sleeps = Sleeps()
    assert retry_on_occ(None, lambda: 7, metrics=OCCMetrics(), sleep=sleeps) == 7
    assert sleeps.delays == []


def test_non_occ_error_propagates_unchanged_without_retry() -> None:
    error = psycopg.errors.SyntaxError('syntax error at or near "SELEC"')
    fn = Flaky([error])
    metrics = OCCMetrics()
    with pytest.raises(psycopg.errors.SyntaxError) as info:
        retry_on_occ(FAST, fn, metrics=metrics, sleep=Sleeps())
    assert info.value is error
    assert fn.calls == 1
    assert metrics.snapshot().failures == 1


def test_a_non_occ_error_after_conflicts_still_propagates_unchanged() -> None:
    error = psycopg.errors.UniqueViolation("duplicate key")
    fn = Flaky([*conflicts(1), error])
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        retry_on_occ(FAST, fn, metrics=OCCMetrics(), sleep=Sleeps())
    assert info.value is error
    assert fn.calls == 2


def test_exhaustion_keeps_the_last_conflict_as_cause_and_says_so_exactly() -> None:
    errors = conflicts(3)
    fn = Flaky(list(errors))
    with pytest.raises(OCCRetryExhausted) as info:
        retry_on_occ(FAST, fn, metrics=OCCMetrics(), sleep=Sleeps())
    exc = info.value
    assert str(exc) == f"OCC retry exhausted after 3 attempts: {DATA}"
    assert exc.attempts == 3
    assert exc.occ_type is OCCType.DATA
    assert exc.__cause__ is errors[-1]
    assert isinstance(exc, DsqlError)
    assert fn.calls == 3


def test_exhaustion_keeps_a_wrapped_cause_chain() -> None:
    driver = psycopg.errors.SerializationFailure(SCHEMA)
    wrapped = sqlalchemy.exc.OperationalError("COMMIT", None, driver)
    with pytest.raises(OCCRetryExhausted) as info:
        retry_on_occ(OCCRetryConfig(max_attempts=1), Flaky([wrapped]), metrics=OCCMetrics())
    assert info.value.occ_type is OCCType.SCHEMA
    assert info.value.__cause__ is wrapped
    assert getattr(info.value.__cause__, "orig", None) is driver
    assert str(info.value).startswith("OCC retry exhausted after 1 attempts: (psycopg.errors")


def test_exhausted_error_pickles() -> None:
    exc = OCCRetryExhausted(4, OCCType.DATA, RuntimeError(DATA), deadline_exceeded=True)
    copy = pickle.loads(pickle.dumps(exc))
    assert str(copy) == str(exc)
    assert (copy.attempts, copy.occ_type, copy.deadline_exceeded) == (4, OCCType.DATA, True)


def test_deadline_stops_retries() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(delay: float) -> None:
        now[0] += delay

    def slow_conflict() -> None:
        now[0] += 0.25  # each attempt takes 250 ms of simulated time
        raise psycopg.errors.SerializationFailure(DATA)

    config = OCCRetryConfig(
        max_attempts=1000, base_delay=0.1, max_delay=0.1, jitter_factor=0.0, deadline=1.0
    )
    with pytest.raises(OCCRetryExhausted) as info:
        retry_on_occ(config, slow_conflict, metrics=OCCMetrics(), clock=clock, sleep=sleep)
    # 0.35 s per attempt and wait: attempt 3 fails at 0.95 s and a 0.1 s wait would overrun.
    assert info.value.attempts == 3
    assert info.value.deadline_exceeded
    assert now[0] <= 1.0


def test_on_retry_hook_sees_attempt_delay_and_error() -> None:
    calls: list[tuple[int, float, BaseException]] = []
    errors = conflicts(2)
    config = FAST.with_options(on_retry=lambda n, d, e: calls.append((n, d, e)))
    retry_on_occ(config, Flaky(list(errors)), metrics=OCCMetrics(), sleep=Sleeps())
    assert [(n, round(d, 6), e) for n, d, e in calls] == [
        (1, 0.001, errors[0]),
        (2, 0.002, errors[1]),
    ]


def test_a_raising_hook_ends_the_loop() -> None:
    def hook(attempt: int, delay: float, error: BaseException) -> None:
        raise RuntimeError("stop retrying")

    fn = Flaky(conflicts(2))
    with pytest.raises(RuntimeError, match="stop retrying"):
        retry_on_occ(FAST.with_options(on_retry=hook), fn, metrics=OCCMetrics(), sleep=Sleeps())
    assert fn.calls == 1


def test_metrics_count_successes_conflicts_exhaustions_and_attempts() -> None:
    metrics = OCCMetrics()
    retry_on_occ(FAST, Flaky(conflicts(2)), metrics=metrics, sleep=Sleeps())
    retry_on_occ(FAST, Flaky([]), metrics=metrics, sleep=Sleeps())
    retry_on_occ(FAST, Flaky(conflicts(1, SCHEMA)), metrics=metrics, sleep=Sleeps())
    with pytest.raises(OCCRetryExhausted):
        retry_on_occ(FAST, Flaky(conflicts(3)), metrics=metrics, sleep=Sleeps())
    snap = metrics.snapshot()
    assert snap.successes == 3
    assert snap.exhausted == 1
    assert snap.conflicts == {OCCType.DATA: 5, OCCType.SCHEMA: 1}
    assert snap.total_conflicts == 6
    assert snap.retries == 5
    assert snap.attempts_histogram == {1: 1, 2: 1, 3: 2}
    assert snap.attempts_per_success == pytest.approx((1 + 2 + 3 + 3) / 3)
    assert metrics.successes == 3
    assert "successes=3" in repr(metrics)
    metrics.reset()
    assert metrics.snapshot().total_conflicts == 0


def test_module_default_metrics_are_used_without_an_override() -> None:
    before = default_metrics.snapshot()
    retry_on_occ(FAST, Flaky(conflicts(1)), sleep=Sleeps())
    after = default_metrics.snapshot()
    assert after.successes == before.successes + 1
    assert after.conflicts.get(OCCType.DATA, 0) == before.conflicts.get(OCCType.DATA, 0) + 1


def test_metrics_are_thread_safe() -> None:
    metrics = OCCMetrics()

    def work() -> None:
        for _ in range(2000):
            metrics.record_conflict(OCCType.DATA)
            metrics.record_success(2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = metrics.snapshot()
    assert snap.conflicts[OCCType.DATA] == 16000
    assert snap.successes == 16000
    assert snap.attempts_histogram == {2: 16000}


def test_retries_are_logged_at_debug_without_the_error_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "password=hunter2"
    error = psycopg.errors.SerializationFailure(f"{DATA} {secret}")
    with caplog.at_level(logging.DEBUG, logger="dsqlkit.occ"):
        retry_on_occ(FAST, Flaky([error]), metrics=OCCMetrics(), sleep=Sleeps())
    records = [r for r in caplog.records if r.name.startswith("dsqlkit.occ")]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert "attempt=1/3" in records[0].getMessage()
    assert "DATA" in records[0].getMessage()
    assert secret not in records[0].getMessage()


def test_base_exceptions_are_never_retried() -> None:
    class Stop(BaseException):
        pass

    calls = []

    def fn() -> None:
        calls.append(1)
        err = Stop()
        err.__context__ = psycopg.errors.SerializationFailure(DATA)
        raise err

    with pytest.raises(Stop):
        retry_on_occ(FAST, fn, metrics=OCCMetrics(), sleep=Sleeps())
    assert calls == [1]


def test_config_type_is_checked() -> None:
    with pytest.raises(ConfigError, match="expected an OCCRetryConfig or None"):
        retry_on_occ({"max_attempts": 3}, lambda: None)  # type: ignore[arg-type]


# -- async -----------------------------------------------------------------------------------


async def test_async_retry_preserves_the_return_value() -> None:
    sleeps = Sleeps()
    fn = Flaky([asyncpg.exceptions.SerializationError(DATA)], result=5)
    assert await retry_on_occ_async(FAST, fn.run_async, sleep=sleeps.async_sleep) == 5
    assert fn.calls == 2
    assert sleeps.delays == pytest.approx([0.001])


async def test_async_exhaustion_and_non_occ_errors() -> None:
    with pytest.raises(OCCRetryExhausted) as info:
        await retry_on_occ_async(
            FAST, Flaky(conflicts(3)).run_async, metrics=OCCMetrics(), sleep=Sleeps().async_sleep
        )
    assert info.value.attempts == 3
    error = asyncpg.exceptions.UniqueViolationError("dup")
    with pytest.raises(asyncpg.exceptions.UniqueViolationError) as info2:
        await retry_on_occ_async(FAST, Flaky([error]).run_async, metrics=OCCMetrics())
    assert info2.value is error


async def test_async_waits_really_sleep() -> None:
    config = OCCRetryConfig(max_attempts=2, base_delay=0.05, max_delay=0.05, jitter_factor=0.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await retry_on_occ_async(config, Flaky(conflicts(1)).run_async, metrics=OCCMetrics())
    assert loop.time() - start >= 0.045


async def test_cancellation_is_not_retried() -> None:
    started = asyncio.Event()
    calls = []

    async def fn() -> None:
        calls.append(1)
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(retry_on_occ_async(FAST, fn, metrics=OCCMetrics()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == [1]


# -- decorator -------------------------------------------------------------------------------


def test_bare_decorator_on_a_sync_function() -> None:
    fn = Flaky(conflicts(1), result="done")  # the default config: one real 100-125 ms wait

    @occ_retry
    def transfer(amount: int) -> object:
        """Docstring survives."""
        assert amount == 10
        return fn()

    assert transfer(10) == "done"
    assert fn.calls == 2
    assert transfer.__name__ == "transfer"
    assert transfer.__doc__ == "Docstring survives."


def test_decorator_with_config_and_overrides() -> None:
    metrics = OCCMetrics()
    fn = Flaky(conflicts(5))

    @occ_retry(FAST, max_attempts=6, metrics=metrics)
    def work() -> object:
        return fn()

    assert work() == "ok"
    assert fn.calls == 6
    assert metrics.snapshot().attempts_histogram == {6: 1}


def test_decorator_overrides_are_validated_when_decorating() -> None:
    with pytest.raises(ConfigError, match="max_attempts must be at least 1"):
        occ_retry(max_attempts=0)
    with pytest.raises(ConfigError, match="unknown OCCRetryConfig option"):
        occ_retry(attempts=5)


async def test_decorator_on_an_async_function() -> None:
    fn = Flaky(conflicts(1), result=99)
    metrics = OCCMetrics()

    @occ_retry(FAST, metrics=metrics)
    async def work(x: int) -> object:
        return x + int(str(await fn.run_async()))

    assert asyncio.iscoroutinefunction(work)
    assert await work(1) == 100
    assert metrics.snapshot().attempts_histogram == {2: 1}


def test_decorator_exhausts_with_the_configured_attempts() -> None:
    @occ_retry(FAST, metrics=OCCMetrics())
    def work() -> None:
        raise psycopg.errors.SerializationFailure(DATA)

    with pytest.raises(OCCRetryExhausted, match="after 3 attempts"):
        work()


# -- attempt loops ---------------------------------------------------------------------------


def test_attempt_loop_runs_until_success() -> None:
    fn = Flaky(conflicts(2))
    seen = []
    sleeps = Sleeps()
    for attempt in occ_attempts(FAST, metrics=OCCMetrics(), sleep=sleeps):
        with attempt:
            seen.append(attempt.number)
            fn()
    assert seen == [1, 2, 3]
    assert len(sleeps.delays) == 2


def test_attempt_loop_exhausts_and_propagates_other_errors() -> None:
    with pytest.raises(OCCRetryExhausted) as info:
        for attempt in occ_attempts(FAST, metrics=OCCMetrics(), sleep=Sleeps()):
            with attempt:
                raise psycopg.errors.SerializationFailure(DATA)
    assert info.value.attempts == 3

    seen = []
    with pytest.raises(ZeroDivisionError):
        for attempt in occ_attempts(FAST, metrics=OCCMetrics(), sleep=Sleeps()):
            with attempt:
                seen.append(attempt.number)
                _ = 1 / 0
    assert seen == [1]


def test_an_attempt_must_be_entered() -> None:
    with pytest.raises(RuntimeError, match="write `with attempt:`"):
        for attempt in occ_attempts(FAST, metrics=OCCMetrics()):
            assert repr(attempt) == "<Attempt 1/3>"


async def test_async_attempt_loop() -> None:
    fn = Flaky(conflicts(1, SCHEMA))
    seen = []
    metrics = OCCMetrics()
    async for attempt in occ_attempts_async(FAST, metrics=metrics):
        with attempt:
            seen.append(attempt.number)
            await fn.run_async()
    assert seen == [1, 2]
    assert metrics.snapshot().conflicts == {OCCType.SCHEMA: 1}


@pytest.mark.parametrize("run", ["callback", "loop"])
def test_sync_forms_share_one_policy(run: str) -> None:
    """Same errors, same seed: the callback and the loop wait exactly the same."""
    import random

    def go(fn: Callable[[], object]) -> list[float]:
        sleeps = Sleeps()
        rng = random.Random(5)
        if run == "callback":
            retry_on_occ(OCCRetryConfig(), fn, metrics=OCCMetrics(), sleep=sleeps, rng=rng)
        else:
            for attempt in occ_attempts(
                OCCRetryConfig(), metrics=OCCMetrics(), sleep=sleeps, rng=rng
            ):
                with attempt:
                    fn()
        return sleeps.delays

    from dsqlkit.occ import delays

    expected = list(delays(OCCRetryConfig(), random.Random(5)))
    assert go(Flaky(conflicts(2))) == expected
