"""One exception hierarchy for the whole toolkit, rooted at :class:`DsqlError`.

Every message names the cause and, where there is one, the fix. No message ever
contains a token, a secret key or a session token.
"""

from __future__ import annotations


class DsqlError(Exception):
    """Base class of every error raised by dsqlkit."""


class ConfigError(DsqlError, ValueError):
    """A connection string, keyword argument or setting is invalid."""


class CredentialsError(DsqlError):
    """AWS credentials could not be found or loaded."""


class TokenError(DsqlError):
    """An IAM authentication token could not be generated."""


class TokenRejected(DsqlError):
    """A token failed verification (raised by the local endpoint's verifier).

    ``hint`` is the reason, sent to the client in the HINT field of DSQL's
    ``unable to accept connection, access denied`` error.
    """

    def __init__(self, hint: str) -> None:
        super().__init__(f"access denied: {hint}")
        self.hint = hint


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint could not be started or reached."""


__all__ = [
    "ConfigError",
    "CredentialsError",
    "DsqlError",
    "LocalEndpointError",
    "TokenError",
    "TokenRejected",
]
