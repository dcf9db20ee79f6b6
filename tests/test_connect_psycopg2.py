"""psycopg2 against dsqlkit local: connections and the thread-safe, lifetime-aware pool."""

from __future__ import annotations

import logging
import time

import psycopg2
import pytest

import dsqlkit
from clock_support import ManualClock
from connect_support import (
    WRONG,
    AgeCapRun,
    ClockedPlan,
    age_out,
    extra_endpoint,
    run_threads,
    wait_closed_by_server,
)
from dsqlkit import psycopg2 as d2
from dsqlkit.errors import AuthenticationError, ConfigError, PoolTimeout
from dsqlkit.local import LocalDSQL

APP = f"dsqlkit/{dsqlkit.__version__}"


def _one(conn: d2.Connection, sql: str) -> object:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def test_connect_and_query(dsql_local: LocalDSQL) -> None:
    conn = d2.connect(dsql_local.url(), credentials=dsql_local.credentials)
    try:
        assert _one(conn, "SELECT current_setting('application_name')") == APP
        params = conn.get_dsn_parameters()
        assert params["sslmode"] == "verify-full"
        if psycopg2.extensions.libpq_version() >= 170000:
            assert params.get("sslnegotiation") == "direct"
    finally:
        conn.close()


def test_wrong_credentials_give_a_clear_error(dsql_local: LocalDSQL) -> None:
    with pytest.raises(AuthenticationError, match="refused the IAM token") as info:
        d2.connect(dsql_local.url(), credentials=WRONG)
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)
    assert WRONG.secret_key not in str(info.value)


def test_pool_under_concurrency(dsql_local: LocalDSQL) -> None:
    with d2.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                        min_size=2, max_size=6) as pool:
        assert pool.size == 2
        provider = pool.token_provider
        assert provider.refreshing

        def work() -> None:
            with pool.connection() as conn:
                assert _one(conn, "SELECT 42") == 42

        run_threads(work, rounds=20, workers=12).check(minimum=240)
        assert pool.size <= 6
    assert pool.closed and not provider.refreshing


def test_pool_timeout_and_misuse(dsql_local: LocalDSQL) -> None:
    with d2.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                        min_size=0, max_size=1, timeout=0.2) as pool:
        conn = pool.getconn()
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match="max_size=1"):
            pool.getconn()
        # The wait for a free connection runs on the real clock (a Condition wait): it
        # lasted the pool's own 0.2 s timeout, not the 30 s default (a loose upper bound,
        # not a timing window).
        assert 0.15 < time.monotonic() - t0 < 15
        pool.putconn(conn)
        with pytest.raises(ConfigError, match="did not hand out"):
            pool.putconn(conn)
    with pytest.raises(ConfigError, match="pool is closed"):
        pool.getconn()


def test_transactions_are_committed_or_rolled_back(dsql_local: LocalDSQL) -> None:
    with d2.create_pool(dsql_local.url(), credentials=dsql_local.credentials,
                        min_size=1, max_size=1) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS dsqlkit_pg2 (id int PRIMARY KEY)")
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM dsqlkit_pg2")
        with pytest.raises(RuntimeError), pool.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO dsqlkit_pg2 VALUES (1)")
            raise RuntimeError("abort")
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO dsqlkit_pg2 VALUES (2)")
        with pool.connection() as conn:
            assert _one(conn, "SELECT array_agg(id) FROM dsqlkit_pg2") == [2]
        # A connection returned mid-transaction is rolled back.
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO dsqlkit_pg2 VALUES (3)")
        pool.putconn(conn)
        conn = pool.getconn()
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert _one(conn, "SELECT count(*) FROM dsqlkit_pg2") == 1
        conn.rollback()
        pool.putconn(conn)


def _checkouts(pool: d2.Pool, n: int = 4) -> None:
    for _ in range(n):
        with pool.connection() as conn:
            _one(conn, "SELECT 1")


def test_new_connections_get_refreshed_tokens(dsql_local: LocalDSQL) -> None:
    plan = ClockedPlan(dsql_local)
    with d2.create_pool(dsql_local.url(), **plan.pool_args(), min_size=2, max_size=4) as pool:
        for mints in plan.rotation():
            plan.mints.wait(mints)
            _checkouts(pool)
        assert pool.replaced >= 8  # each step retired the connection in use
        assert plan.provider.mints == 3
        conn = d2.connect(pool.config, token_provider=pool.token_provider)
        conn.close()
    plan.check(connections=2 + 8, tokens=3)


def test_refresh_failure_then_recovery(dsql_local: LocalDSQL,
                                       caplog: pytest.LogCaptureFixture) -> None:
    plan = ClockedPlan(dsql_local, lifetime=30.0)
    with caplog.at_level(logging.WARNING, logger="dsqlkit"), d2.create_pool(
        dsql_local.url(), **plan.pool_args(), min_size=2, max_size=4,
    ) as pool:
        for mints in plan.refresh_failure():
            plan.mints.wait(mints)
            _checkouts(pool)
    assert plan.credentials.failures == 2
    plan.check(connections=4, tokens=2)
    assert "refreshing the DSQL token for admin@localhost failed" in caplog.text
    assert "X-Amz-Signature" not in caplog.text


def test_age_cap_under_continuous_load(dsql_local: LocalDSQL) -> None:
    # As in test_connect_psycopg.py: the endpoint's 60-minute cap and the pool's 55-minute
    # default lifetime on one ManualClock; every connection held while the clock moves.
    run = AgeCapRun()
    with run.endpoint(dsql_local) as ep, d2.create_pool(
        ep.url(), credentials=ep.credentials, min_size=4, max_size=4, clock=run.clock,
    ) as pool:
        run.drive(lambda: pool.replaced >= 8, pool.connection,
                  lambda conn: _one(conn, "SELECT 1"))


def test_connections_closed_by_the_server_are_replaced(dsql_local: LocalDSQL) -> None:
    # The pool's lifetime is the default, on the real clock (it never passes here); the
    # endpoint's age cap closes the idle pooled connections when the test moves its clock.
    clock = ManualClock()
    with extra_endpoint(dsql_local, clock=clock) as ep, d2.create_pool(
        ep.url(), credentials=ep.credentials, min_size=3, max_size=3,
    ) as pool:
        conns = [pool.getconn() for _ in range(3)]
        pids = {c.get_backend_pid() for c in conns}
        for c in conns:
            pool.putconn(c)
        age_out(ep, clock)
        wait_closed_by_server(*(c.fileno() for c in conns))
        for _ in range(6):
            with pool.connection() as conn:
                assert conn.get_backend_pid() not in pids
        assert pool.replaced >= 3


def test_unusable_sees_a_server_close(dsql_local: LocalDSQL) -> None:
    clock = ManualClock()
    with extra_endpoint(dsql_local, clock=clock) as ep:
        conn = d2.connect(ep.url(), credentials=ep.credentials)
        assert d2.unusable(conn) is None
        age_out(ep, clock)
        wait_closed_by_server(conn.fileno())
        assert d2.unusable(conn) in ("closed by the server", "ended by the server")
        conn.close()
        assert d2.unusable(conn) == "closed"
