"""SQLAlchemy engines whose every new connection authenticates with a current IAM token.

>>> engine = dsqlkit.sqlalchemy.create_engine("postgres://admin@<id>.dsql.us-east-1.on.aws/postgres")
>>> engine = dsqlkit.sqlalchemy.create_engine("postgresql+psycopg2://admin@<id>...")  # psycopg2
>>> engine = dsqlkit.sqlalchemy.create_async_engine(url)                       # psycopg async
>>> engine = dsqlkit.sqlalchemy.create_async_engine(url, driver="asyncpg")      # asyncpg

Connections come from dsqlkit's driver shells (``creator`` / ``async_creator``), so TLS, the
application name and token minting are the same as everywhere else. Defaults safe for DSQL:
``pool_recycle`` 55 min (DSQL closes connections at 60; values >= 3600 are refused with a
warning), ``pool_pre_ping``, and no hstore probe (DSQL has no hstore and no SAVEPOINT).
The token provider's refresh runs in the background from the first connection on (a thread,
or a task for async engines) and stops on ``engine.dispose()`` until the next connection.
"""

from __future__ import annotations

from typing import Any

try:
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"dsqlkit.sqlalchemy needs SQLAlchemy 2: pip install 'dsqlkit[sqlalchemy]' ({exc})"
    ) from exc

from dsqlkit._drivers import MAX_LIFETIME, check_lifetime, prepare
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig
from dsqlkit.errors import ConfigError

SYNC_DRIVERS = ("psycopg", "psycopg2")
ASYNC_DRIVERS = ("psycopg", "asyncpg")


def _engine_option(name: str) -> bool:
    # Every keyword that is not a connection parameter goes to SQLAlchemy, which checks it.
    return True


def _split(conninfo: str | DsqlConfig, driver: str | None) -> tuple[str | DsqlConfig, str | None]:
    """Take ``+driver`` out of a ``postgresql+driver://`` URL."""
    if isinstance(conninfo, str):
        scheme, sep, rest = conninfo.partition("://")
        base, plus, named = scheme.partition("+")
        if sep and plus:
            if driver is not None and driver != named:
                raise ConfigError(
                    f"the URL names driver {named!r} but driver={driver!r}: keep one"
                )
            return f"{base}://{rest}", named
    return conninfo, driver


def _prepare(
    conninfo: str | DsqlConfig,
    driver: str | None,
    default: str,
    allowed: tuple[str, ...],
    kw: dict[str, Any],
    token_provider: TokenProvider | None,
    pool_recycle: float,
) -> tuple[DsqlConfig, str, TokenProvider, dict[str, Any]]:
    conninfo, driver = _split(conninfo, driver)
    driver = driver or default
    if driver not in allowed:
        raise ConfigError(f"driver {driver!r} is not supported here: use one of {allowed}")
    config, provider, kw = prepare(conninfo, kw, token_provider, _engine_option, shared=False)
    if "creator" in kw or "async_creator" in kw:
        raise ConfigError("dsqlkit supplies the connection creator; pass connect_args instead")
    kw["pool_recycle"] = check_lifetime(pool_recycle, name="pool_recycle")
    kw.setdefault("pool_pre_ping", True)
    if driver in ("psycopg", "psycopg2"):
        kw.setdefault("use_native_hstore", False)
    return config, driver, provider, kw


def create_engine(
    conninfo: str | DsqlConfig = "",
    *,
    driver: str | None = None,
    connect_args: dict[str, Any] | None = None,
    pool_recycle: float = MAX_LIFETIME,
    token_provider: TokenProvider | None = None,
    **kw: Any,
) -> Engine:
    """A SQLAlchemy ``Engine`` for DSQL over psycopg (default) or psycopg2.

    ``kw`` mixes connection parameters (``region``, ``profile``, ``token_duration_secs``,
    ``credentials_provider``, libpq parameters) and ``sqlalchemy.create_engine`` options;
    ``connect_args`` go to the driver's connect (e.g. ``autocommit``).
    """
    config, driver, provider, kw = _prepare(
        conninfo, driver, "psycopg", SYNC_DRIVERS, kw, token_provider, pool_recycle
    )
    args = dict(connect_args or {})
    if driver == "psycopg":
        from dsqlkit import psycopg as shell
    else:
        from dsqlkit import psycopg2 as shell  # type: ignore[no-redef]

    def creator() -> Any:
        provider.start()  # idempotent; restarts after engine.dispose()
        return shell.connect(config, token_provider=provider, **args)

    engine = sqlalchemy.create_engine(f"postgresql+{driver}://", creator=creator, **kw)
    event.listen(engine, "engine_disposed", lambda _engine: provider.stop())
    engine.dsql_token_provider = provider  # type: ignore[attr-defined]
    return engine


def create_async_engine(
    conninfo: str | DsqlConfig = "",
    *,
    driver: str | None = None,
    connect_args: dict[str, Any] | None = None,
    pool_recycle: float = MAX_LIFETIME,
    token_provider: TokenProvider | None = None,
    **kw: Any,
) -> AsyncEngine:
    """A SQLAlchemy ``AsyncEngine`` for DSQL over psycopg's async API (default) or asyncpg."""
    config, driver, provider, kw = _prepare(
        conninfo, driver, "psycopg", ASYNC_DRIVERS, kw, token_provider, pool_recycle
    )
    args = dict(connect_args or {})
    if driver == "psycopg":
        from dsqlkit import psycopg as pg

        async def async_creator() -> Any:
            await provider.start_async()
            return await pg.connect_async(config, token_provider=provider, **args)
    else:
        from dsqlkit import asyncpg as apg

        async def async_creator() -> Any:
            await provider.start_async()
            return await apg.connect(config, token_provider=provider, **args)

    engine = _sa_create_async_engine(
        f"postgresql+{driver}://", async_creator=async_creator, **kw
    )
    event.listen(engine.sync_engine, "engine_disposed", lambda _engine: provider.stop())
    engine.sync_engine.dsql_token_provider = provider  # type: ignore[attr-defined]
    return engine


__all__ = ["create_async_engine", "create_engine"]
