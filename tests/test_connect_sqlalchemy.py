"""SQLAlchemy engines (psycopg, psycopg2; async psycopg, asyncpg) against dsqlkit local."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import sqlalchemy.pool.base
from sqlalchemy import event, text

import dsqlkit
from connect_support import (
    WRONG,
    AgeCapRun,
    ClockedPlan,
    run_tasks,
    run_threads,
)
from dsqlkit import sqlalchemy as dsa
from dsqlkit.errors import AuthenticationError, ConfigError
from dsqlkit.local import LocalDSQL

APP = f"dsqlkit/{dsqlkit.__version__}"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_engine_connects_and_queries(dsql_local: LocalDSQL, driver: str) -> None:
    engine = dsa.create_engine(dsql_local.url(), driver=driver,
                               credentials=dsql_local.credentials)
    try:
        assert engine.dialect.driver == driver
        assert engine.pool._recycle == 3300 and engine.pool._pre_ping
        with engine.connect() as conn:
            row = conn.execute(text("SELECT current_user, current_setting('application_name')"))
            assert tuple(row.one()) == ("admin", APP)

        def work() -> None:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 42")).scalar() == 42

        run_threads(work, rounds=10, workers=8).check(minimum=80)
    finally:
        engine.dispose()


def test_driver_from_the_url(dsql_local: LocalDSQL) -> None:
    url = dsql_local.url().replace("postgres://", "postgresql+psycopg2://")
    engine = dsa.create_engine(url, credentials=dsql_local.credentials)
    assert engine.dialect.driver == "psycopg2"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
    with pytest.raises(ConfigError, match="keep one"):
        dsa.create_engine(url, driver="psycopg", credentials=dsql_local.credentials)
    with pytest.raises(ConfigError, match="not supported"):
        dsa.create_engine(dsql_local.url(), driver="pg8000", credentials=dsql_local.credentials)
    with pytest.raises(ConfigError, match="connection creator"):
        dsa.create_engine(dsql_local.url(), creator=lambda: None,
                          credentials=dsql_local.credentials)


def test_pool_recycle_stays_below_dsqls_limit(dsql_local: LocalDSQL,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dsqlkit._drivers"):
        engine = dsa.create_engine(dsql_local.url(), credentials=dsql_local.credentials,
                                   pool_recycle=3600)
    assert "pool_recycle=3600" in caplog.text
    engine.dispose()


def test_wrong_credentials(dsql_local: LocalDSQL) -> None:
    engine = dsa.create_engine(dsql_local.url(), credentials=WRONG)
    with pytest.raises(AuthenticationError, match="refused the IAM token"):
        engine.connect()
    engine.dispose()


def test_dispose_stops_the_refresh_and_the_next_connection_restarts_it(
    dsql_local: LocalDSQL,
) -> None:
    engine = dsa.create_engine(dsql_local.url(), credentials=dsql_local.credentials)
    provider = engine.dsql_token_provider  # type: ignore[attr-defined]
    with engine.connect():
        assert provider.refreshing
    engine.dispose()
    assert not provider.refreshing
    with engine.connect():
        assert provider.refreshing
    engine.dispose()


def test_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    engine = dsa.create_engine(dsql_local.url(), driver="psycopg2", pool_size=2,
                               max_overflow=0, token_provider=plan.provider)
    try:
        for mints in plan.rotation():
            plan.mints.wait(mints)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                # SQLAlchemy retires connections on its own clock (pool_recycle): let the
                # next checkout open a new one.
                conn.invalidate()
        assert plan.provider.mints == 3
    finally:
        engine.dispose()
    plan.check(connections=9, tokens=3)


def test_age_cap_under_continuous_load(dsql_local: LocalDSQL,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # As in test_connect_psycopg.py: the endpoint's 60-minute cap and the engine's
    # 55-minute default pool_recycle on one ManualClock; every connection held while the
    # clock moves. SQLAlchemy takes no clock: its pool dates connections and checks
    # pool_recycle with time.time() in sqlalchemy.pool.base (nothing else there reads the
    # time module), so the test points that module's `time` at the run's clock. Were
    # recycling measured elsewhere, no connection would be recycled on this clock and the
    # test would fail (a held connection cut at 60 minutes, or no replacements).
    run = AgeCapRun()
    monkeypatch.setattr(sqlalchemy.pool.base, "time", SimpleNamespace(time=run.clock))
    with run.endpoint(dsql_local) as ep:
        engine = dsa.create_engine(ep.url(), credentials=ep.credentials, pool_size=4,
                                   max_overflow=0)
        opened: list[float] = []
        event.listen(engine, "connect", lambda *_: opened.append(run.clock()))
        try:
            run.drive(lambda: len(opened) >= 12, engine.connect,
                      lambda conn: conn.execute(text("SELECT 1")))
        finally:
            engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_engine(dsql_local: LocalDSQL, driver: str) -> None:
    engine = dsa.create_async_engine(dsql_local.url(), driver=driver,
                                     credentials=dsql_local.credentials)
    provider = engine.sync_engine.dsql_token_provider  # type: ignore[attr-defined]
    try:
        assert engine.dialect.driver == driver
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT current_user, current_setting('application_name')")
            )
            assert tuple(result.one()) == ("admin", APP)
        assert provider.refreshing and provider._task is not None

        async def work() -> None:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 7"))).scalar() == 7

        (await run_tasks(work, rounds=10, workers=8)).check(minimum=80)
    finally:
        await engine.dispose()
    assert not provider.refreshing


async def test_async_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    engine = dsa.create_async_engine(dsql_local.url(), driver="asyncpg", pool_size=2,
                                     max_overflow=0, token_provider=plan.provider)
    try:
        for mints in plan.rotation():
            await plan.mints.await_(mints)
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await conn.invalidate()
        assert plan.provider.mints == 3
    finally:
        await engine.dispose()
    plan.check(connections=9, tokens=3)


async def test_async_wrong_credentials(dsql_local: LocalDSQL) -> None:
    engine = dsa.create_async_engine(dsql_local.url(), driver="asyncpg", credentials=WRONG)
    with pytest.raises(AuthenticationError):
        async with engine.connect():
            pass
    await engine.dispose()
