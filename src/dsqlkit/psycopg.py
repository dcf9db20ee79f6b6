"""psycopg 3: IAM-authenticated connections and psycopg_pool pools for Aurora DSQL.

>>> conn = dsqlkit.psycopg.connect("postgres://admin@<id>.dsql.us-east-1.on.aws/postgres")
>>> with dsqlkit.psycopg.create_pool(url, max_size=10) as pool:      # sync
...     with pool.connection() as conn: conn.execute("SELECT 1")
>>> async with dsqlkit.psycopg.create_async_pool(url) as pool:        # async
...     async with pool.connection() as conn: await conn.execute("SELECT 1")

Every new connection gets the current token of the pool's :class:`TokenProvider` (a
``kwargs`` callable, so psycopg_pool asks for fresh parameters per connection); the provider
re-mints in the background (a thread, or a task for async pools) until the pool closes.
Pools default to ``max_lifetime`` 55 min (DSQL closes connections at 60) and ``max_idle``
10 min, and check each connection at checkout without a round trip: one the server closed
(or that outlived ``max_lifetime`` in the pool) is replaced before the caller sees it.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from dsqlkit._drivers import (
    MAX_IDLE,
    MAX_LIFETIME,
    authentication_error,
    check_lifetime,
    refusal_hint,
)
from dsqlkit._log import get_logger
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig, resolve_config, split_kwargs
from dsqlkit.errors import ConfigError

logger = get_logger(__name__)

_CONNECT_KEYS = frozenset({
    "autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context",
})
_libpq_version = pq.version()

try:
    from psycopg_pool import __version__ as _pool_version
except ImportError:  # pragma: no cover
    _pool_version = "0"
if tuple(int(p) for p in _pool_version.split(".")[:2] if p.isdigit()) < (3, 3):
    raise ImportError(
        f"dsqlkit.psycopg needs psycopg-pool >= 3.3 (for per-connection tokens), found "
        f"{_pool_version}: pip install -U psycopg-pool"
    )


def _prepare(
    conninfo: str | DsqlConfig, params: dict[str, Any], token_provider: TokenProvider | None,
    *, shared: bool = True,
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any]]:
    config_params, driver = split_kwargs(params, _CONNECT_KEYS)
    config = resolve_config(conninfo, config_params)
    # One-off connections share a process-wide cached token; a pool gets its own provider,
    # whose background refresh lives and dies with the pool.
    provider = token_provider or (
        TokenProvider.shared(config) if shared else TokenProvider.from_config(config)
    )
    return config, provider, driver


def _connect_params(config: DsqlConfig) -> dict[str, Any]:
    return config.libpq_params(None, libpq_version=_libpq_version)


def _refused(
    exc: BaseException, config: DsqlConfig, provider: TokenProvider
) -> BaseException:
    """A refused token as :class:`AuthenticationError`; any other error unchanged."""
    if not isinstance(exc, psycopg.OperationalError):
        return exc
    hint = refusal_hint(str(exc))
    if hint is None:
        return exc
    return authentication_error(config, provider, hint, exc)


def connect(
    conninfo: str | DsqlConfig = "",
    *,
    connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> psycopg.Connection[Any]:
    """Open one connection with a freshly minted token.

    ``params`` are connection parameters (``region``, ``profile``, ``token_duration_secs``,
    ``credentials_provider``, libpq parameters) and psycopg's ``autocommit``,
    ``prepare_threshold``, ``row_factory``, ``cursor_factory``, ``context``.
    """
    config, provider, driver = _prepare(conninfo, params, token_provider)
    kwargs = _connect_params(config)
    kwargs["password"] = provider.token()
    try:
        return connection_class.connect(**kwargs, **driver)
    except psycopg.OperationalError as exc:
        error = _refused(exc, config, provider)
        if error is exc:
            raise
        raise error from exc


async def connect_async(
    conninfo: str | DsqlConfig = "",
    *,
    connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> psycopg.AsyncConnection[Any]:
    """:func:`connect` for asyncio: returns a ``psycopg.AsyncConnection``."""
    config, provider, driver = _prepare(conninfo, params, token_provider)
    kwargs = _connect_params(config)
    kwargs["password"] = await provider.atoken()
    try:
        return await connection_class.connect(**kwargs, **driver)
    except psycopg.OperationalError as exc:
        error = _refused(exc, config, provider)
        if error is exc:
            raise
        raise error from exc


# -- checkout checks (shared by the sync and async pools) ----------------------------------

# Connections whose server announced, while they sat idle, that it is ending the session.
_ENDED: weakref.WeakSet[psycopg.BaseConnection[Any]] = weakref.WeakSet()


def _watch(conn: psycopg.BaseConnection[Any]) -> None:
    """Remember when the server sends a FATAL error to an idle connection (DSQL's 60-minute
    cut, a restart): libpq delivers it as a notice before it sees the socket close."""
    ref = weakref.ref(conn)

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized in ("FATAL", "PANIC"):
            c = ref()
            if c is not None:
                _ENDED.add(c)

    conn.add_notice_handler(on_notice)


def unusable(conn: psycopg.BaseConnection[Any], now: float | None = None) -> str | None:
    """Why a pooled connection must not be handed out, or None. No round trip: reads what
    the server may already have sent (an EOF, a FATAL) without blocking."""
    if conn.closed or conn.broken:
        return "closed"
    expire_at = getattr(conn, "_expire_at", None)  # psycopg_pool's, set at connect
    if isinstance(expire_at, float) and expire_at <= (time.monotonic() if now is None else now):
        return "max_lifetime reached"
    pgconn = conn.pgconn
    try:
        pgconn.consume_input()
        pgconn.is_busy()  # parses what arrived, e.g. a FATAL notice
    except psycopg.OperationalError:
        return "closed by the server"
    if pgconn.status != pq.ConnStatus.OK:
        return "closed by the server"
    if conn in _ENDED:
        return "ended by the server"
    return None


class _PoolMixin:
    """The parts of a DSQL pool that do not depend on sync vs async."""

    config: DsqlConfig
    token_provider: TokenProvider

    def _init_dsql(self, config: DsqlConfig, provider: TokenProvider,
                   driver_kwargs: dict[str, Any]) -> None:
        self.config = config
        self.token_provider = provider
        self._static = {**_connect_params(config), **driver_kwargs}

    def _refused_or(self, error: BaseException) -> BaseException:
        return _refused(error, self.config, self.token_provider)


class DsqlConnectionPool(_PoolMixin, ConnectionPool[psycopg.Connection[Any]]):
    """A ``psycopg_pool.ConnectionPool`` whose connections authenticate with IAM tokens."""

    def __init__(self, config: DsqlConfig, token_provider: TokenProvider,
                 driver_kwargs: dict[str, Any], **pool_kwargs: Any) -> None:
        self._init_dsql(config, token_provider, driver_kwargs)
        user_configure = pool_kwargs.pop("configure", None)

        def configure(conn: psycopg.Connection[Any]) -> None:
            _watch(conn)
            if user_configure is not None:
                user_configure(conn)

        super().__init__(
            kwargs=self._kwargs, configure=configure, open=False, **pool_kwargs
        )

    def _kwargs(self) -> dict[str, Any]:
        return {**self._static, "password": self.token_provider.token()}

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start refreshing tokens and open the pool; ``wait`` fails fast on the first
        connection error that a direct attempt confirms (e.g. a refused token)."""
        self.token_provider.start()
        try:
            super().open(wait=False)
            if wait:
                self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        errors_seen = 0
        while True:
            stats = self.get_stats()
            if stats.get("pool_available", 0) >= self.min_size:
                return
            if stats.get("connections_errors", 0) > errors_seen:
                errors_seen = stats["connections_errors"]
                self._probe()
            if time.monotonic() >= deadline:
                raise PoolTimeout(
                    f"the pool opened fewer than {self.min_size} connections in {timeout} s"
                )
            time.sleep(0.002)

    def _probe(self) -> None:
        # A connection attempt failed in a worker: reproduce it here to raise its error.
        try:
            conn = self.connection_class.connect(**self._kwargs())
        except Exception as exc:
            error = self._refused_or(exc)
            if error is exc:
                raise
            raise error from exc
        conn.close()

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = super().getconn(max(0.0, deadline - time.monotonic()))
            reason = unusable(conn)
            if reason is None:
                return conn
            logger.debug("replacing a pooled connection: %s", reason)
            if reason != "max_lifetime reached":
                conn.close()
            self.putconn(conn)

    def close(self, timeout: float = 5.0) -> None:
        try:
            super().close(timeout)
        finally:
            self.token_provider.stop()


class DsqlAsyncConnectionPool(_PoolMixin, AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """An ``AsyncConnectionPool`` whose connections authenticate with IAM tokens."""

    def __init__(self, config: DsqlConfig, token_provider: TokenProvider,
                 driver_kwargs: dict[str, Any], **pool_kwargs: Any) -> None:
        self._init_dsql(config, token_provider, driver_kwargs)
        user_configure = pool_kwargs.pop("configure", None)

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            _watch(conn)
            if user_configure is not None:
                await user_configure(conn)

        super().__init__(
            kwargs=self._kwargs, configure=configure, open=False, **pool_kwargs
        )

    async def _kwargs(self) -> dict[str, Any]:
        return {**self._static, "password": await self.token_provider.atoken()}

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        await self.token_provider.start_async()
        try:
            await super().open(wait=False)
            if wait:
                await self._wait_ready(timeout)
        except BaseException:
            await self.close()
            raise

    async def _wait_ready(self, timeout: float) -> None:
        import asyncio

        deadline = time.monotonic() + timeout
        errors_seen = 0
        while True:
            stats = self.get_stats()
            if stats.get("pool_available", 0) >= self.min_size:
                return
            if stats.get("connections_errors", 0) > errors_seen:
                errors_seen = stats["connections_errors"]
                try:
                    conn = await self.connection_class.connect(**await self._kwargs())
                except Exception as exc:
                    error = self._refused_or(exc)
                    if error is exc:
                        raise
                    raise error from exc
                await conn.close()
            if time.monotonic() >= deadline:
                raise PoolTimeout(
                    f"the pool opened fewer than {self.min_size} connections in {timeout} s"
                )
            await asyncio.sleep(0.002)

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = await super().getconn(max(0.0, deadline - time.monotonic()))
            reason = unusable(conn)
            if reason is None:
                return conn
            logger.debug("replacing a pooled connection: %s", reason)
            if reason != "max_lifetime reached":
                await conn.close()
            await self.putconn(conn)

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await super().close(timeout)
        finally:
            await self.token_provider.stop_async()


_POOL_KEYS = frozenset({
    "min_size", "max_size", "name", "timeout", "max_waiting", "max_idle", "reconnect_timeout",
    "reconnect_failed", "num_workers", "configure", "check", "reset", "close_returns",
})


def _pool_args(
    conninfo: str | DsqlConfig, params: dict[str, Any], kwargs: dict[str, Any] | None,
    token_provider: TokenProvider | None, max_lifetime: float,
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any], dict[str, Any]]:
    pool_kwargs = {k: params.pop(k) for k in list(params) if k in _POOL_KEYS}
    pool_kwargs.setdefault("max_idle", MAX_IDLE)
    pool_kwargs["max_lifetime"] = check_lifetime(max_lifetime)
    config, provider, driver = _prepare(conninfo, params, token_provider, shared=False)
    driver.update(kwargs or {})
    for key in ("password", "host", "user", "dbname"):
        if key in driver:
            raise ConfigError(f"pass {key} in the connection string, not in kwargs=")
    return config, provider, driver, pool_kwargs


def create_pool(
    conninfo: str | DsqlConfig = "",
    *,
    open: bool = True,
    wait: bool = True,
    open_timeout: float = 30.0,
    max_lifetime: float = MAX_LIFETIME,
    kwargs: dict[str, Any] | None = None,
    connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> DsqlConnectionPool:
    """A psycopg_pool ``ConnectionPool`` for DSQL, opened (and, with ``wait``, filled to
    ``min_size``) unless ``open=False``.

    ``params`` mixes connection parameters (as for :func:`connect`) and psycopg_pool's
    options (``min_size``, ``max_size``, ``timeout``, ``max_idle``, ``configure``,
    ``check``, ``reset``, ...); ``kwargs`` are psycopg connect options such as
    ``autocommit``. ``max_lifetime`` defaults to 55 minutes.
    """
    config, provider, driver, pool_kwargs = _pool_args(
        conninfo, params, kwargs, token_provider, max_lifetime
    )
    pool = DsqlConnectionPool(
        config, provider, driver, connection_class=connection_class, **pool_kwargs
    )
    if open:
        pool.open(wait=wait, timeout=open_timeout)
    return pool


def create_async_pool(
    conninfo: str | DsqlConfig = "",
    *,
    max_lifetime: float = MAX_LIFETIME,
    kwargs: dict[str, Any] | None = None,
    connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> DsqlAsyncConnectionPool:
    """An unopened ``AsyncConnectionPool`` for DSQL: use ``async with`` or ``await
    pool.open(wait=True)``. Arguments as for :func:`create_pool`."""
    config, provider, driver, pool_kwargs = _pool_args(
        conninfo, params, kwargs, token_provider, max_lifetime
    )
    return DsqlAsyncConnectionPool(
        config, provider, driver, connection_class=connection_class, **pool_kwargs
    )


__all__ = [
    "DsqlAsyncConnectionPool",
    "DsqlConnectionPool",
    "connect",
    "connect_async",
    "create_async_pool",
    "create_pool",
    "unusable",
]
