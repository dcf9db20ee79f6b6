"""psycopg 3 (sync and async) against dsqlkit local: connections, pools, tokens, TLS, failures."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg
import pytest

import dsqlkit
from clock_support import ManualClock
from connect_support import (
    WRONG,
    AgeCapRun,
    ClockedPlan,
    SwitchableCredentials,
    age_out,
    extra_endpoint,
    run_tasks,
    run_threads,
    wait_closed_by_server,
)
from dsqlkit import psycopg as dp
from dsqlkit.errors import AuthenticationError, ConfigError, CredentialsError
from dsqlkit.local import LocalDSQL

APP = f"dsqlkit/{dsqlkit.__version__}"


def test_connect_and_query(dsql_local: LocalDSQL) -> None:
    with dp.connect(dsql_local.url(), credentials=dsql_local.credentials) as conn:
        row = conn.execute(
            "SELECT 1, current_user, current_setting('application_name')"
        ).fetchone()
        assert row == (1, "admin", APP)
        assert conn.pgconn.ssl_in_use
        info = conn.info.get_parameters()
        assert info["user"] == "admin" and info["dbname"] == "postgres"
        assert info["sslmode"] == "verify-full"
        # libpq >= 17: direct TLS, no SSLRequest round trip.
        if psycopg.pq.version() >= 170000:
            assert info.get("sslnegotiation") == "direct"


def test_dsql_hostname_with_hostaddr(dsql_local: LocalDSQL) -> None:
    # The token, SNI and certificate check use the DSQL name; the socket goes to hostaddr.
    url = (f"postgres://admin@{dsql_local.hostname}:{dsql_local.port}/postgres"
           f"?hostaddr=127.0.0.1&sslrootcert={dsql_local.ca_path}&application_name=orm")
    with dp.connect(url, credentials=dsql_local.credentials) as conn:
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == (
            f"orm:{APP}",
        )


def test_the_certificate_is_verified(dsql_local: LocalDSQL,
                                     caplog: pytest.LogCaptureFixture) -> None:
    # The system trust store does not know the local CA: verify-full must refuse.
    url = f"postgres://admin@localhost:{dsql_local.port}/postgres?region={dsql_local.region}"
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        dp.connect(url, credentials=dsql_local.credentials)
    # Weakening TLS is possible, explicitly, and logged.
    with caplog.at_level(logging.WARNING, logger="dsqlkit.config"), \
            dp.connect(url, sslmode="require", credentials=dsql_local.credentials) as conn:
        assert conn.pgconn.ssl_in_use
    assert "sslmode=require weakens TLS" in caplog.text


def test_environment_credentials(dsql_local: LocalDSQL, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in dsql_local.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    url = f"postgres://admin@localhost:{dsql_local.port}/postgres"  # CA via PGSSLROOTCERT
    with dp.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_wrong_credentials_give_a_clear_error(dsql_local: LocalDSQL) -> None:
    with pytest.raises(AuthenticationError) as info:
        dp.connect(dsql_local.url(), credentials=WRONG)
    message = str(info.value)
    assert "refused the IAM token for admin@localhost" in message
    assert "DbConnectAdmin" in message and "fixed credentials" in message
    assert "security token included in the request is invalid" in message
    assert WRONG.secret_key not in message and "X-Amz" not in message
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_unknown_parameters_are_refused(dsql_local: LocalDSQL) -> None:
    with pytest.raises(ConfigError, match="unknown connection parameter 'autocomit'"):
        dp.connect(dsql_local.url(), credentials=dsql_local.credentials, autocomit=True)


def test_pool_under_concurrency(dsql_local: LocalDSQL) -> None:
    with dp.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                        min_size=2, max_size=6, kwargs={"autocommit": True}) as pool:
        assert pool.max_lifetime == 3300 and pool.max_idle == 600

        def work() -> None:
            with pool.connection() as conn:
                assert conn.execute("SELECT 42").fetchone() == (42,)

        run_threads(work, rounds=20, workers=12).check(minimum=240)
        assert pool.get_stats()["pool_size"] <= 6
        provider = pool.token_provider
        assert provider.refreshing
    assert not provider.refreshing  # closing the pool stopped the refresh thread
    assert provider._thread is None


def _refreshers() -> int:
    return sum(t.name.startswith("dsqlkit-token-refresh") for t in threading.enumerate())


def test_pool_with_wrong_credentials_fails_fast(dsql_local: LocalDSQL) -> None:
    before = _refreshers()
    t0 = time.monotonic()
    with pytest.raises(AuthenticationError, match="refused the IAM token"):
        dp.create_pool(dsql_local.url(), credentials=WRONG, min_size=2)
    assert time.monotonic() - t0 < 5
    assert _refreshers() == before  # the failed pool closed and stopped its refresher


def test_pool_with_missing_credentials_fails_at_open(dsql_local: LocalDSQL) -> None:
    broken = SwitchableCredentials(dsql_local.credentials)
    broken.failing = True
    with pytest.raises(CredentialsError, match="credentials endpoint unavailable"):
        dp.create_pool(dsql_local.url(), credentials_provider=broken)


def _checkouts(pool: dp.DsqlConnectionPool, n: int = 4) -> None:
    for _ in range(n):
        with pool.connection() as conn:
            conn.execute("SELECT 1")


def test_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    with dp.create_pool(dsql_local.url(), **plan.pool_args(), min_size=2, max_size=4,
                        kwargs={"autocommit": True}) as pool:
        for mints in plan.rotation():
            plan.mints.wait(mints)
            _checkouts(pool)
        assert plan.provider.mints == 3  # the first token and two refreshes, none inline
    # Every step retired the pool's connections: new ones, with the tokens of their time.
    plan.check(connections=2 + 8 * 2, tokens=3)


def test_refresh_failure_then_recovery(dsql_local: LocalDSQL,
                                       caplog: pytest.LogCaptureFixture) -> None:
    plan = ClockedPlan(dsql_local, lifetime=30.0)
    with caplog.at_level(logging.DEBUG, logger="dsqlkit"), dp.create_pool(
        dsql_local.url(), **plan.pool_args(), min_size=2, max_size=4,
        kwargs={"autocommit": True},
    ) as pool:
        for mints in plan.refresh_failure():
            plan.mints.wait(mints)
            _checkouts(pool)
    assert plan.credentials.failures == 2  # the refresh and its first retry
    plan.check(connections=6, tokens=2)
    assert "refreshing the DSQL token for admin@localhost failed" in caplog.text
    assert "retrying in 1.00 s" in caplog.text and "retrying in 2.00 s" in caplog.text
    assert "X-Amz-Signature" not in caplog.text
    assert dsql_local.credentials.secret_key not in caplog.text


def test_age_cap_under_continuous_load(dsql_local: LocalDSQL) -> None:
    # The endpoint cuts connections at DSQL's 60 minutes; the pool retires them first, at
    # its 55-minute default, so that no connection in use is cut. The endpoint and the pool
    # share a ManualClock (connect_support.AgeCapRun): until every connection was replaced
    # twice, load runs, then every connection is held while the clock moves and the
    # endpoint checks ages.
    run = AgeCapRun()
    with run.endpoint(dsql_local) as ep, dp.create_pool(
        ep.url(), credentials=ep.credentials, min_size=4, max_size=4, clock=run.clock,
        kwargs={"autocommit": True},
    ) as pool:
        run.drive(lambda: pool.get_stats().get("connections_num", 0) >= 12,
                  pool.connection, lambda conn: conn.execute("SELECT 1"))


def test_connections_closed_by_the_server_are_replaced(dsql_local: LocalDSQL,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # The pool keeps its default lifetime (55 min, on the real clock: it never passes here);
    # the endpoint's age cap closes the idle pooled connections when the test moves the
    # endpoint's clock. The checkout check notices without a round trip and hands out
    # fresh ones.
    clock = ManualClock()
    with extra_endpoint(dsql_local, clock=clock) as ep, dp.create_pool(
        ep.url(), credentials=ep.credentials, min_size=3, max_size=3,
        kwargs={"autocommit": True},
    ) as pool:
        conns = []
        with contextlib.ExitStack() as stack:
            for _ in range(3):
                conns.append(stack.enter_context(pool.connection()))
        pids = {c.info.backend_pid for c in conns}
        age_out(ep, clock)
        wait_closed_by_server(*(c.fileno() for c in conns))
        with caplog.at_level(logging.DEBUG, logger="dsqlkit.psycopg"):
            for _ in range(6):
                with pool.connection() as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                    assert conn.info.backend_pid not in pids
        assert "replacing a pooled connection" in caplog.text


def test_unusable_sees_a_server_close_without_a_round_trip(dsql_local: LocalDSQL) -> None:
    clock = ManualClock()
    with extra_endpoint(dsql_local, clock=clock) as ep:
        conn = dp.connect(ep.url(), credentials=ep.credentials, autocommit=True)
        dp._watch(conn)
        assert dp.unusable(conn) is None
        age_out(ep, clock)
        wait_closed_by_server(conn.fileno())
        assert dp.unusable(conn) in ("closed by the server", "ended by the server")
        conn.close()
        assert dp.unusable(conn) == "closed"


def test_max_lifetime_must_stay_below_dsqls_limit(dsql_local: LocalDSQL,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="60-minute"):
        dp.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                       max_lifetime=None, open=False)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="dsqlkit._drivers"):
        pool = dp.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                              max_lifetime=3600, open=False)
    assert "reaches DSQL's 60-minute connection limit" in caplog.text
    assert pool.max_lifetime == 3600


# -- async --------------------------------------------------------------------------------


async def test_connect_async(dsql_local: LocalDSQL) -> None:
    conn = await dp.connect_async(dsql_local.url(), credentials=dsql_local.credentials)
    async with conn:
        cur = await conn.execute("SELECT current_user, current_setting('application_name')")
        assert await cur.fetchone() == ("admin", APP)
        assert conn.pgconn.ssl_in_use


async def test_connect_async_wrong_credentials(dsql_local: LocalDSQL) -> None:
    with pytest.raises(AuthenticationError, match="security token included"):
        await dp.connect_async(dsql_local.url(), credentials=WRONG)


async def test_async_pool_under_concurrency(dsql_local: LocalDSQL) -> None:
    pool = dp.create_async_pool(dsql_local.url(), credentials=dsql_local.credentials,
                                min_size=2, max_size=6, kwargs={"autocommit": True})
    async with pool:
        provider = pool.token_provider
        assert provider.refreshing and provider._task is not None

        async def work() -> None:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT 7")
                assert await cur.fetchone() == (7,)

        (await run_tasks(work, rounds=15, workers=16)).check(minimum=240)
        assert pool.get_stats()["pool_size"] <= 6
    assert not provider.refreshing


async def test_async_pool_wrong_credentials_fail_fast(dsql_local: LocalDSQL) -> None:
    pool = dp.create_async_pool(dsql_local.url(), credentials=WRONG, min_size=1)
    t0 = time.monotonic()
    with pytest.raises(AuthenticationError):
        await pool.open(wait=True)
    assert time.monotonic() - t0 < 5
    assert not pool.token_provider.refreshing


async def _async_checkouts(pool: dp.DsqlAsyncConnectionPool, n: int = 4) -> None:
    for _ in range(n):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")


async def test_async_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    pool = dp.create_async_pool(dsql_local.url(), **plan.pool_args(), min_size=2,
                                max_size=4, kwargs={"autocommit": True})
    async with pool:
        for mints in plan.rotation():
            await plan.mints.await_(mints)
            await _async_checkouts(pool)
        assert plan.provider.mints == 3
    plan.check(connections=2 + 8 * 2, tokens=3)


async def test_async_age_cap_under_continuous_load(dsql_local: LocalDSQL) -> None:
    run = AgeCapRun()  # as test_age_cap_under_continuous_load
    with run.endpoint(dsql_local) as ep:
        pool = dp.create_async_pool(ep.url(), credentials=ep.credentials, min_size=4,
                                    max_size=4, clock=run.clock, kwargs={"autocommit": True})
        async with pool:
            await run.drive_async(lambda: pool.get_stats().get("connections_num", 0) >= 12,
                                  pool.connection, lambda conn: conn.execute("SELECT 1"))
