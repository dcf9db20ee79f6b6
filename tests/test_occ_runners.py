"""Runner dispatch and optional-driver imports, without a database."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import psycopg2.pool
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from dsqlkit.occ import OCCMetrics, run_transaction, run_transaction_async


def test_dsqlkit_occ_imports_without_the_optional_drivers() -> None:
    # None in sys.modules makes any import of these modules fail, as if not installed.
    script = textwrap.dedent(
        """
        import sys
        for name in ("asyncpg", "psycopg2", "sqlalchemy", "greenlet"):
            sys.modules[name] = None
        import dsqlkit.occ
        from dsqlkit.occ import run_transaction
        loaded = [m for m in ("asyncpg", "psycopg2", "sqlalchemy") if sys.modules.get(m)]
        assert not loaded, loaded
        try:
            run_transaction(object(), lambda conn: None)
        except TypeError as exc:
            print("ok:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("ok: run_transaction does not know how to open a transaction")


def test_unknown_targets_are_refused_with_the_supported_list() -> None:
    with pytest.raises(TypeError, match=r"builtins\.dict.*supported: psycopg\.Connection"):
        run_transaction({}, lambda conn: None)


async def test_unknown_async_targets_are_refused() -> None:
    with pytest.raises(TypeError, match=r"supported: psycopg\.AsyncConnection"):
        await run_transaction_async("not a pool", lambda conn: conn)


def test_an_async_pool_in_the_sync_runner_says_what_to_use() -> None:
    pool = AsyncConnectionPool("host=unused", open=False)
    with pytest.raises(TypeError, match=r"asynchronous: use `await run_transaction_async"):
        run_transaction(pool, lambda conn: None)


async def test_a_sync_pool_in_the_async_runner_says_what_to_use() -> None:
    pool = ConnectionPool("host=unused", open=False)
    with pytest.raises(TypeError, match=r"synchronous: use `run_transaction\(...\)`"):
        await run_transaction_async(pool, lambda conn: conn)


class FakePsycopg2Connection:
    """Just enough of psycopg2's connection for the runner's bookkeeping."""

    def __init__(self) -> None:
        self.autocommit = True
        self.closed = 0
        self.in_tx = False
        self.log: list[str] = []

    def get_transaction_status(self) -> int:
        return 2 if self.in_tx else 0

    def commit(self) -> None:
        self.log.append(f"commit autocommit={self.autocommit}")
        self.in_tx = False

    def rollback(self) -> None:
        self.log.append("rollback")
        self.in_tx = False


class LookAlikePool:
    """A pool that is not psycopg2's but has its interface (getconn/putconn)."""

    def __init__(self) -> None:
        self.conn = FakePsycopg2Connection()
        self.returned: list[tuple[Any, bool]] = []

    def getconn(self) -> FakePsycopg2Connection:
        return self.conn

    def putconn(self, conn: Any, close: bool = False) -> None:
        self.returned.append((conn, close))


def test_a_getconn_putconn_pool_is_duck_typed() -> None:
    pool = LookAlikePool()

    def body(conn: FakePsycopg2Connection) -> str:
        conn.in_tx = True
        return "result"

    assert run_transaction(pool, body, metrics=OCCMetrics()) == "result"
    # autocommit was off for the transaction and restored afterwards; the connection went back.
    assert pool.conn.log == ["commit autocommit=False"]
    assert pool.conn.autocommit is True
    assert pool.returned == [(pool.conn, False)]


def test_a_real_psycopg2_pool_class_is_recognised() -> None:
    from dsqlkit.occ.runners import _psycopg2_pool, _sync_opener

    pool = psycopg2.pool.SimpleConnectionPool.__new__(psycopg2.pool.SimpleConnectionPool)
    assert _sync_opener(pool) is _psycopg2_pool
