"""One exception hierarchy for the whole toolkit, rooted at :class:`DsqlError`.

Every message names the cause and, where there is one, the fix. No message ever
contains a token, a secret key or a session token.
"""

from __future__ import annotations

# Not "from typing import TYPE_CHECKING": importing typing costs a cold start milliseconds,
# and every module imports this one. Type checkers treat this name specially.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from dsqlkit.occ import OCCType


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


class AuthenticationError(DsqlError):
    """The endpoint refused the IAM token of a new connection.

    ``hint`` is the server's reason (e.g. ``Wrong user to action mapping``); the driver's
    own exception is ``__cause__``. The message names the user, host, region, IAM action
    and credentials source, never the token.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class PoolTimeout(DsqlError, TimeoutError):
    """No pooled connection became available in time."""


class LocalEndpointError(DsqlError):
    """The local DSQL endpoint could not be started or reached."""


class OCCRetryExhausted(DsqlError):
    """A transaction kept losing OCC conflicts until its attempts or time budget ran out.

    The last conflict is ``__cause__``; ``attempts`` is how many times the transaction ran and
    ``occ_type`` the kind of the last conflict. Persistent data conflicts (``OC000``) mean hot
    rows: raise ``OCCRetryConfig.max_attempts`` or ``deadline``, or spread the writes.
    """

    def __init__(
        self,
        attempts: int,
        occ_type: OCCType,
        cause: BaseException,
        *,
        deadline_exceeded: bool = False,
    ) -> None:
        super().__init__(f"OCC retry exhausted after {attempts} attempts: {cause}")
        self.attempts = attempts
        self.occ_type = occ_type
        self.deadline_exceeded = deadline_exceeded
        self.__cause__ = cause

    def __reduce__(self) -> tuple[object, ...]:
        # The default reduce would call __init__ with the message alone.
        return (
            type(self),
            (self.attempts, self.occ_type, self.__cause__),
            {"deadline_exceeded": self.deadline_exceeded},
        )


__all__ = [
    "AuthenticationError",
    "ConfigError",
    "CredentialsError",
    "DsqlError",
    "LocalEndpointError",
    "OCCRetryExhausted",
    "PoolTimeout",
    "TokenError",
    "TokenRejected",
]
