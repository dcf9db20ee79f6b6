"""TokenProvider: caching, the 80 % refresh point, background refresh, failures and recovery."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from dsqlkit.auth import sigv4
from dsqlkit.auth.credentials import CredentialSource, LoadedCredentials
from dsqlkit.auth.tokens import RefreshPolicy, TokenProvider, generate_token
from dsqlkit.errors import ConfigError, CredentialsError

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
CREDS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakySource(CredentialSource):
    """Credentials that fail while ``failing`` is set; counts loads."""

    description = "flaky test source"

    def __init__(self, *, blocking: bool = False, delay: float = 0.0,
                 expires_at: float | None = None) -> None:
        self.blocking = blocking
        self.failing = False
        self.delay = delay
        self.loads = 0
        self.expires_at = expires_at

    def load(self) -> LoadedCredentials:
        self.loads += 1
        if self.delay:
            time.sleep(self.delay)
        if self.failing:
            raise CredentialsError("sts unavailable (test)")
        return LoadedCredentials(CREDS, self.expires_at)


def verify(token: str, *, user: str = "admin", at: float | None = None) -> sigv4.VerifiedToken:
    now = datetime.fromtimestamp(at if at is not None else time.time(), timezone.utc)
    return sigv4.verify_token(token, user=user, region="us-east-1", hosts=[HOST],
                              lookup={CREDS.access_key: CREDS}.get, now=now)


def test_token_is_cached_until_the_refresh_point() -> None:
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
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


def test_a_connection_never_waits_for_a_slow_background_refresh() -> None:
    source = FlakySource(blocking=True, delay=0.0)
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=5)
    provider.start()
    try:
        source.delay = 1.0  # every later credentials load takes a second
        deadline = time.time() + 6
        worst = 0.0
        while time.time() < deadline:
            t0 = time.perf_counter()
            token = provider.token()
            worst = max(worst, time.perf_counter() - t0)
            verify(token)
            time.sleep(0.05)
        # The refresher was slow (>= 1 s per mint) at 4 s and again later; callers were
        # served the cached token meanwhile.
        assert source.loads >= 2
        assert worst < 0.5
    finally:
        provider.stop()


def test_background_thread_refreshes_and_stops() -> None:
    provider = TokenProvider(HOST, "us-east-1", credentials=CREDS, expires_in=2)
    provider.start()
    assert provider.refreshing
    thread = provider._thread
    assert thread is not None and thread.daemon
    try:
        seen = set()
        deadline = time.time() + 4.5
        while time.time() < deadline:
            token = provider.token()
            verify(token)
            seen.add(token)
            time.sleep(0.02)
        assert len(seen) >= 3  # a 2 s token is re-minted every 1.6 s
    finally:
        provider.stop()
    assert not provider.refreshing and not thread.is_alive()
    mints = provider.mints
    time.sleep(2)
    assert provider.mints == mints


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
    source = FlakySource(blocking=True)
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=2)
    await provider.start_async()
    task = provider._task
    assert task is not None and provider.refreshing
    await provider.start_async()  # idempotent
    assert provider._task is task
    seen = set()
    for _ in range(45):
        seen.add(await provider.atoken())
        await asyncio.sleep(0.1)
    assert len(seen) >= 3
    await provider.stop_async()
    assert task.done() and not provider.refreshing
    # The blocking source ran in worker threads, never on the event loop's thread.
    assert source.loads >= 3


async def test_async_refresh_retries_after_failure(caplog: pytest.LogCaptureFixture) -> None:
    source = FlakySource()
    provider = TokenProvider(HOST, "us-east-1", credentials=source, expires_in=2)
    await provider.start_async()
    source.failing = True
    with caplog.at_level(logging.WARNING, logger="dsqlkit.auth.tokens"):
        await asyncio.sleep(2.0)
        assert "refreshing the DSQL token" in caplog.text
        source.failing = False
        await asyncio.sleep(0.6)
    await provider.stop_async()
    verify(provider.token())
    assert provider._failures == 0


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
    source = FlakySource(blocking=True, delay=0.2)
    provider = TokenProvider(HOST, "us-east-1", credentials=source)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(provider.token()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and source.loads == 1


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
