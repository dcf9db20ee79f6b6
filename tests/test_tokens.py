"""TokenProvider: caching, the 80 % refresh point, background refresh, failures and recovery."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from clock_support import ManualClock, Mints, settles
from dsqlkit.auth import sigv4
from dsqlkit.auth.credentials import CredentialSource, LoadedCredentials
from dsqlkit.auth.tokens import RefreshPolicy, TokenProvider, generate_token
from dsqlkit.errors import ConfigError, CredentialsError

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
CREDS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session")


class FlakySource(CredentialSource):
    """Credentials that fail while ``failing`` is set; counts loads."""

    description = "flaky test source"

    def __init__(self, *, blocking: bool = False, expires_at: float | None = None) -> None:
        self.blocking = blocking
        self.failing = False
        self.loads = 0
        self.expires_at = expires_at

    def load(self) -> LoadedCredentials:
        self.loads += 1
        if self.failing:
            raise CredentialsError("sts unavailable (test)")
        return LoadedCredentials(CREDS, self.expires_at)


def verify(token: str, *, user: str = "admin", at: float | None = None) -> sigv4.VerifiedToken:
    now = datetime.fromtimestamp(at if at is not None else time.time(), timezone.utc)
    return sigv4.verify_token(token, user=user, region="us-east-1", hosts=[HOST],
                              lookup={CREDS.access_key: CREDS}.get, now=now)


def test_token_is_cached_until_the_refresh_point() -> None:
    clock = ManualClock(1_800_000_000.0)
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS, clock=clock, expires_in=900)
    first = provider.token()
    verify(first, at=clock.now)
    assert provider.token() is first and provider.mints == 1
    clock.now += 719
    assert provider.token() is first
    clock.now += 2  # past 80 % of 900 s: no background refresher, so mint inline
    second = provider.token()
    assert second != first and provider.mints == 2
    verify(second, at=clock.now)


def test_user_picks_the_action() -> None:
    admin = TokenProvider(HOST, "us-east-1", credentials=CREDS)
    app = TokenProvider(HOST, "us-east-1", user="app", credentials=CREDS)
    assert "Action=DbConnectAdmin" in admin.token()
    assert "Action=DbConnect&" in app.token()
    verify(app.token(), user="app")
    with pytest.raises(sigv4.TokenRejected, match="Wrong user to action mapping"):
        verify(admin.token(), user="app")


def test_lifetime_is_validated() -> None:
    for bad in (0, 604_801):
        with pytest.raises(ConfigError, match="out of range"):
            TokenProvider(HOST, "us-east-1", credentials=CREDS, expires_in=bad)


def test_schedule_follows_expiring_credentials() -> None:
    clock = ManualClock(1_800_000_000.0)
    source = FlakySource(expires_at=clock.now + 100)
    provider = TokenProvider(HOST, "us-east-1", credentials=source, clock=clock)
    provider.token()
    minted = provider.current
    assert minted is not None
    # The token cannot outlive the credentials that signed it.
    assert minted.expires_at == clock.now + 100
    assert minted.refresh_at == clock.now + 80
    assert "session" not in repr(minted) and "X-Amz" not in repr(minted)


def test_policy() -> None:
    p = RefreshPolicy()
    assert p.refresh_at(0, 900) == 720
    assert p.usable_until(0, 900) == 840
    assert p.usable_until(0, 3) == pytest.approx(2.7)
    delays = [p.retry_delay(n, 0, 900) for n in range(1, 9)]
    assert delays[:5] == [1, 2, 4, 8, 16] and max(delays) == 30
    # Several retries fit between the refresh point and the end of usable life.
    assert sum(delays[:5]) < p.usable_until(0, 900) - p.refresh_at(0, 900)
    short = [p.retry_delay(n, 0, 3) for n in range(1, 5)]
    assert short[0] == pytest.approx(0.06) and max(short) == pytest.approx(0.15)
    with pytest.raises(ConfigError):
        RefreshPolicy(ratio=1.0)


def test_failed_refresh_is_retried_with_backoff_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(1_800_000_000.0)
    source = FlakySource()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, clock=clock)
    first = provider.token()
    provider._background = True  # what start() sets; we drive the steps by hand
    clock.now += 720
    source.failing = True
    delays = []
    with caplog.at_level(logging.WARNING, logger="dsqlkit.auth.tokens"):
        for _ in range(4):
            delay = provider._background_step()
            delays.append(delay)
            # Connection attempts keep getting the old, still valid token, without minting.
            loads = source.loads
            assert provider.token() is first
            assert source.loads == loads
            clock.now += delay
    assert delays == [1, 2, 4, 8]
    assert caplog.text.count("refreshing the DSQL token") == 4
    assert "sts unavailable" in caplog.text and "attempt 4" in caplog.text
    assert "X-Amz" not in caplog.text and CREDS.secret_key not in caplog.text
    assert first not in caplog.text
    source.failing = False
    assert provider._background_step() == pytest.approx(720)  # recovered: next regular refresh
    assert provider.token() != first
    verify(provider.token(), at=clock.now)


def test_connection_mints_inline_when_background_refresh_keeps_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(1_800_000_000.0)
    source = FlakySource()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, clock=clock)
    first = provider.token()
    provider._background = True
    clock.now += 841  # past usable_until (900 - 60)
    source.failing = True
    with caplog.at_level(logging.WARNING, logger="dsqlkit.auth.tokens"):
        # The old token has 59 s left: better than nothing, with a warning.
        assert provider.token() is first
    assert "using the current token" in caplog.text
    clock.now += 60
    with pytest.raises(CredentialsError):
        provider.token()
    source.failing = False
    verify(provider.token(), at=clock.now)


class GatedSource(FlakySource):
    """Credentials whose loads wait for ``gate`` (a slow STS call that ends when the test
    says so) and announce that they started (``entered``)."""

    def __init__(self, *, blocking: bool = True) -> None:
        super().__init__(blocking=blocking)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def load(self) -> LoadedCredentials:
        self.entered.set()
        assert self.gate.wait(30), "the test never released a credentials load"
        return super().load()


def test_a_connection_never_waits_for_a_slow_background_refresh() -> None:
    clock = ManualClock()
    source = GatedSource()
    mints = Mints()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=900,
                             clock=clock, on_mint=mints)
    provider.start()
    try:
        first = provider.token()
        source.gate.clear()
        source.entered.clear()
        clock.now += 720  # the refresh point
        provider.wake()
        assert source.entered.wait(10)  # the refresher is stuck in a slow credentials load
        served: list[str] = []
        caller = threading.Thread(target=lambda: served.extend(provider.token()
                                                               for _ in range(50)))
        caller.start()
        caller.join(10)
        blocked = caller.is_alive()
        source.gate.set()
        caller.join()
        assert not blocked, "a connection attempt waited for the background refresh"
        assert served == [first] * 50
        verify(first, at=clock.now)
        mints.wait(2)  # the first token (start), then the background refresh
        assert provider.token() != first and provider.mints == 2
    finally:
        source.gate.set()
        provider.stop()


def test_background_thread_refreshes_on_schedule_and_stops() -> None:
    clock = ManualClock()
    mints = Mints()
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS, expires_in=900, clock=clock,
                             on_mint=mints)
    provider.start()
    assert provider.refreshing
    thread = provider._thread
    assert thread is not None and thread.daemon
    try:
        seen = [provider.token()]
        for n in range(1, 4):
            issued = provider.current.issued_at  # type: ignore[union-attr]
            clock.now = issued + 719  # just before the 80 % point: nothing to do
            provider.wake()
            clock.now = issued + 720
            provider.wake()
            assert mints.wait(n + 1) == [None] * (n + 1)  # start() minted the first
            token = provider.token()
            assert token != seen[-1] and provider.mints == n + 1
            assert provider.current.issued_at == issued + 720  # type: ignore[union-attr]
            verify(token, at=clock.now)
            seen.append(token)
    finally:
        provider.stop()
    assert not provider.refreshing and not thread.is_alive()


def test_background_thread_ends_with_its_provider() -> None:
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS, expires_in=1)
    provider.start()
    thread = provider._thread
    assert thread is not None
    del provider
    gc.collect()
    thread.join(timeout=3)
    assert not thread.is_alive()


async def test_async_refresh_task() -> None:
    clock = ManualClock()
    source = FlakySource(blocking=True)
    mints = Mints()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=900,
                             clock=clock, on_mint=mints)
    await provider.start_async()
    task = provider._task
    assert task is not None and provider.refreshing
    await provider.start_async()  # idempotent
    assert provider._task is task
    seen = {await provider.atoken()}
    for n in range(1, 4):
        clock.now += 720
        provider.wake()
        assert await mints.await_(n + 1) == [None] * (n + 1)
        seen.add(await provider.atoken())
    assert len(seen) == 4
    await provider.stop_async()
    assert task.done() and not provider.refreshing
    # The blocking source ran in worker threads, never on the event loop's thread.
    assert source.loads == 4


async def test_async_refresh_retries_after_failure(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    source = FlakySource()
    mints = Mints()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=900,
                             clock=clock, on_mint=mints)
    await provider.start_async()
    first = provider.token()
    source.failing = True
    with caplog.at_level(logging.WARNING, logger="dsqlkit.auth.tokens"):
        clock.now += 720
        provider.wake()
        outcomes = await mints.await_(2)
        assert isinstance(outcomes[1], CredentialsError)
        assert "refreshing the DSQL token" in caplog.text
        assert provider.token() is first  # still valid, still served
        source.failing = False
        clock.now += 1  # the first retry is due after 1 s
        provider.wake()
        assert (await mints.await_(3))[2] is None
    await provider.stop_async()
    verify(provider.token(), at=clock.now)
    assert provider.token() != first and provider._failures == 0


def test_stop_ends_both_a_thread_and_a_task() -> None:
    # start() and then start_async() on one provider: stop() must end both refreshers
    # (they once shared one stop event, and stop() waited 5 s for a thread that never ended).
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS, expires_in=900)
    provider.start()
    thread = provider._thread
    assert thread is not None

    async def both() -> asyncio.Task[None]:
        await provider.start_async()
        task = provider._task
        assert task is not None and thread.is_alive()
        await provider.stop_async()
        return task

    task = asyncio.run(both())
    assert task.done()
    assert not thread.is_alive(), "stop() left the refresh thread running"
    assert not provider.refreshing


async def test_atoken_offloads_blocking_mints() -> None:
    main = threading.get_ident()
    threads: list[int] = []

    class Recording(FlakySource):
        def load(self) -> LoadedCredentials:
            threads.append(threading.get_ident())
            return super().load()

    provider = TokenProvider(HOST, "us-east-1", credentials=Recording(blocking=True))
    verify(await provider.atoken())
    assert threads and threads[0] != main
    fast = TokenProvider(HOST, "us-east-1", credentials=Recording(blocking=False))
    await fast.atoken()
    assert threads[-1] == main


def test_concurrent_first_calls_share_one_mint() -> None:
    threads: list[threading.Thread] = []

    def waiting_for_the_mint(thread: threading.Thread) -> bool:
        # A thread blocked on the provider's mint lock is parked in _mint_for_connection
        # (the lock is acquired in C: no frame above it).
        frame = sys._current_frames().get(thread.ident or 0)
        return frame is not None and frame.f_code.co_name == "_mint_for_connection"

    class HeldUntilAllWait(FlakySource):
        def load(self) -> LoadedCredentials:
            # The first mint lasts until every other caller waits for it: they all asked
            # while no token existed (no sleep guessing how long that takes).
            others = [t for t in threads if t is not threading.current_thread()]
            settles(lambda: all(waiting_for_the_mint(t) for t in others),
                    "the other callers to wait for the mint")
            return super().load()

    source = HeldUntilAllWait(blocking=True)
    provider = TokenProvider(HOST, "us-east-1", credentials=source)
    results: list[str] = []
    threads += [threading.Thread(target=lambda: results.append(provider.token()))
                for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1 and source.loads == 1


def test_generate_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDS.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session")
    token = generate_token(f"postgres://admin@{HOST}/postgres?token_duration_secs=60")
    assert "X-Amz-Expires=60&" in token
    verify(token)
    app: Any = generate_token(HOST, user="app", credentials=CREDS)
    verify(app, user="app")


def test_repr_hides_the_token() -> None:
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS)
    token = provider.token()
    assert token not in repr(provider) and CREDS.secret_key not in repr(provider)


def test_shared_providers_serve_one_off_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from dsqlkit.config import DsqlConfig

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDS.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    config = DsqlConfig.from_connection_string(f"postgres://admin@{HOST}/postgres")
    provider = TokenProvider.shared(config)
    assert TokenProvider.shared(DsqlConfig.from_connection_string(HOST)) is provider
    assert TokenProvider.shared(config.with_params(user="app")) is not provider
    token = provider.token()
    assert provider.token() is token and provider.mints == 1
    # New keys in the environment: the cached token is not reused, the new keys sign.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROTATED")
    rotated = provider.token()
    assert rotated != token and "AKIDROTATED%2F" in rotated
    assert provider.token() is rotated


def test_on_mint_reports_every_attempt_inline_ones_too() -> None:
    clock = ManualClock(1_800_000_000.0)
    source = FlakySource()
    mints = Mints()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, clock=clock, on_mint=mints)
    first = provider.token()
    clock.advance(721)  # past the refresh point, no refresher: the next connection mints
    source.failing = True
    assert provider.token() is first  # the mint failed; the old token is still valid
    assert mints.outcomes[0] is None and isinstance(mints.outcomes[1], CredentialsError)
    source.failing = False
    assert provider.refresh() != first and mints.outcomes[2:] == [None]
