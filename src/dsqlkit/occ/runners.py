"""Transaction runners: own BEGIN/COMMIT/ROLLBACK and re-run the whole transaction on conflict.

DSQL reports a lost conflict at COMMIT; plain PostgreSQL reports it at the statement that
touches a row changed since the transaction's snapshot. A runner that opens and closes the
transaction itself covers both, which a retry loop around a single statement cannot.

Each supported target gets a small context manager that opens a transaction and yields the
object the callback works with; nothing else differs between drivers. Drivers are recognised
through ``sys.modules``: if a driver was never imported, no object of it can exist, so dsqlkit
never imports asyncpg, psycopg2 or SQLAlchemy itself.

Pools hand out a fresh connection per attempt, so a connection that broke during one attempt
is not reused by the next. A single connection is reused, and must have no transaction open:
retrying needs the whole transaction, and nesting would silently become a SAVEPOINT, which
DSQL does not support.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, TypeVar

from dsqlkit._log import get_logger
from dsqlkit.errors import DsqlError
from dsqlkit.occ.metrics import OCCMetrics
from dsqlkit.occ.policy import OCCRetryConfig, RandomSource
from dsqlkit.occ.retry import retry_on_occ, retry_on_occ_async

__all__ = ["run_transaction", "run_transaction_async"]

logger = get_logger(__name__)

T = TypeVar("T")

_SUPPORTED_SYNC = (
    "psycopg.Connection, psycopg_pool.ConnectionPool, psycopg2 connection, a psycopg2 pool "
    "(getconn/putconn), sqlalchemy Engine or Connection, sqlalchemy.orm.sessionmaker"
)
_SUPPORTED_ASYNC = (
    "psycopg.AsyncConnection, psycopg_pool.AsyncConnectionPool, asyncpg Connection or Pool, "
    "sqlalchemy AsyncEngine or AsyncConnection, sqlalchemy async_sessionmaker"
)


def _cls(module: str, name: str) -> type | None:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def _is(obj: object, module: str, name: str) -> bool:
    cls = _cls(module, name)
    return cls is not None and isinstance(obj, cls)


def _busy(what: str, state: str) -> DsqlError:
    return DsqlError(
        f"run_transaction needs {what} with no transaction open (it is {state}): commit or "
        f"roll back first, or pass the pool or engine so each attempt gets its own connection"
    )


# --------------------------------------------------------------------------------------------
# psycopg 3


def _check_psycopg_idle(conn: Any) -> None:
    status = conn.info.transaction_status
    if status.name != "IDLE":
        raise _busy("a psycopg connection", status.name)


@contextlib.contextmanager
def _psycopg_conn(conn: Any) -> Iterator[Any]:
    _check_psycopg_idle(conn)
    # transaction() sends BEGIN whether or not the connection is in autocommit mode.
    with conn.transaction():
        yield conn


@contextlib.contextmanager
def _psycopg_pool(pool: Any) -> Iterator[Any]:
    with pool.connection() as conn, _psycopg_conn(conn):
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_conn(conn: Any) -> AsyncIterator[Any]:
    _check_psycopg_idle(conn)
    async with conn.transaction():
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_pool(pool: Any) -> AsyncIterator[Any]:
    async with pool.connection() as conn, _psycopg_async_conn(conn):
        yield conn


# --------------------------------------------------------------------------------------------
# psycopg2


@contextlib.contextmanager
def _psycopg2_conn(conn: Any) -> Iterator[Any]:
    idle = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE
    status = conn.get_transaction_status()
    if status != idle:
        raise _busy("a psycopg2 connection", f"in transaction status {status}")
    # An autocommit connection would commit every statement on its own; the transaction has to
    # be one unit, so autocommit is switched off for its duration (legal only while idle).
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        try:
            yield conn
        except BaseException:
            _quiet(conn.rollback, "psycopg2 rollback")
            raise
        conn.commit()
    finally:
        if not conn.closed and conn.get_transaction_status() != idle:
            _quiet(conn.rollback, "psycopg2 rollback")
        if autocommit and not conn.closed:
            conn.autocommit = True


@contextlib.contextmanager
def _psycopg2_pool(pool: Any) -> Iterator[Any]:
    conn = pool.getconn()
    try:
        with _psycopg2_conn(conn):
            yield conn
    finally:
        # A connection that died mid-attempt must not go back into rotation.
        pool.putconn(conn, close=bool(conn.closed))


def _quiet(action: Callable[[], object], what: str) -> None:
    # Used while another error propagates; a failing rollback (the connection is often already
    # broken) must not replace that error.
    try:
        action()
    except Exception as exc:
        logger.debug("%s failed: %s", what, type(exc).__name__)


# --------------------------------------------------------------------------------------------
# asyncpg


@contextlib.asynccontextmanager
async def _asyncpg_conn(conn: Any) -> AsyncIterator[Any]:
    if conn.is_in_transaction():
        raise _busy("an asyncpg connection", "in a transaction")
    async with conn.transaction():
        yield conn


@contextlib.asynccontextmanager
async def _asyncpg_pool(pool: Any) -> AsyncIterator[Any]:
    async with pool.acquire() as conn, _asyncpg_conn(conn):
        yield conn


# --------------------------------------------------------------------------------------------
# SQLAlchemy
#
# An engine configured with isolation_level="AUTOCOMMIT" (the AWS DSQL samples do this), or one
# whose creator returns autocommit DBAPI connections, makes ``begin()`` a no-op at the database:
# every statement would commit on its own and a retry would re-apply half a transaction. For
# such a connection we ask for REPEATABLE READ, which turns DBAPI autocommit off for this
# checkout only (SQLAlchemy restores the engine's level when the connection goes back to the
# pool) and which DSQL accepts because it is the isolation level it always runs at.


def _dbapi_autocommit(dbapi_connection: Any) -> bool:
    return bool(getattr(dbapi_connection, "autocommit", False))


def _check_sqla_idle(conn: Any) -> None:
    if conn.in_transaction():
        raise _busy("a SQLAlchemy connection", "in a transaction")


@contextlib.contextmanager
def _sqla_conn(conn: Any) -> Iterator[Any]:
    _check_sqla_idle(conn)
    if _dbapi_autocommit(conn.connection.dbapi_connection):
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn.begin():
        yield conn


@contextlib.contextmanager
def _sqla_engine(engine: Any) -> Iterator[Any]:
    with engine.connect() as conn, _sqla_conn(conn):
        yield conn


@contextlib.contextmanager
def _sqla_sessionmaker(maker: Any) -> Iterator[Any]:
    # The session joins a transaction we opened on a prepared connection (SQLAlchemy's
    # "join an external transaction" recipe), so sessions get the same autocommit handling as
    # engines, and COMMIT happens in exactly one place.
    engine = maker.kw.get("bind")
    if not _is(engine, "sqlalchemy.engine", "Engine"):
        raise TypeError(
            "run_transaction needs a sessionmaker bound to an Engine: sessionmaker(bind=engine)"
        )
    with _sqla_engine(engine) as conn, maker(bind=conn) as session:
        yield session
        session.flush()


@contextlib.asynccontextmanager
async def _sqla_async_conn(conn: Any) -> AsyncIterator[Any]:
    _check_sqla_idle(conn)
    raw = await conn.get_raw_connection()
    if _dbapi_autocommit(raw.dbapi_connection):
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
    async with conn.begin():
        yield conn


@contextlib.asynccontextmanager
async def _sqla_async_engine(engine: Any) -> AsyncIterator[Any]:
    async with engine.connect() as conn, _sqla_async_conn(conn):
        yield conn


@contextlib.asynccontextmanager
async def _sqla_async_sessionmaker(maker: Any) -> AsyncIterator[Any]:
    engine = maker.kw.get("bind")
    if not _is(engine, "sqlalchemy.ext.asyncio", "AsyncEngine"):
        raise TypeError(
            "run_transaction_async needs an async_sessionmaker bound to an AsyncEngine: "
            "async_sessionmaker(bind=engine)"
        )
    async with _sqla_async_engine(engine) as conn, maker(bind=conn) as session:
        yield session
        await session.flush()


# --------------------------------------------------------------------------------------------
# dispatch

_SyncOpener = Callable[[Any], AbstractContextManager[Any]]
_AsyncOpener = Callable[[Any], AbstractAsyncContextManager[Any]]

# (module, class name, opener). Order matters only where classes could overlap; they do not.
_SYNC_TARGETS: tuple[tuple[str, str, _SyncOpener], ...] = (
    ("psycopg", "Connection", _psycopg_conn),
    ("psycopg_pool", "ConnectionPool", _psycopg_pool),
    ("psycopg2.extensions", "connection", _psycopg2_conn),
    ("psycopg2.pool", "AbstractConnectionPool", _psycopg2_pool),
    ("sqlalchemy.engine", "Engine", _sqla_engine),
    ("sqlalchemy.engine", "Connection", _sqla_conn),
    ("sqlalchemy.orm", "sessionmaker", _sqla_sessionmaker),
)
_ASYNC_TARGETS: tuple[tuple[str, str, _AsyncOpener], ...] = (
    ("psycopg", "AsyncConnection", _psycopg_async_conn),
    ("psycopg_pool", "AsyncConnectionPool", _psycopg_async_pool),
    ("asyncpg.connection", "Connection", _asyncpg_conn),
    ("asyncpg.pool", "PoolConnectionProxy", _asyncpg_conn),
    ("asyncpg.pool", "Pool", _asyncpg_pool),
    ("sqlalchemy.ext.asyncio", "AsyncEngine", _sqla_async_engine),
    ("sqlalchemy.ext.asyncio", "AsyncConnection", _sqla_async_conn),
    ("sqlalchemy.ext.asyncio", "async_sessionmaker", _sqla_async_sessionmaker),
)


def _find(target: object, table: tuple[tuple[str, str, Any], ...]) -> Any:
    for module, name, opener in table:
        if _is(target, module, name):
            return opener
    return None


def _sync_opener(target: object) -> _SyncOpener:
    opener: _SyncOpener | None = _find(target, _SYNC_TARGETS)
    if opener is not None:
        return opener
    if _find(target, _ASYNC_TARGETS) is not None:
        raise TypeError(
            f"{type(target).__name__} is asynchronous: use `await run_transaction_async(...)`"
        )
    # Any other pool with psycopg2's interface (a subclass or a look-alike).
    if callable(getattr(target, "getconn", None)) and callable(getattr(target, "putconn", None)):
        return _psycopg2_pool
    raise TypeError(
        f"run_transaction does not know how to open a transaction on "
        f"{type(target).__module__}.{type(target).__qualname__}; supported: {_SUPPORTED_SYNC}"
    )


def _async_opener(target: object) -> _AsyncOpener:
    opener: _AsyncOpener | None = _find(target, _ASYNC_TARGETS)
    if opener is not None:
        return opener
    if _find(target, _SYNC_TARGETS) is not None:
        raise TypeError(
            f"{type(target).__name__} is synchronous: use `run_transaction(...)` (no await)"
        )
    raise TypeError(
        f"run_transaction_async does not know how to open a transaction on "
        f"{type(target).__module__}.{type(target).__qualname__}; supported: {_SUPPORTED_ASYNC}"
    )


def run_transaction(
    target: Any,
    fn: Callable[[Any], T],
    config: OCCRetryConfig | None = None,
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Run ``fn(conn)`` inside BEGIN … COMMIT on ``target``, re-running it on OCC conflicts.

    ``target`` is a pool, engine or sessionmaker (a fresh connection per attempt) or a single
    idle connection (reused). ``fn`` receives the driver's connection (a ``Session`` for a
    sessionmaker) and must not commit or roll back itself. Conflicts raised by a statement or
    by COMMIT are both retried; errors roll the transaction back before they propagate.
    """
    opener = _sync_opener(target)

    def attempt() -> T:
        with opener(target) as conn:
            return fn(conn)

    return retry_on_occ(config, attempt, metrics=metrics, rng=rng, clock=clock, sleep=sleep)


async def run_transaction_async(
    target: Any,
    fn: Callable[[Any], Awaitable[T]],
    config: OCCRetryConfig | None = None,
    *,
    metrics: OCCMetrics | None = None,
    rng: RandomSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> T:
    """:func:`run_transaction` for asyncio drivers: ``await fn(conn)`` inside the transaction."""
    opener = _async_opener(target)

    async def attempt() -> T:
        async with opener(target) as conn:
            return await fn(conn)

    return await retry_on_occ_async(
        config, attempt, metrics=metrics, rng=rng, clock=clock, sleep=sleep
    )
