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
from collections.abc import Callable
from typing import Any, NoReturn

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the machine's libpq
    raise ImportError(
        f"dsqlkit.psycopg needs psycopg and a libpq: pip install 'dsqlkit[binary]' for "
        f"psycopg's wheel with its own libpq, or install the system's libpq ({exc})"
    ) from exc
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from dsqlkit import _drivers
from dsqlkit._log import get_logger
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig
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


def _connect_params(config: DsqlConfig) -> dict[str, Any]:
    return config.libpq_params(None, libpq_version=_libpq_version)


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
    config, provider, driver = _drivers.prepare(conninfo, params, token_provider, _CONNECT_KEYS)
    kwargs = _connect_params(config)
    kwargs["password"] = provider.token()
    try:
        return connection_class.connect(**kwargs, **driver)
    except psycopg.OperationalError as exc:
        _drivers.raise_refused(exc, config, provider)


async def connect_async(
    conninfo: str | DsqlConfig = "",
    *,
    connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> psycopg.AsyncConnection[Any]:
    """:func:`connect` for asyncio: returns a ``psycopg.AsyncConnection``."""
    config, provider, driver = _drivers.prepare(conninfo, params, token_provider, _CONNECT_KEYS)
    kwargs = _connect_params(config)
    kwargs["password"] = await provider.atoken()
    try:
        return await connection_class.connect(**kwargs, **driver)
    except psycopg.OperationalError as exc:
        _drivers.raise_refused(exc, config, provider)


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


def unusable(conn: psycopg.BaseConnection[Any]) -> str | None:
    """Why a connection must not be handed out, or None. No round trip: reads what the
    server may already have sent (an EOF, a FATAL) without blocking."""
    if conn.closed or conn.broken:
        return "closed"
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


class _Checkout:
    """What a DSQL pool does to its connections, for the sync and the async pool alike:
    :meth:`configure` (psycopg_pool's ``configure`` hook, every new connection) notes when it
    retires and watches for the server ending it; :meth:`passes` (every checkout) refuses
    one that is unusable or past its lifetime, measured on ``clock``.

    The check runs in the pools' ``getconn`` rather than as psycopg_pool's ``check`` hook:
    psycopg_pool backs off (1 s, then 2 s, ...) between consecutive failed checks of one
    checkout, and connections retire together (a pool idle for a night finds every one past
    its lifetime) or die together (a server restart).
    """

    def __init__(self, max_lifetime: float, clock: Callable[[], float]) -> None:
        self.max_lifetime = max_lifetime
        self.clock = clock
        self._retire_at: weakref.WeakKeyDictionary[psycopg.BaseConnection[Any], float] = (
            weakref.WeakKeyDictionary())

    def configure(self, conn: psycopg.BaseConnection[Any]) -> None:
        _watch(conn)
        self._retire_at[conn] = _drivers.expires_at(self.clock(), self.max_lifetime)

    def passes(self, conn: psycopg.BaseConnection[Any]) -> bool:
        reason = unusable(conn)
        if reason is None and self._retire_at.get(conn, float("inf")) <= self.clock():
            reason = "max_lifetime reached"
        if reason is None:
            return True
        logger.debug("replacing a pooled connection: %s", reason)
        # Closed here, so that psycopg_pool discards it and opens a replacement when it is
        # returned (libpq's finish(): the same call for sync and async connections).
        conn.pgconn.finish()
        return False


class _DsqlPool:
    """What the sync and the async DSQL pools share; they differ only where one awaits."""

    config: DsqlConfig
    token_provider: TokenProvider
    timeout: float  # psycopg_pool's

    def __init__(self, config: DsqlConfig, token_provider: TokenProvider,
                 driver_kwargs: dict[str, Any], **pool_kwargs: Any) -> None:
        self.config = config
        self.token_provider = token_provider
        self._static = {**_connect_params(config), **driver_kwargs}
        self._checkout = _Checkout(pool_kwargs["max_lifetime"], pool_kwargs.pop("clock"))
        self._user_configure = pool_kwargs.pop("configure", None)
        # The psycopg_pool class that follows in the MRO; each subclass provides the
        # _kwargs and _configure hooks in its own colour.
        super().__init__(  # type: ignore[call-arg]
            kwargs=self._kwargs,  # type: ignore[attr-defined]
            configure=self._configure,  # type: ignore[attr-defined]
            open=False, **pool_kwargs)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _probe_failed(self, exc: psycopg.OperationalError) -> NoReturn:
        _drivers.raise_refused(exc, self.config, self.token_provider)


class DsqlConnectionPool(_DsqlPool, ConnectionPool[psycopg.Connection[Any]]):
    """A ``psycopg_pool.ConnectionPool`` whose connections authenticate with IAM tokens."""

    def _kwargs(self) -> dict[str, Any]:
        return {**self._static, "password": self.token_provider.token()}

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        self._checkout.configure(conn)
        if self._user_configure is not None:
            self._user_configure(conn)

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        deadline = self._deadline(timeout)
        while True:
            conn = super().getconn(max(0.0, deadline - time.monotonic()))
            if self._checkout.passes(conn):
                return conn
            self.putconn(conn)

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start refreshing tokens and open the pool. With ``wait``, one connection is
        opened directly first, so that a refused token or unreachable endpoint raises its
        own error at once (psycopg_pool's workers would retry it for ``reconnect_timeout``)."""
        self.token_provider.start()
        try:
            super().open(wait=False)
            if wait and self.min_size:
                try:
                    self.connection_class.connect(**self._kwargs()).close()
                except psycopg.OperationalError as exc:
                    self._probe_failed(exc)
            if wait:
                self.wait(timeout)
        except BaseException:
            self.close()
            raise

    def close(self, timeout: float = 5.0) -> None:
        try:
            super().close(timeout)
        finally:
            self.token_provider.stop()


class DsqlAsyncConnectionPool(_DsqlPool, AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """An ``AsyncConnectionPool`` whose connections authenticate with IAM tokens."""

    async def _kwargs(self) -> dict[str, Any]:
        return {**self._static, "password": await self.token_provider.atoken()}

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._checkout.configure(conn)
        if self._user_configure is not None:
            await self._user_configure(conn)

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        deadline = self._deadline(timeout)
        while True:
            conn = await super().getconn(max(0.0, deadline - time.monotonic()))
            if self._checkout.passes(conn):
                return conn
            await self.putconn(conn)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """As :meth:`DsqlConnectionPool.open`."""
        await self.token_provider.start_async()
        try:
            await super().open(wait=False)
            if wait and self.min_size:
                try:
                    await (await self.connection_class.connect(**await self._kwargs())).close()
                except psycopg.OperationalError as exc:
                    self._probe_failed(exc)
            if wait:
                await self.wait(timeout)
        except BaseException:
            await self.close()
            raise

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
    token_provider: TokenProvider | None, max_lifetime: float, clock: Callable[[], float],
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any], dict[str, Any]]:
    pool_kwargs = {k: params.pop(k) for k in list(params) if k in _POOL_KEYS}
    pool_kwargs.setdefault("max_idle", _drivers.MAX_IDLE)
    pool_kwargs["max_lifetime"] = _drivers.check_lifetime(max_lifetime)
    pool_kwargs["clock"] = clock
    config, provider, driver = _drivers.prepare(conninfo, params, token_provider, _CONNECT_KEYS,
                                       shared=False)
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
    max_lifetime: float = _drivers.MAX_LIFETIME,
    kwargs: dict[str, Any] | None = None,
    connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
    token_provider: TokenProvider | None = None,
    clock: Callable[[], float] = time.monotonic,
    **params: Any,
) -> DsqlConnectionPool:
    """A psycopg_pool ``ConnectionPool`` for DSQL, opened (and, with ``wait``, filled to
    ``min_size``) unless ``open=False``.

    ``params`` mixes connection parameters (as for :func:`connect`) and psycopg_pool's
    options (``min_size``, ``max_size``, ``timeout``, ``max_idle``, ``configure``,
    ``check``, ``reset``, ...); ``kwargs`` are psycopg connect options such as
    ``autocommit``. ``max_lifetime`` defaults to 55 minutes; checkouts measure it on
    ``clock`` (seconds; tests inject one).
    """
    config, provider, driver, pool_kwargs = _pool_args(
        conninfo, params, kwargs, token_provider, max_lifetime, clock
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
    max_lifetime: float = _drivers.MAX_LIFETIME,
    kwargs: dict[str, Any] | None = None,
    connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
    token_provider: TokenProvider | None = None,
    clock: Callable[[], float] = time.monotonic,
    **params: Any,
) -> DsqlAsyncConnectionPool:
    """An unopened ``AsyncConnectionPool`` for DSQL: use ``async with`` or ``await
    pool.open(wait=True)``. Arguments as for :func:`create_pool`."""
    config, provider, driver, pool_kwargs = _pool_args(
        conninfo, params, kwargs, token_provider, max_lifetime, clock
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
