"""Where AWS credentials come from, resolved once per process and refreshed before they expire.

Order (the same as botocore's, minus the cost):

1. a provider passed explicitly: a callable returning :class:`Credentials` (the dsqlkit
   protocol, :class:`CredentialsProvider`), a botocore ``CredentialProvider`` (anything
   with ``load()``), or fixed credentials (dsqlkit or botocore objects);
2. without an explicit profile, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
   ``AWS_SESSION_TOKEN`` from the environment -- what Lambda sets -- read without importing
   botocore (an explicit profile wins over the environment, as in botocore);
3. botocore's chain for the profile (config and credentials files, SSO, assume-role, web
   identity, container and instance roles), resolved once per profile; temporary
   credentials are refreshed by botocore ahead of their expiry.
"""

from __future__ import annotations

import os
from _thread import allocate_lock
from datetime import datetime, timezone

from dsqlkit._log import get_logger
from dsqlkit.auth.sigv4 import Credentials
from dsqlkit.errors import CredentialsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol

    class CredentialsProvider(Protocol):
        """dsqlkit's provider protocol: a callable returning current :class:`Credentials`.

        It is called whenever a token is minted (every 80 % of the token lifetime in a
        pool), from a background thread, so it may block (e.g. call STS) and may return
        new credentials each time.
        """

        def __call__(self) -> Credentials: ...

logger = get_logger(__name__)

ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "AWS_SESSION_TOKEN"


class LoadedCredentials:
    """Credentials and when they stop working (epoch seconds; None: not known to expire)."""

    __slots__ = ("credentials", "expires_at")

    def __init__(self, credentials: Credentials, expires_at: float | None = None) -> None:
        self.credentials = credentials
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"LoadedCredentials({self.credentials!r}, expires_at={self.expires_at})"


class CredentialSource:
    """A resolved place to load credentials from. ``blocking`` sources may do network I/O."""

    blocking = True
    description = "credentials"

    def load(self) -> LoadedCredentials:
        raise NotImplementedError

    def fingerprint(self) -> object:
        """A cheap identity of the credentials a load would return now, or None if that
        cannot be known without loading. A token cache re-mints when it changes."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class EnvCredentialSource(CredentialSource):
    """The process environment, re-read on every load (microseconds, no botocore)."""

    blocking = False
    description = "environment variables"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def fingerprint(self) -> object:
        env = self._environ
        return (env.get(ENV_ACCESS_KEY), env.get(ENV_SECRET_KEY), env.get(ENV_SESSION_TOKEN))

    def load(self) -> LoadedCredentials:
        env = self._environ
        access = env.get(ENV_ACCESS_KEY)
        secret = env.get(ENV_SECRET_KEY)
        if not access or not secret:
            raise CredentialsError(
                f"{ENV_ACCESS_KEY} / {ENV_SECRET_KEY} are no longer set in the environment: "
                "set both (and AWS_SESSION_TOKEN for temporary credentials)"
            )
        return LoadedCredentials(Credentials(access, secret, env.get(ENV_SESSION_TOKEN) or None),
                                 None)


class StaticCredentialSource(CredentialSource):
    blocking = False
    description = "fixed credentials"

    def __init__(self, credentials: Credentials) -> None:
        self._loaded = LoadedCredentials(credentials, None)

    def load(self) -> LoadedCredentials:
        return self._loaded


def _expiry(obj: Any) -> float | None:
    # botocore's RefreshableCredentials keep the expiry in a private attribute only.
    value = getattr(obj, "_expiry_time", None)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return None


def coerce_credentials(obj: Any) -> LoadedCredentials:
    """Turn dsqlkit or botocore credentials (frozen, refreshable, deferred) into ours."""
    if isinstance(obj, Credentials):
        return LoadedCredentials(obj, None)
    frozen = obj.get_frozen_credentials() if hasattr(obj, "get_frozen_credentials") else obj
    access = getattr(frozen, "access_key", None)
    secret = getattr(frozen, "secret_key", None)
    if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
        raise CredentialsError(
            f"the credentials provider returned {type(obj).__name__}, not credentials: return "
            "dsqlkit.auth.sigv4.Credentials(access_key, secret_key, session_token)"
        )
    token = getattr(frozen, "token", None) or getattr(frozen, "session_token", None)
    # Read the expiry after get_frozen_credentials(), which may just have refreshed it.
    return LoadedCredentials(Credentials(access, secret, token or None), _expiry(obj))


class CallableCredentialSource(CredentialSource):
    """A dsqlkit provider: a callable returning credentials, called on every load."""

    description = "custom provider"

    def __init__(self, provider: Callable[[], Any]) -> None:
        self._provider = provider

    def load(self) -> LoadedCredentials:
        try:
            result = self._provider()
        except CredentialsError:
            raise
        except Exception as exc:
            raise CredentialsError(
                f"the credentials provider failed: {type(exc).__name__}: {exc}"
            ) from exc
        if result is None:
            raise CredentialsError("the credentials provider returned None: return Credentials")
        return coerce_credentials(result)


class BotocoreCredentialSource(CredentialSource):
    """botocore credentials resolved once (lazily), refreshed by botocore when they age.

    ``resolver`` returns botocore credentials (or None); by default it runs botocore's
    full chain for ``profile``.
    """

    def __init__(
        self,
        profile: str | None = None,
        resolver: Callable[[], Any] | None = None,
        description: str | None = None,
    ) -> None:
        self.profile = profile
        self._resolver = resolver or self._default_chain
        self.description = description or (
            f"botocore chain, profile {profile!r}" if profile else "botocore chain"
        )
        self._lock = allocate_lock()
        self._credentials: Any = None

    def _default_chain(self) -> Any:
        import botocore.session
        from botocore.exceptions import ProfileNotFound

        try:
            return botocore.session.Session(profile=self.profile).get_credentials()
        except ProfileNotFound:
            raise CredentialsError(
                f"AWS profile {self.profile!r} not found: define it in ~/.aws/config or "
                "~/.aws/credentials, or pass another profile=…"
            ) from None

    def _resolve(self) -> Any:
        with self._lock:
            if self._credentials is None:
                try:
                    creds = self._resolver()
                except CredentialsError:
                    raise
                except Exception as exc:
                    raise CredentialsError(
                        f"loading AWS credentials ({self.description}) failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if creds is None:
                    raise CredentialsError(
                        f"no AWS credentials found ({self.description}): set "
                        f"{ENV_ACCESS_KEY} and {ENV_SECRET_KEY}, pass profile=…, run "
                        "'aws configure' or 'aws sso login', or pass credentials_provider=…"
                    )
                self._credentials = creds
                logger.debug("resolved AWS credentials from %s", self.description)
            return self._credentials

    def load(self) -> LoadedCredentials:
        creds = self._resolve()
        try:
            return coerce_credentials(creds)
        except CredentialsError:
            raise
        except Exception as exc:
            raise CredentialsError(
                f"refreshing AWS credentials ({self.description}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


# One botocore source per profile: resolving the chain can cost a network round trip.
_CHAINS: dict[str | None, BotocoreCredentialSource] = {}
_CHAINS_LOCK = allocate_lock()


def _chain(profile: str | None) -> BotocoreCredentialSource:
    with _CHAINS_LOCK:
        source = _CHAINS.get(profile)
        if source is None:
            source = _CHAINS[profile] = BotocoreCredentialSource(profile)
        return source


def credential_source(
    provider: Any = None,
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CredentialSource:
    """Resolve where credentials come from (module docstring), without loading them yet."""
    if isinstance(provider, CredentialSource):
        return provider
    if provider is not None:
        if isinstance(provider, Credentials) or hasattr(provider, "get_frozen_credentials"):
            if hasattr(provider, "get_frozen_credentials") and hasattr(provider, "refresh_needed"):
                # botocore RefreshableCredentials: keep the object so it can refresh itself.
                return BotocoreCredentialSource(
                    resolver=lambda: provider, description="botocore credentials"
                )
            return StaticCredentialSource(coerce_credentials(provider).credentials)
        if hasattr(provider, "load") and not callable(provider):
            # A botocore CredentialProvider: load() once, then let botocore refresh.
            method = getattr(provider, "METHOD", type(provider).__name__)
            return BotocoreCredentialSource(
                resolver=provider.load, description=f"credential provider {method}"
            )
        if callable(provider):
            return CallableCredentialSource(provider)
        raise CredentialsError(
            f"credentials_provider must be a callable returning Credentials, a botocore "
            f"CredentialProvider or credentials, not {type(provider).__name__}"
        )
    env = os.environ if environ is None else environ
    if profile is None and env.get(ENV_ACCESS_KEY) and env.get(ENV_SECRET_KEY):
        return EnvCredentialSource(env)
    return _chain(profile)


def __getattr__(name: str) -> Any:
    # The typing.Protocol, built on demand so that importing this module skips typing.
    if name == "CredentialsProvider":
        from typing import Protocol, runtime_checkable

        @runtime_checkable
        class CredentialsProvider(Protocol):
            """dsqlkit's provider protocol: a callable returning current Credentials."""

            def __call__(self) -> Credentials: ...

        globals()[name] = CredentialsProvider
        return CredentialsProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BotocoreCredentialSource",
    "CallableCredentialSource",
    "CredentialSource",
    "CredentialsProvider",
    "EnvCredentialSource",
    "LoadedCredentials",
    "StaticCredentialSource",
    "coerce_credentials",
    "credential_source",
]
