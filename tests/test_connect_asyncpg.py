"""asyncpg against dsqlkit local: TLS context, direct TLS, pools with a maximum lifetime."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import asyncpg
import pytest

import dsqlkit
from clock_support import ManualClock
from connect_support import (
    WRONG,
    AgeCapRun,
    ClockedPlan,
    age_out,
    extra_endpoint,
    run_tasks,
)
from dsqlkit import asyncpg as da
from dsqlkit.config import DsqlConfig
from dsqlkit.errors import AuthenticationError, ConfigError
from dsqlkit.local import LocalDSQL

APP = f"dsqlkit/{dsqlkit.__version__}"


def test_ssl_context_verifies_and_offers_alpn(dsql_local: LocalDSQL) -> None:
    config = DsqlConfig.from_connection_string(dsql_local.url())
    ctx = da.ssl_context(config)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert da.ssl_context(config) is ctx  # cached: loading CAs costs milliseconds
    kwargs = da._connect_kwargs(config)
    assert kwargs["direct_tls"] is True
    assert kwargs["server_settings"] == {"application_name": APP}
    weak = da.ssl_context(config.with_params(sslmode="require"))
    assert isinstance(weak, ssl.SSLContext) and weak.verify_mode == ssl.CERT_NONE
    assert da.ssl_context(config.with_params(sslmode="disable")) is False
    with pytest.raises(ConfigError, match="no equivalent of the libpq parameter 'keepalives'"):
        da._connect_kwargs(config.with_params(keepalives=1))


def test_parse_options() -> None:
    assert da.parse_options("-c search_path=app -csearch_path2=x --work-mem=64MB") == {
        "search_path": "app", "search_path2": "x", "work_mem": "64MB",
    }
    assert da.parse_options(r"-c application_name=a\ b") == {"application_name": "a b"}
    with pytest.raises(ConfigError):
        da.parse_options("search_path=app")


async def test_connect_and_query(dsql_local: LocalDSQL) -> None:
    conn = await da.connect(dsql_local.url(), credentials=dsql_local.credentials)
    try:
        row = await conn.fetchrow(
            "SELECT 1 AS one, current_user AS u, current_setting('application_name') AS app"
        )
        assert tuple(row) == (1, "admin", APP)
        assert conn.get_settings().application_name == APP
    finally:
        await conn.close()


async def test_dsql_hostname_with_hostaddr_and_options(dsql_local: LocalDSQL) -> None:
    url = (f"postgres://admin@{dsql_local.hostname}:{dsql_local.port}/postgres"
           f"?hostaddr=127.0.0.1&sslrootcert={dsql_local.ca_path}"
           "&options=-c%20search_path%3Dpublic&connect_timeout=5")
    conn = await da.connect(url, credentials=dsql_local.credentials)
    try:
        assert await conn.fetchval("SHOW search_path") == "public"
    finally:
        await conn.close()


async def test_the_certificate_is_verified(dsql_local: LocalDSQL) -> None:
    url = f"postgres://admin@localhost:{dsql_local.port}/postgres?region={dsql_local.region}"
    with pytest.raises(ssl.SSLCertVerificationError):
        await da.connect(url, credentials=dsql_local.credentials)


async def test_wrong_credentials_give_a_clear_error(dsql_local: LocalDSQL) -> None:
    with pytest.raises(AuthenticationError) as info:
        await da.connect(dsql_local.url(), credentials=WRONG)
    message = str(info.value)
    assert "refused the IAM token for admin@localhost" in message
    assert "security token included in the request is invalid" in message
    assert WRONG.secret_key not in message
    assert isinstance(info.value.__cause__, asyncpg.PostgresError)


async def test_pool_under_concurrency(dsql_local: LocalDSQL) -> None:
    async with da.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                              min_size=2, max_size=6) as pool:
        provider = pool.token_provider
        assert provider.refreshing

        async def work() -> None:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 42") == 42

        (await run_tasks(work, rounds=15, workers=16)).check(minimum=240)
        assert await pool.fetchval("SELECT 1") == 1  # the pool's own helpers go through us
        conn = await pool.acquire()  # the awaitable form
        await pool.release(conn)
        assert pool.get_size() <= 6
    assert not provider.refreshing


async def test_pool_with_wrong_credentials(dsql_local: LocalDSQL) -> None:
    pool = da.create_pool(dsql_local.url(), credentials=WRONG, min_size=1)
    with pytest.raises(AuthenticationError):
        await pool


async def test_max_lifetime_retires_connections(dsql_local: LocalDSQL,
                                                caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    async with da.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                              min_size=1, max_size=1, max_lifetime=60, clock=clock) as pool:
        first = await pool.fetchval("SELECT pg_backend_pid()")
        clock.advance(56)  # within 5 % of the lifetime: it may retire from 57 s on
        assert await pool.fetchval("SELECT pg_backend_pid()") == first
        clock.advance(5)
        with caplog.at_level(logging.DEBUG, logger="dsqlkit.asyncpg"):
            assert await pool.fetchval("SELECT pg_backend_pid()") != first
        assert "retiring a pooled connection" in caplog.text


async def test_a_connection_released_past_its_lifetime_is_closed(dsql_local: LocalDSQL) -> None:
    clock = ManualClock()
    async with da.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                              min_size=0, max_size=1, max_lifetime=60, clock=clock) as pool:
        conn = await pool.acquire()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        raw = conn._con
        clock.advance(61)
        await pool.release(conn)  # closed here, not reset and parked
        assert raw.is_closed()
        assert await pool.fetchval("SELECT pg_backend_pid()") != pid


async def _checkouts(pool: da.Pool, n: int = 4) -> None:
    for _ in range(n):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


async def test_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    async with da.create_pool(dsql_local.url(), **plan.pool_args(), min_size=2,
                              max_size=4) as pool:
        for mints in plan.rotation():
            await plan.mints.await_(mints)
            await _checkouts(pool)
        assert plan.provider.mints == 3
    plan.check(connections=2 + 8, tokens=3)


async def test_refresh_failure_then_recovery(dsql_local: LocalDSQL,
                                             caplog: pytest.LogCaptureFixture) -> None:
    plan = ClockedPlan(dsql_local, lifetime=30.0)
    with caplog.at_level(logging.WARNING, logger="dsqlkit"):
        async with da.create_pool(dsql_local.url(), **plan.pool_args(), min_size=2,
                                  max_size=4) as pool:
            for mints in plan.refresh_failure():
                await plan.mints.await_(mints)
                await _checkouts(pool)
    assert plan.credentials.failures == 2
    plan.check(connections=4, tokens=2)
    assert "refreshing the DSQL token for admin@localhost failed" in caplog.text
    assert "X-Amz-Signature" not in caplog.text


async def test_age_cap_under_continuous_load(dsql_local: LocalDSQL) -> None:
    # As in test_connect_psycopg.py: the endpoint's 60-minute cap and the pool's 55-minute
    # default lifetime on one ManualClock; every connection held while the clock moves.
    run = AgeCapRun()
    opened: list[float] = []

    async def init(conn: Any) -> None:
        opened.append(run.clock())

    with run.endpoint(dsql_local) as ep:
        async with da.create_pool(ep.url(), credentials=ep.credentials, min_size=4,
                                  max_size=4, clock=run.clock, init=init) as pool:
            await run.drive_async(lambda: len(opened) >= 12, pool.acquire,
                                  lambda conn: conn.fetchval("SELECT 1"))


async def test_connections_closed_by_the_server_are_replaced(dsql_local: LocalDSQL) -> None:
    # The pool's lifetime is the default, on the real clock (it never passes here); the
    # endpoint's age cap closes the idle pooled connections when the test moves its clock.
    clock = ManualClock()
    with extra_endpoint(dsql_local, clock=clock) as ep:
        async with da.create_pool(ep.url(), credentials=ep.credentials,
                                  min_size=3, max_size=3) as pool:
            closed = asyncio.Event()
            ended: list[object] = []

            def on_close(conn: object) -> None:
                ended.append(conn)
                if len(ended) == 3:
                    closed.set()

            held = [await pool.acquire() for _ in range(3)]
            before = {await c.fetchval("SELECT pg_backend_pid()") for c in held}
            for c in held:
                c._con.add_termination_listener(on_close)
                await pool.release(c)
            age_out(ep, clock)
            await asyncio.wait_for(closed.wait(), 10)  # the endpoint closed all three
            for _ in range(6):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT pg_backend_pid()") not in before


async def test_user_connection_class_and_setup(dsql_local: LocalDSQL) -> None:
    class Mine(asyncpg.Connection):  # type: ignore[misc]
        pass

    calls: list[int] = []

    async def setup(conn: Any) -> None:
        calls.append(1)

    async with da.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                              min_size=1, max_size=1, connection_class=Mine,
                              setup=setup) as pool:
        async with pool.acquire() as conn:
            assert isinstance(conn._con, Mine)
        assert calls == [1]
