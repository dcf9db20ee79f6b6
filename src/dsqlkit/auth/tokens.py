"""Token cache and refresh: :class:`TokenProvider`.

A DSQL token is checked only when a connection starts, and can be reused by any number of
connections until it expires. So a provider keeps one token, hands it to every new
connection, and mints the next one at 80 % of its lifetime -- in the background for pools
(a thread for sync pools, an asyncio task for async ones), inline otherwise.

Timeline of one token (lifetime L = min(token lifetime, credentials' remaining life))::

    issued ──────────── refresh_at (0.8 L) ──── usable_until (L - margin) ──── expires (L)
            cached           background re-mints;       connection attempts
                             failures retried with      mint inline (one mint),
                             backoff, logged            old token as last resort

A connection attempt never waits for more than one mint: while a background refresher
runs, it is served the cached token until ``usable_until``; after that it mints itself
(serialised, so concurrent attempts share the result).

The decisions are pure functions of the clock (:class:`RefreshPolicy`); the thread and the
task are thin loops over :meth:`TokenProvider._background_step`. Both wait on the clock only
through a wake-up signal with a timeout, so :meth:`TokenProvider.wake` makes them look at an
injected clock again at once (tests move time forward instead of waiting for it).
"""

from __future__ import annotations

import time
from _thread import allocate_lock
from datetime import datetime, timezone

from dsqlkit._log import get_logger
from dsqlkit.auth.credentials import CredentialSource, LoadedCredentials, credential_source
from dsqlkit.auth.sigv4 import (
    DEFAULT_EXPIRES_IN,
    MAX_EXPIRES_IN,
    action_for_user,
    presign_token,
    signing_key,
)
from dsqlkit.errors import ConfigError, DsqlError, TokenError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import threading
    import weakref
    from collections.abc import Callable
    from typing import Any

    from dsqlkit.config import DsqlConfig

# Cold starts matter: threading, weakref and asyncio are imported only when a background
# refresher starts; dataclasses and typing not at all.
logger = get_logger(__name__)

# Signing keys are valid for one UTC day, region and secret; deriving one costs four HMACs.
_KEYS: dict[tuple[str, str, str], bytes] = {}
_KEYS_MAX = 64


def cached_signing_key(secret_key: str, day: str, region: str) -> bytes:
    k = (secret_key, day, region)
    key = _KEYS.get(k)
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        key = _KEYS[k] = signing_key(secret_key, day, region)
    return key


class RefreshPolicy:
    """When to re-mint, how long a token may still be handed out, how to back off.

    ``ratio``: re-mint at this fraction of the lifetime. ``max_margin``: stop handing out a
    token min(max_margin, 10 % of its life) before it expires. ``retry_base`` /
    ``retry_cap``: backoff of failed refreshes (both also scaled down for short lifetimes).
    """

    __slots__ = ("max_margin", "ratio", "retry_base", "retry_cap")

    def __init__(
        self,
        ratio: float = 0.8,
        max_margin: float = 60.0,
        retry_base: float = 1.0,
        retry_cap: float = 30.0,
    ) -> None:
        if not 0.0 < ratio < 1.0:
            raise ConfigError(f"refresh ratio must be between 0 and 1, not {ratio}")
        self.ratio = ratio
        self.max_margin = max_margin
        self.retry_base = retry_base
        self.retry_cap = retry_cap

    def __repr__(self) -> str:
        return (
            f"RefreshPolicy(ratio={self.ratio}, max_margin={self.max_margin}, "
            f"retry_base={self.retry_base}, retry_cap={self.retry_cap})"
        )

    def lifetime(self, issued_at: float, expires_at: float) -> float:
        return max(1.0, expires_at - issued_at)

    def refresh_at(self, issued_at: float, expires_at: float) -> float:
        return issued_at + self.ratio * self.lifetime(issued_at, expires_at)

    def usable_until(self, issued_at: float, expires_at: float) -> float:
        life = self.lifetime(issued_at, expires_at)
        return expires_at - min(self.max_margin, 0.1 * life)

    def retry_delay(self, failures: int, issued_at: float, expires_at: float) -> float:
        """Backoff after ``failures`` failed refreshes: doubling, capped so that several
        attempts fit between the refresh point and the end of the token's usable life."""
        life = self.lifetime(issued_at, expires_at)
        base = min(self.retry_base, 0.02 * life)
        cap = max(base, min(self.retry_cap, 0.05 * life))
        return float(min(cap, base * 2 ** min(failures - 1, 30)))


class MintedToken:
    """One minted token and its schedule (epoch seconds). The repr never shows the token."""

    __slots__ = ("expires_at", "fingerprint", "issued_at", "refresh_at", "token",
                 "usable_until")

    def __init__(
        self, token: str, issued_at: float, expires_at: float, refresh_at: float,
        usable_until: float, fingerprint: object = None,
    ) -> None:
        self.token = token
        self.issued_at = issued_at
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.usable_until = usable_until
        # What the credentials source looked like when this token was signed.
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return (
            f"MintedToken(issued_at={self.issued_at}, expires_at={self.expires_at}, "
            f"refresh_at={self.refresh_at}, usable_until={self.usable_until})"
        )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%SZ")


class TokenProvider:
    """Mints, caches and refreshes the auth token for one (host, region, user).

    ``credentials`` is anything :func:`dsqlkit.auth.credentials.credential_source` accepts
    (a provider, credentials, a resolved source) or None for environment/botocore chain.
    ``action`` overrides the IAM action otherwise derived from ``user``.
    """

    def __init__(
        self,
        hostname: str,
        region: str,
        *,
        user: str = "admin",
        action: str | None = None,
        expires_in: int = DEFAULT_EXPIRES_IN,
        credentials: Any = None,
        profile: str | None = None,
        policy: RefreshPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_mint: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        if not 1 <= expires_in <= MAX_EXPIRES_IN:
            raise ConfigError(
                f"token lifetime {expires_in} s is out of range: use 1 to {MAX_EXPIRES_IN}"
            )
        self.hostname = hostname
        self.region = region
        self.user = user
        # DSQL maps the admin role to DbConnectAdmin, every other role to DbConnect.
        self.action = action if action is not None else action_for_user(user)
        self.expires_in = expires_in
        self.policy = policy or RefreshPolicy()
        self._source: CredentialSource = credential_source(credentials, profile=profile)
        self._clock = clock
        self._minted: MintedToken | None = None
        self._mint_lock = allocate_lock()
        self._failures = 0
        self._retry_at: float | None = None
        self._background = False
        # One signal per refresher: a provider may run a thread and a task at once (a sync
        # and an async pool sharing it), and stop() must end both.
        self._thread_signal: _Signal | None = None
        self._task_signal: _Signal | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        # Called after every attempt to mint a token (in the background, for a connection or
        # by refresh()) with its error, None for a new token: for metrics, and for tests
        # that move an injected clock and wait for the mint that follows.
        self.on_mint = on_mint
        self.mints = 0

    @classmethod
    def from_config(cls, config: DsqlConfig, **kwargs: Any) -> TokenProvider:
        return cls(
            config.host,
            config.region,
            user=config.user,
            expires_in=config.token_duration_secs,
            credentials=config.credentials_provider,
            profile=config.profile,
            **kwargs,
        )

    @classmethod
    def shared(cls, config: DsqlConfig) -> TokenProvider:
        """The process-wide provider for ``config``, for one-off connections: repeated
        ``connect()`` calls reuse its cached token (minted inline, no background refresh)."""
        provider = _SHARED.get(config)
        if provider is None:
            if len(_SHARED) >= _SHARED_MAX:
                _SHARED.clear()
            provider = _SHARED.setdefault(config, cls.from_config(config))
        return provider

    def __repr__(self) -> str:
        return (
            f"<TokenProvider {self.user}@{self.hostname} region={self.region} "
            f"action={self.action} expires_in={self.expires_in} source={self._source!r}>"
        )

    @property
    def credentials_may_block(self) -> bool:
        return self._source.blocking

    @property
    def credentials_description(self) -> str:
        """Where the credentials come from (never the credentials themselves)."""
        return self._source.description

    @property
    def current(self) -> MintedToken | None:
        return self._minted

    # -- minting ------------------------------------------------------------------------

    def _mint(self) -> MintedToken:
        fingerprint = self._source.fingerprint()
        loaded: LoadedCredentials = self._source.load()
        creds = loaded.credentials
        issued = float(int(self._clock()))
        moment = datetime.fromtimestamp(issued, timezone.utc)
        day = f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
        try:
            token = presign_token(
                self.hostname,
                self.region,
                creds,
                action=self.action,
                expires_in=self.expires_in,
                now=moment,
                key=cached_signing_key(creds.secret_key, day, self.region),
            )
        except ValueError as exc:
            raise TokenError(f"cannot sign a token for {self.hostname}: {exc}") from None
        expires = issued + self.expires_in
        if loaded.expires_at is not None and loaded.expires_at < expires:
            # A token signed with temporary credentials dies with them.
            expires = max(issued + 1.0, loaded.expires_at)
        p = self.policy
        minted = MintedToken(
            token=token,
            issued_at=issued,
            expires_at=expires,
            refresh_at=p.refresh_at(issued, expires),
            usable_until=p.usable_until(issued, expires),
            fingerprint=fingerprint,
        )
        self._minted = minted
        self.mints += 1
        return minted

    def refresh(self) -> str:
        """Mint a new token now (raises :class:`TokenError`/:class:`CredentialsError`)."""
        try:
            token = self._refresh()
        except BaseException as exc:
            self._minted_hook(exc)
            raise
        self._minted_hook(None)
        return token

    def _minted_hook(self, error: BaseException | None) -> None:
        if self.on_mint is not None:
            self.on_mint(error)

    def _refresh(self) -> str:
        with self._mint_lock:
            minted = self._mint()
        self._failures = 0
        self._retry_at = None
        logger.debug(
            "minted a DSQL token for %s@%s (valid until %s, refresh at %s)",
            self.user, self.hostname, _utc(minted.expires_at), _utc(minted.refresh_at),
        )
        return minted.token

    def _cached(self) -> str | None:
        m = self._minted
        if m is None:
            return None
        if m.fingerprint is not None and m.fingerprint != self._source.fingerprint():
            return None  # e.g. new keys in the environment: sign with those
        now = self._clock()
        if now < m.refresh_at or (self._background and now < m.usable_until):
            return m.token
        return None

    def _mint_for_connection(self) -> str:
        with self._mint_lock:
            # Another caller (or the refresher) may have minted while we waited.
            cached = self._cached()
            if cached is not None:
                return cached
            old = self._minted
            try:
                minted = self._mint()
            except DsqlError as exc:
                self._minted_hook(exc)
                if old is None or self._clock() >= old.expires_at:
                    raise
                logger.warning(
                    "minting a DSQL token for %s@%s failed (%s); using the current token, "
                    "valid until %s", self.user, self.hostname, exc, _utc(old.expires_at),
                )
                return old.token
        self._minted_hook(None)
        logger.debug(
            "minted a DSQL token for %s@%s inline (valid until %s)",
            self.user, self.hostname, _utc(minted.expires_at),
        )
        return minted.token

    def token(self) -> str:
        """The token for a new connection: cached, or minted now (at most one mint)."""
        cached = self._cached()
        if cached is not None:
            return cached
        return self._mint_for_connection()

    async def atoken(self) -> str:
        """:meth:`token` for coroutines: a mint that may block on I/O runs in a thread."""
        import asyncio

        cached = self._cached()
        if cached is not None:
            return cached
        if self._source.blocking:
            return await asyncio.to_thread(self._mint_for_connection)
        return self._mint_for_connection()

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after the server refused it."""
        self._minted = None

    # -- background refresh -------------------------------------------------------------

    def _due_at(self) -> float:
        if self._retry_at is not None:
            return self._retry_at
        m = self._minted
        return m.refresh_at if m is not None else 0.0

    def _refresh_guarded(self) -> None:
        """One background refresh; a failure is logged and scheduled for a retry."""
        error: BaseException | None = None
        try:
            self._refresh()
        except Exception as exc:
            error = exc
            self._failures += 1
            m = self._minted
            now = self._clock()
            if m is not None:
                delay = self.policy.retry_delay(self._failures, m.issued_at, m.expires_at)
                until = f"the current token is valid until {_utc(m.expires_at)}"
            else:
                delay = self.policy.retry_delay(self._failures, now, now + self.expires_in)
                until = "there is no current token"
            self._retry_at = now + delay
            logger.warning(
                "refreshing the DSQL token for %s@%s failed (attempt %d): %s; retrying in "
                "%.2f s, %s", self.user, self.hostname, self._failures, exc, delay, until,
            )
        self._minted_hook(error)

    def _background_step(self) -> float:
        """Refresh if due; return the seconds until the next step."""
        if self._clock() >= self._due_at():
            self._refresh_guarded()
        return max(0.0, self._due_at() - self._clock())

    @property
    def refreshing(self) -> bool:
        """Whether a background refresher (thread or task) is running."""
        return self._background

    def start(self) -> None:
        """Start the background refresh thread (idempotent). Mint first, failing loudly."""
        import threading
        import weakref

        if self._thread is not None and self._thread.is_alive():
            return
        if self._minted is None:
            self.refresh()
        signal = self._thread_signal = _Signal(threading.Event())
        thread = threading.Thread(
            target=_thread_loop,
            args=(weakref.ref(self), signal),
            name=f"dsqlkit-token-refresh-{self.hostname}",
            daemon=True,
        )
        self._thread = thread
        self._background = True
        thread.start()

    async def start_async(self) -> None:
        """Start the background refresh task in the running loop (idempotent)."""
        import asyncio
        import weakref

        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        if self._minted is None:
            if self._source.blocking:
                await asyncio.to_thread(self.refresh)
            else:
                self.refresh()
            task = self._task
            if task is not None and not task.done() and task.get_loop() is loop:
                return  # started by a concurrent caller while we minted
        signal = self._task_signal = _Signal(asyncio.Event(), loop)
        self._task = loop.create_task(_task_loop(weakref.ref(self), signal))
        self._background = True

    def wake(self) -> None:
        """Make the background refreshers look at the clock now rather than when their
        current wait ends (after an injected clock moved, or credentials changed)."""
        for signal in (self._thread_signal, self._task_signal):
            if signal is not None:
                signal.wake()

    def stop(self) -> None:
        """Stop background refresh (thread and task). The cached token stays usable."""
        self._background = False
        for signal in (self._thread_signal, self._task_signal):
            if signal is not None:
                signal.stop()
        self._thread_signal = self._task_signal = None
        thread, self._thread = self._thread, None
        if thread is not None:
            import threading

            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the task is gone with it
                pass

    async def stop_async(self) -> None:
        import asyncio

        task = self._task
        self.stop()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            try:
                await task
            except asyncio.CancelledError:
                pass


# TokenProvider.shared(): one provider per DsqlConfig, bounded.
_SHARED: dict[DsqlConfig, TokenProvider] = {}
_SHARED_MAX = 64


class _Signal:
    """Stop and wake-up for one refresher: a ``threading.Event`` for the thread, an
    ``asyncio.Event`` (set through its loop, from any thread) for the task."""

    __slots__ = ("event", "loop", "stopped")

    def __init__(self, event: threading.Event | asyncio.Event,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.event = event
        self.loop = loop
        self.stopped = False

    def wake(self) -> None:
        if self.loop is None:
            self.event.set()
            return
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the loop is closed: its task is gone with it
            pass

    def stop(self) -> None:
        self.stopped = True
        self.wake()


def _thread_loop(ref: weakref.ref[TokenProvider], signal: _Signal) -> None:
    import threading

    event = signal.event
    assert isinstance(event, threading.Event)
    while not signal.stopped:
        # Cleared before the step: a wake() during the step makes the wait return at once.
        event.clear()
        # Holds the provider only while working: a forgotten pool's provider can be collected.
        provider = ref()
        if provider is None:
            return
        delay = provider._background_step()
        del provider
        event.wait(delay)


async def _task_loop(ref: weakref.ref[TokenProvider], signal: _Signal) -> None:
    import asyncio

    event = signal.event
    assert isinstance(event, asyncio.Event)
    while not signal.stopped:
        event.clear()
        provider = ref()
        if provider is None:
            return
        if provider._clock() >= provider._due_at():
            if provider.credentials_may_block:
                await asyncio.to_thread(provider._refresh_guarded)
            else:
                provider._refresh_guarded()
        delay = max(0.0, provider._due_at() - provider._clock())
        del provider
        try:
            await asyncio.wait_for(event.wait(), delay)
        except asyncio.TimeoutError:
            pass


def generate_token(conninfo: str | DsqlConfig = "", /, **params: Any) -> str:
    """Mint one token for a connection string (``region=``, ``user=``... as keywords).

    >>> generate_token("postgres://admin@<cluster-id>.dsql.us-east-1.on.aws/postgres")
    ... # doctest: +SKIP
    """
    from dsqlkit.config import resolve_config

    return TokenProvider.from_config(resolve_config(conninfo, params)).refresh()


__all__ = ["MintedToken", "RefreshPolicy", "TokenProvider", "cached_signing_key",
           "generate_token"]
