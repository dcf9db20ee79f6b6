"""asyncpg: IAM-authenticated connections and pools for Aurora DSQL.

>>> conn = await dsqlkit.asyncpg.connect("postgres://admin@<id>.dsql.us-east-1.on.aws/postgres")
>>> async with dsqlkit.asyncpg.create_pool(url, max_size=10) as pool:
...     await pool.fetchval("SELECT 1")

TLS: a verifying ``SSLContext`` (``verify-full`` against the system trust store or
``sslrootcert``), ALPN ``postgresql``, and direct TLS (no SSLRequest round trip) where asyncpg
supports it. With ``hostaddr=`` the socket goes to that address while TLS still verifies,
and SNI still names, the ``host``.

asyncpg's pool has no maximum connection lifetime; this one has (``max_lifetime``, default
55 min, DSQL closes connections at 60): a connection past it is closed at its next checkout
and replaced, transparently. Connections the server closed are replaced by asyncpg itself.
Every new connection gets the current token of the pool's :class:`TokenProvider`, refreshed
by an asyncio task until the pool closes.
"""

from __future__ import annotations

import inspect
import ssl
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

try:
    import asyncpg
    import asyncpg.pool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(f"dsqlkit.asyncpg needs asyncpg: pip install 'dsqlkit[asyncpg]' ({exc})"
                      ) from exc

from dsqlkit import _drivers
from dsqlkit._log import get_logger
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig
from dsqlkit.errors import ConfigError

logger = get_logger(__name__)

# asyncpg 0.30 added direct_tls= (TLS without the SSLRequest round trip).
_HAS_DIRECT_TLS = "direct_tls" in inspect.signature(asyncpg.connect).parameters
_CONNECT_KEYS = frozenset({
    "timeout", "statement_cache_size", "max_cached_statement_lifetime",
    "max_cacheable_statement_size", "command_timeout", "server_settings", "connection_class",
    "record_class", "loop",
})
# libpq parameters asyncpg has an equivalent for (see _connect_kwargs).
_SUPPORTED = frozenset({
    "hostaddr", "connect_timeout", "options", "sslcert", "sslkey", "sslpassword",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs",
    "krbsrvname", "gsslib", "fallback_application_name", "client_encoding",
})
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class _NamedSSLContext(ssl.SSLContext):
    """Verifies and sends SNI for ``server_name`` whatever address asyncpg dials."""

    server_name = ""

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: Any = None, session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name, session)

    def wrap_socket(self, sock: Any, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: Any = None, session: Any = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side, do_handshake_on_connect,
                                   suppress_ragged_eofs, self.server_name, session)


@lru_cache(maxsize=32)
def ssl_context(config: DsqlConfig) -> ssl.SSLContext | bool | str:
    """The ``ssl=`` argument for asyncpg (cached: loading a CA bundle takes milliseconds)."""
    mode = config.sslmode
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return mode
    hostaddr = config.param("hostaddr")
    ctx: ssl.SSLContext
    if hostaddr and hostaddr != config.host:
        named = _NamedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
        named.server_name = config.host
        ctx = named
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode in ("verify-ca", "verify-full"):
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
        root = config.resolved_sslrootcert()
        if root is not None:
            ctx.load_verify_locations(cafile=root)
        else:
            ctx.load_default_certs()
    else:  # require: encrypted, not verified (the user asked, and was warned)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    lo = config.param("ssl_min_protocol_version") or "TLSv1.2"
    hi = config.param("ssl_max_protocol_version")
    try:
        ctx.minimum_version = _TLS_VERSIONS[lo]
        if hi:
            ctx.maximum_version = _TLS_VERSIONS[hi]
    except KeyError as exc:
        raise ConfigError(
            f"invalid TLS protocol version {exc.args[0]!r}: use one of {', '.join(_TLS_VERSIONS)}"
        ) from None
    cert = config.param("sslcert")
    if cert:
        ctx.load_cert_chain(cert, config.param("sslkey"), config.param("sslpassword"))
    # PostgreSQL 17 servers (and DSQL) require ALPN on direct TLS connections.
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def _server_settings(config: DsqlConfig) -> dict[str, str]:
    settings = {"application_name": config.application_name}
    encoding = config.param("client_encoding")
    if encoding:
        settings["client_encoding"] = encoding
    options = config.param("options")
    if options:
        settings.update(parse_options(options))
    return settings


def parse_options(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value --name=value``) as server settings."""
    words: list[str] = []
    current: list[str] = []
    chars = iter(options)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(c)
    if current:
        words.append("".join(current))
    settings: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            setting, i = words[i + 1], i + 2
        elif word.startswith(("-c", "--")):
            setting, i = word[2:], i + 1
        else:
            raise ConfigError(
                f"cannot read options={options!r} for asyncpg: use -c name=value pairs"
            )
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ConfigError(f"options: expected name=value, got {setting!r}")
        settings[name.replace("-", "_")] = value
    return settings


def _connect_kwargs(config: DsqlConfig) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments for ``config``, without the password."""
    for key, _ in config.params:
        if key not in _SUPPORTED:
            raise ConfigError(
                f"asyncpg has no equivalent of the libpq parameter {key!r}: remove it, or use "
                "dsqlkit.psycopg"
            )
    kwargs: dict[str, Any] = {
        "host": config.param("hostaddr") or config.host,
        "port": config.port,
        "user": config.user,
        "database": config.database,
        "ssl": ssl_context(config),
        "server_settings": _server_settings(config),
    }
    negotiation = config.negotiation_for(_HAS_DIRECT_TLS)
    if negotiation is not None and _HAS_DIRECT_TLS:
        kwargs["direct_tls"] = negotiation == "direct"
    timeout = config.param("connect_timeout")
    if timeout:
        try:
            kwargs["timeout"] = max(float(timeout), 1.0)
        except ValueError:
            raise ConfigError(f"connect_timeout must be a number of seconds, not {timeout!r}")
    for key in ("target_session_attrs", "krbsrvname", "gsslib"):
        value = config.param(key)
        if value:
            kwargs[key] = value
    return kwargs


def _connect_args(
    conninfo: str | DsqlConfig, params: dict[str, Any], token_provider: TokenProvider | None,
    *, shared: bool = True,
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any]]:
    """The config, the token provider and this driver's connect() keyword arguments."""
    config, provider, driver = _drivers.prepare(conninfo, params, token_provider, _CONNECT_KEYS,
                                       shared=shared)
    kwargs = _connect_kwargs(config)
    extra_settings = driver.pop("server_settings", None)
    if extra_settings:
        kwargs["server_settings"] = {**kwargs["server_settings"], **extra_settings}
    kwargs.update(driver)
    return config, provider, kwargs


async def _open(config: DsqlConfig, provider: TokenProvider, kwargs: dict[str, Any]) -> Any:
    password = await provider.atoken()
    try:
        return await asyncpg.connect(password=password, **kwargs)
    except asyncpg.PostgresError as exc:
        # asyncpg keeps the server's HINT apart from the message.
        hint = getattr(exc, "hint", "") or ""
        _drivers.raise_refused(exc, config, provider, f"{exc} HINT: {hint}")


async def connect(
    conninfo: str | DsqlConfig = "",
    *,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> asyncpg.Connection:
    """Open one asyncpg connection with a freshly minted token.

    ``params`` are connection parameters (``region``, ``profile``, ``token_duration_secs``,
    ``credentials_provider``, libpq parameters) and asyncpg's own ``connect()`` options
    (``command_timeout``, ``statement_cache_size``, ``server_settings``, ...).
    """
    config, provider, kwargs = _connect_args(conninfo, params, token_provider)
    return await _open(config, provider, kwargs)


async def reset_session(conn: Any) -> None:
    """The pool's default ``reset``: ``RESET ALL``.

    asyncpg's own reset also runs ``pg_advisory_unlock_all()``, ``CLOSE ALL`` and
    ``UNLISTEN *``; DSQL has no advisory locks, cursors or LISTEN and refuses the whole
    statement, so every release would fail. Session settings are what a DSQL session can
    change, and ``RESET ALL`` restores them (open transactions are rolled back by asyncpg
    before this runs).
    """
    await conn.execute("RESET ALL")


class _Retired(Exception):
    """Raised by the pool's setup hook for a connection past its lifetime."""


class Connection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that knows when its pool should retire it."""

    __slots__ = ("_dsqlkit_expire_at",)


_MIXED: dict[type, type] = {}


def _connection_class(cls: type[asyncpg.Connection]) -> type[asyncpg.Connection]:
    if issubclass(cls, Connection):
        return cls
    mixed = _MIXED.get(cls)
    if mixed is None:
        mixed = _MIXED[cls] = type(f"Dsql{cls.__name__}", (cls,),
                                   {"__slots__": ("_dsqlkit_expire_at",)})
    return mixed


class _AcquireContext:
    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __await__(self) -> Any:
        return self._pool._acquire_current(self._timeout).__await__()

    async def __aenter__(self) -> Any:
        self._conn = await self._pool._acquire_current(self._timeout)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        await self._pool.release(conn)


class Pool(asyncpg.Pool):  # type: ignore[misc]
    """An ``asyncpg.Pool`` for DSQL: IAM tokens, a maximum connection lifetime."""

    def __init__(
        self,
        config: DsqlConfig,
        token_provider: TokenProvider,
        connect_kwargs: dict[str, Any],
        *,
        max_lifetime: float = _drivers.MAX_LIFETIME,
        setup: Any = None,
        connection_class: type[asyncpg.Connection] = Connection,
        clock: Callable[[], float] = time.monotonic,
        **pool_kwargs: Any,
    ) -> None:
        self.config = config
        self.token_provider = token_provider
        self.max_lifetime = _drivers.check_lifetime(max_lifetime)
        # Lifetimes are measured on this clock (tests inject one).
        self.clock = clock
        self._dsql_kwargs = connect_kwargs
        self._user_setup = setup
        # asyncpg.Pool wants these; asyncpg.create_pool's defaults.
        pool_kwargs.setdefault("min_size", 10)
        pool_kwargs.setdefault("max_size", 10)
        pool_kwargs.setdefault("max_queries", 50000)
        pool_kwargs.setdefault("max_inactive_connection_lifetime", _drivers.MAX_IDLE)
        pool_kwargs.setdefault("init", None)
        pool_kwargs.setdefault("reset", reset_session)
        pool_kwargs.setdefault("loop", None)
        pool_kwargs.setdefault("record_class", asyncpg.Record)
        super().__init__(
            connect=self._connect_one,
            setup=self._setup,
            connection_class=_connection_class(connection_class),
            **pool_kwargs,
        )

    async def _connect_one(self, *args: Any, **kwargs: Any) -> Any:
        await self.token_provider.start_async()
        conn = await _open(self.config, self.token_provider, {**self._dsql_kwargs, **kwargs})
        conn._dsqlkit_expire_at = _drivers.expires_at(self.clock(), self.max_lifetime)
        return conn

    async def _setup(self, proxy: Any) -> None:
        expire_at = getattr(proxy, "_dsqlkit_expire_at", None)
        if expire_at is not None and self.clock() >= expire_at:
            logger.debug("retiring a pooled connection at max_lifetime (%g s)",
                         self.max_lifetime)
            raise _Retired
        if self._user_setup is not None:
            await self._user_setup(proxy)

    async def _acquire_current(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().acquire(timeout=remaining)
            except _Retired:
                continue  # asyncpg closed it; the next attempt connects afresh

    def acquire(self, *, timeout: float | None = None) -> Any:
        return _AcquireContext(self, timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        # A connection past its lifetime is closed now rather than reset (a round trip
        # the server may cut) and parked in the pool until its next checkout.
        expire_at = getattr(connection, "_dsqlkit_expire_at", None)
        if expire_at is not None and self.clock() >= expire_at \
                and not connection.is_closed():
            logger.debug("retiring a pooled connection at max_lifetime (%g s)",
                         self.max_lifetime)
            try:
                await connection.close(timeout=timeout if timeout is not None else 5.0)
            except Exception:
                connection.terminate()
        await super().release(connection, timeout=timeout)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.token_provider.stop_async()

    def terminate(self) -> None:
        try:
            super().terminate()
        finally:
            self.token_provider.stop()


_POOL_KEYS = frozenset({
    "min_size", "max_size", "init_size", "max_queries", "max_inactive_connection_lifetime",
    "setup", "init", "reset", "record_class",
})


def create_pool(
    conninfo: str | DsqlConfig = "",
    *,
    max_lifetime: float = _drivers.MAX_LIFETIME,
    max_inactive_connection_lifetime: float = _drivers.MAX_IDLE,
    connection_class: type[asyncpg.Connection] = Connection,
    token_provider: TokenProvider | None = None,
    clock: Callable[[], float] = time.monotonic,
    **params: Any,
) -> Pool:
    """A DSQL pool, as ``asyncpg.create_pool``: ``await`` it or use ``async with``.

    ``params`` mixes connection parameters, asyncpg pool options (``min_size``,
    ``max_size``, ``max_queries``, ``setup``, ``init``, ``reset`` -- default
    :func:`reset_session`, as asyncpg's own reset is refused by DSQL) and asyncpg connect
    options. ``max_lifetime`` (default 55 min) and ``max_inactive_connection_lifetime``
    (default 10 min) retire connections before DSQL's 60-minute limit; ``max_lifetime`` is
    measured on ``clock`` (tests inject one).
    """
    pool_kwargs = {k: params.pop(k) for k in list(params) if k in _POOL_KEYS}
    config, provider, kwargs = _connect_args(conninfo, params, token_provider, shared=False)
    if "connection_class" in kwargs or "record_class" in kwargs:
        raise ConfigError("pass connection_class and record_class as pool arguments")
    return Pool(
        config,
        provider,
        kwargs,
        max_lifetime=max_lifetime,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        connection_class=connection_class,
        clock=clock,
        **pool_kwargs,
    )


__all__ = ["Connection", "Pool", "connect", "create_pool", "parse_options", "reset_session",
           "ssl_context"]
