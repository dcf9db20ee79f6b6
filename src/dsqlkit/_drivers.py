"""What every driver shell shares: argument handling, pool defaults, lifetime rules,
refused-token errors.

Pure functions; the driver modules (``dsqlkit.psycopg``, ``.psycopg2``, ``.asyncpg``,
``.sqlalchemy``) are thin shells over these and :mod:`dsqlkit.config` /
:mod:`dsqlkit.auth.tokens`.
"""

from __future__ import annotations

import random

from dsqlkit._log import get_logger
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import resolve_config, split_kwargs
from dsqlkit.errors import AuthenticationError, ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from dsqlkit.config import DsqlConfig

logger = get_logger(__name__)

# DSQL closes every connection after 60 minutes; pools retire theirs first, with margin for
# the pools' jitter and for a transaction that starts just before the limit.
DSQL_CONNECTION_CAP = 3600.0
MAX_LIFETIME = 55 * 60.0
MAX_IDLE = 10 * 60.0


def prepare(
    conninfo: str | DsqlConfig, params: dict[str, Any], token_provider: TokenProvider | None,
    driver_keys: frozenset[str] | Callable[[str], bool], *, shared: bool = True,
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any]]:
    """Split a driver shell's keyword arguments into the connection's config and the
    driver's own options (``driver_keys``: their names, or a test of a name), and pick the
    token provider."""
    config_params, driver = split_kwargs(params, driver_keys)
    config = resolve_config(conninfo, config_params)
    # One-off connections share a process-wide cached token; a pool gets its own provider,
    # whose background refresh lives and dies with the pool.
    provider = token_provider or (
        TokenProvider.shared(config) if shared else TokenProvider.from_config(config)
    )
    return config, provider, driver


def expires_at(now: float, max_lifetime: float) -> float:
    """When a connection opened at ``now`` retires: up to 5 % early, so that a pool's
    connections, opened together, do not all reconnect at once."""
    return now + max_lifetime * (1.0 - 0.05 * random.random())


def check_lifetime(max_lifetime: float | None, *, name: str = "max_lifetime") -> float:
    """Validate a pool's connection lifetime (seconds); warn if DSQL would cut it first."""
    if max_lifetime is None:
        raise ConfigError(
            f"{name}=None would keep connections past DSQL's 60-minute limit: pass a number "
            f"of seconds below 3600 (default {MAX_LIFETIME:g})"
        )
    if max_lifetime <= 0:
        raise ConfigError(f"{name} must be positive, not {max_lifetime}")
    if max_lifetime >= DSQL_CONNECTION_CAP:
        logger.warning(
            "%s=%g s reaches DSQL's 60-minute connection limit: the server will close "
            "connections first (they are replaced, but a query racing the close fails); "
            "use %g s", name, max_lifetime, MAX_LIFETIME,
        )
    return float(max_lifetime)


_REFUSALS = ("unable to accept connection, access denied", "password authentication failed",
             "iam authentication failed")


def refusal_hint(message: str) -> str | None:
    """If a connection error is DSQL refusing the token, the server's reason (HINT)."""
    lowered = message.lower()
    if not any(r in lowered for r in _REFUSALS):
        return None
    _, sep, hint = message.partition("HINT:")
    return hint.strip().splitlines()[0].strip() if sep and hint.strip() else ""


def raise_refused(
    exc: BaseException, config: DsqlConfig, provider: TokenProvider, message: str | None = None,
) -> NoReturn:
    """Raise a driver's connection error ``exc``: as :class:`AuthenticationError` if it is
    the server refusing the token (``message``: the error's text with its HINT, where the
    driver keeps them apart), else unchanged."""
    hint = refusal_hint(str(exc) if message is None else message)
    if hint is None:
        raise exc
    raise authentication_error(config, provider, hint, exc) from exc


def authentication_error(
    config: DsqlConfig, provider: TokenProvider, hint: str | None, cause: BaseException
) -> AuthenticationError:
    """A clear error for a refused token: who, where, which action, which credentials."""
    from dsqlkit.auth.sigv4 import ADMIN_ACTION

    reason = f": {hint.rstrip('.')}" if hint else ""
    action = provider.action
    if action == ADMIN_ACTION:
        role = "the admin role needs dsql:DbConnectAdmin"
    else:
        role = (f"role {config.user!r} needs dsql:DbConnect and an AWS IAM GRANT mapping "
                "it to these credentials' IAM identity")
    message = (
        f"the endpoint refused the IAM token for {config.user}@{config.host} "
        f"(region {config.region}, action {action}, credentials from "
        f"{provider.credentials_description}){reason}. Check that the credentials are "
        f"valid and current, that the region is the cluster's, and that {role}"
    )
    error = AuthenticationError(message, hint)
    error.__cause__ = cause
    return error


__all__ = [
    "DSQL_CONNECTION_CAP",
    "MAX_IDLE",
    "MAX_LIFETIME",
    "authentication_error",
    "check_lifetime",
    "expires_at",
    "prepare",
    "raise_refused",
    "refusal_hint",
]
