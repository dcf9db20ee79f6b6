"""The retry policy: configuration, validation, presets, the delay sequence and RetryState."""

from __future__ import annotations

import itertools
import random

import psycopg.errors
import pytest

from dsqlkit.errors import ConfigError, DsqlError, OCCRetryExhausted
from dsqlkit.occ import OCCMetrics, OCCRetryConfig, OCCType, RetryState, delays

CONFLICT = "change conflicts with another transaction (OC000)"


class FixedRandom:
    """A random source that always returns the same fraction, to hit exact bounds."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_defaults_are_the_seed_connectors() -> None:
    config = OCCRetryConfig()
    assert (config.max_attempts, config.base_delay, config.max_delay, config.jitter_factor) == (
        3,
        0.1,
        5.0,
        0.25,
    )
    assert config.deadline is None
    assert config.on_retry is None


def test_without_jitter_the_delays_double_from_base() -> None:
    config = OCCRetryConfig(max_attempts=6, base_delay=0.1, max_delay=5.0)
    assert list(delays(config, FixedRandom(0.0))) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_max_attempts_counts_the_first_attempt() -> None:
    assert len(list(delays(OCCRetryConfig()))) == 2
    assert list(delays(OCCRetryConfig(max_attempts=1))) == []


def test_delays_are_capped_at_max_delay_before_jitter() -> None:
    config = OCCRetryConfig(max_attempts=8, base_delay=0.1, max_delay=0.5, jitter_factor=0.0)
    assert list(delays(config)) == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5])
    top = list(delays(config.with_options(jitter_factor=0.25), FixedRandom(0.999999)))
    assert max(top) < 0.5 * 1.25
    assert top[-1] == pytest.approx(0.5 * 1.25, rel=1e-5)


def test_jitter_stays_within_its_fraction_of_the_delay() -> None:
    config = OCCRetryConfig(max_attempts=10, base_delay=0.01, max_delay=1.0, jitter_factor=0.25)
    rng = random.Random(1234)
    for _ in range(200):
        for n, delay in enumerate(delays(config, rng), start=1):
            nominal = min(0.01 * 2 ** (n - 1), 1.0)
            assert nominal <= delay < nominal * 1.25


def test_seed_connector_bounds_for_the_first_two_retries() -> None:
    # The Rust connector's own unit test: retry 1 in [100, 125] ms, retry 2 in [200, 250] ms.
    for seed in range(100):
        first, second = delays(OCCRetryConfig(), random.Random(seed))
        assert 0.1 <= first < 0.125
        assert 0.2 <= second < 0.25


def test_a_seeded_rng_reproduces_the_sequence_exactly() -> None:
    config = OCCRetryConfig(max_attempts=5, base_delay=0.001, max_delay=0.1, jitter_factor=0.5)
    expected_rng = random.Random(99)
    expected = []
    for n in range(1, 5):
        nominal = min(0.001 * 2 ** (n - 1), 0.1)
        expected.append(nominal + nominal * 0.5 * expected_rng.random())
    assert list(delays(config, random.Random(99))) == expected
    assert list(delays(config, random.Random(99))) == list(delays(config, random.Random(99)))
    assert list(delays(config, random.Random(99))) != list(delays(config, random.Random(100)))


def test_huge_attempt_counts_do_not_overflow() -> None:
    config = OCCRetryConfig(max_attempts=100_000, base_delay=0.001, max_delay=2.0)
    last = next(itertools.islice(delays(config, FixedRandom(0.0)), 99_998, None))
    assert last == 2.0


def test_zero_delay_means_immediate_retry() -> None:
    config = OCCRetryConfig(max_attempts=4, base_delay=0.0, max_delay=0.0)
    assert list(delays(config)) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1 (it counts the first attempt"),
        ({"max_attempts": -3}, "max_attempts must be at least 1"),
        ({"max_attempts": 2.5}, "max_attempts must be an int"),
        ({"max_attempts": True}, "max_attempts must be an int"),
        ({"base_delay": -0.1}, "base_delay must be >= 0 seconds"),
        ({"base_delay": "0.1"}, "base_delay must be a number of seconds"),
        ({"base_delay": float("nan")}, "base_delay must be finite"),
        ({"max_delay": float("inf")}, "max_delay must be finite"),
        ({"base_delay": 100}, "base_delay (100.0 s) must not exceed max_delay (5.0 s)"),
        ({"max_delay": 5000}, "delays are in seconds (pass 0.1 for 100 ms)"),
        ({"jitter_factor": 1.5}, "jitter_factor must be between 0.0 and 1.0"),
        ({"jitter_factor": -0.1}, "jitter_factor must be between 0.0 and 1.0"),
        ({"deadline": 0}, "deadline must be a positive number of seconds, or None"),
        ({"deadline": -1.0}, "deadline must be a positive number"),
        ({"on_retry": "print"}, "on_retry must be callable as on_retry(attempt, delay, error)"),
    ],
)
def test_invalid_settings_name_the_problem_and_the_fix(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        OCCRetryConfig(**changes)  # type: ignore[arg-type]
    assert message in str(info.value)
    # ConfigError is a ValueError, so generic validation code catches it too.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DsqlError)


def test_with_options_validates_and_rejects_unknown_names() -> None:
    config = OCCRetryConfig().with_options(max_attempts=10)
    assert config.max_attempts == 10
    with pytest.raises(ConfigError, match="max_attempts must be at least 1"):
        config.with_options(max_attempts=0)
    with pytest.raises(ConfigError, match=r"unknown OCCRetryConfig option\(s\) \['retries'\]"):
        config.with_options(retries=3)


def test_config_is_frozen() -> None:
    config = OCCRetryConfig()
    with pytest.raises(AttributeError):
        config.max_attempts = 5  # type: ignore[misc]


def test_presets() -> None:
    low = OCCRetryConfig.low_latency()
    assert (low.max_attempts, low.base_delay, low.max_delay, low.deadline) == (5, 0.001, 0.05, None)
    # Its whole retry budget stays in the tens of milliseconds.
    assert sum(delays(low, FixedRandom(0.999999))) < 0.02

    high = OCCRetryConfig.high_contention()
    assert (high.max_attempts, high.base_delay, high.max_delay, high.jitter_factor) == (
        20,
        0.1,
        0.1,
        0.25,
    )
    assert high.deadline == 30.0
    # Worst case without the budget: well below DSQL's 5-minute transaction age limit.
    assert sum(delays(high, FixedRandom(0.999999))) < 2.5

    assert OCCRetryConfig.high_contention(max_attempts=50).max_attempts == 50
    with pytest.raises(ConfigError):
        OCCRetryConfig.low_latency(jitter_factor=2)


def conflict() -> psycopg.errors.SerializationFailure:
    return psycopg.errors.SerializationFailure(CONFLICT)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retry_state_walks_the_delays_then_exhausts() -> None:
    metrics = OCCMetrics()
    config = OCCRetryConfig(max_attempts=3, base_delay=0.1, jitter_factor=0.0)
    state = RetryState(config, metrics=metrics)
    assert state.on_error(conflict()) == pytest.approx(0.1)
    assert state.attempt == 2
    assert state.on_error(conflict()) == pytest.approx(0.2)
    last = conflict()
    with pytest.raises(OCCRetryExhausted) as info:
        state.on_error(last)
    assert info.value.attempts == 3
    assert info.value.__cause__ is last
    assert not info.value.deadline_exceeded
    snap = metrics.snapshot()
    assert snap.exhausted == 1
    assert snap.conflicts == {OCCType.DATA: 3}
    assert snap.attempts_histogram == {3: 1}


def test_retry_state_answers_none_for_other_errors() -> None:
    metrics = OCCMetrics()
    state = RetryState(OCCRetryConfig(), metrics=metrics)
    assert state.on_error(psycopg.errors.SyntaxError("syntax error")) is None
    assert state.attempt == 1
    assert metrics.failures == 1
    assert metrics.conflicts == {}


def test_deadline_stops_before_a_wait_that_would_overrun_it() -> None:
    clock = FakeClock()
    config = OCCRetryConfig(max_attempts=100, base_delay=1.0, max_delay=1.0, jitter_factor=0.0)
    state = RetryState(config.with_options(deadline=3.5), metrics=OCCMetrics(), clock=clock)
    clock.now += 0.5  # attempt 1 took 0.5 s, wait 1 s -> next attempt starts at 1.5 s
    assert state.on_error(conflict()) == 1.0
    clock.now += 1.0 + 0.5
    assert state.on_error(conflict()) == 1.0  # starts at 3.0 s, within 3.5 s
    clock.now += 1.0 + 0.5  # now at 3.5 s: a further wait would end at 4.5 s
    with pytest.raises(OCCRetryExhausted) as info:
        state.on_error(conflict())
    assert info.value.attempts == 3
    assert info.value.deadline_exceeded


def test_an_attempt_longer_than_the_budget_ends_the_loop_at_once() -> None:
    clock = FakeClock()
    state = RetryState(OCCRetryConfig(deadline=1.0), metrics=OCCMetrics(), clock=clock)
    clock.now += 2.0
    with pytest.raises(OCCRetryExhausted) as info:
        state.on_error(conflict())
    assert info.value.attempts == 1
    assert info.value.deadline_exceeded
