"""psycopg2: IAM-authenticated connections and a thread-safe pool for Aurora DSQL.

>>> conn = dsqlkit.psycopg2.connect("postgres://admin@<id>.dsql.us-east-1.on.aws/postgres")
>>> with dsqlkit.psycopg2.create_pool(url, max_size=8) as pool:
...     with pool.connection() as conn, conn.cursor() as cur:
...         cur.execute("SELECT 1")

psycopg2's own pools never retire a connection; :class:`Pool` does: ``max_lifetime``
(default 55 min, DSQL closes connections at 60) and ``max_idle`` (10 min, above
``min_size``), and a checkout check without a round trip replaces connections the server
closed. New connections get the current token of the pool's :class:`TokenProvider`,
refreshed by a background thread until the pool closes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    import psycopg2
    import psycopg2.extensions
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"dsqlkit.psycopg2 needs psycopg2: pip install 'dsqlkit[psycopg2]' ({exc})"
    ) from exc

from dsqlkit import _drivers
from dsqlkit._log import get_logger
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.config import DsqlConfig
from dsqlkit.errors import ConfigError, PoolTimeout

logger = get_logger(__name__)

_CONNECT_KEYS = frozenset({"connection_factory", "cursor_factory"})
_libpq_version = psycopg2.extensions.libpq_version()
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE

Connection = psycopg2.extensions.connection


def _connect_args(
    conninfo: str | DsqlConfig, params: dict[str, Any], token_provider: TokenProvider | None,
    *, shared: bool = True,
) -> tuple[DsqlConfig, TokenProvider, dict[str, Any]]:
    """The config, the token provider and this driver's connect() keyword arguments."""
    config, provider, driver = _drivers.prepare(conninfo, params, token_provider, _CONNECT_KEYS,
                                       shared=shared)
    return config, provider, {**config.libpq_params(None, libpq_version=_libpq_version),
                              **driver}


def _open(config: DsqlConfig, provider: TokenProvider, kwargs: dict[str, Any]) -> Connection:
    try:
        conn: Connection = psycopg2.connect(password=provider.token(), **kwargs)
    except psycopg2.OperationalError as exc:
        _drivers.raise_refused(exc, config, provider)
    return conn


def connect(
    conninfo: str | DsqlConfig = "",
    *,
    token_provider: TokenProvider | None = None,
    **params: Any,
) -> Connection:
    """Open one psycopg2 connection with a freshly minted token.

    ``params`` are connection parameters (``region``, ``profile``, ``token_duration_secs``,
    ``credentials_provider``, libpq parameters) and psycopg2's ``connection_factory`` and
    ``cursor_factory``.
    """
    config, provider, kwargs = _connect_args(conninfo, params, token_provider)
    return _open(config, provider, kwargs)


def unusable(conn: Connection) -> str | None:
    """Why a pooled connection must not be handed out, or None -- without a round trip:
    ``poll()`` reads whatever the server already sent (an EOF, a FATAL notice)."""
    if conn.closed:
        return "closed"
    seen = len(conn.notices)
    try:
        conn.poll()
    except psycopg2.Error:
        return "closed by the server"
    if conn.closed or conn.get_transaction_status() == \
            psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
        return "closed by the server"
    if any(n.startswith(("FATAL", "PANIC")) for n in conn.notices[seen:]):
        return "ended by the server"
    return None


class _Slot:
    __slots__ = ("conn", "expire_at", "idle_since")

    def __init__(self, conn: Connection, expire_at: float, now: float) -> None:
        self.conn = conn
        self.expire_at = expire_at
        self.idle_since = now


class Pool:
    """A thread-safe psycopg2 connection pool for DSQL (LIFO, lifetime-aware).

    Use :meth:`connection` (commits on success, rolls back on error, returns the
    connection), or :meth:`getconn` / :meth:`putconn`.
    """

    def __init__(
        self,
        config: DsqlConfig,
        token_provider: TokenProvider,
        connect_kwargs: dict[str, Any],
        *,
        min_size: int = 1,
        max_size: int = 10,
        max_lifetime: float = _drivers.MAX_LIFETIME,
        max_idle: float = _drivers.MAX_IDLE,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}/{max_size}"
            )
        self.config = config
        self.token_provider = token_provider
        self.min_size = min_size
        self.max_size = max_size
        self.max_lifetime = _drivers.check_lifetime(max_lifetime)
        self.max_idle = max_idle
        self.timeout = timeout
        # Lifetimes and idle times are measured on this clock (tests inject one); waits for
        # a free connection use the real one.
        self.clock = clock
        self._kwargs = connect_kwargs
        self._cond = threading.Condition()
        self._idle: deque[_Slot] = deque()
        self._busy: dict[int, _Slot] = {}
        self._opening = 0
        self._closed = True
        self.replaced = 0

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Start refreshing tokens and open ``min_size`` connections (errors surface here)."""
        with self._cond:
            if not self._closed:
                return
            self._closed = False
        try:
            self.token_provider.start()
            for _ in range(self.min_size):
                slot = self._new_slot()
                with self._cond:
                    self._idle.append(slot)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every idle connection, refuse new checkouts, stop the token refresh.
        Connections still checked out are closed when they are returned."""
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._cond.notify_all()
        for slot in idle:
            slot.conn.close()
        self.token_provider.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Pool:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        with self._cond:
            return len(self._idle) + len(self._busy) + self._opening

    # -- checkout -----------------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        conn = _open(self.config, self.token_provider, self._kwargs)
        now = self.clock()
        return _Slot(conn, _drivers.expires_at(now, self.max_lifetime), now)

    def _discard(self, slot: _Slot, reason: str) -> None:
        logger.debug("replacing a pooled connection: %s", reason)
        self.replaced += 1
        if not slot.conn.closed:
            slot.conn.close()

    def getconn(self, timeout: float | None = None) -> Connection:
        """Check out a connection; raise :class:`PoolTimeout` after ``timeout`` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            slot: _Slot | None
            with self._cond:
                while True:
                    if self._closed:
                        raise ConfigError("the pool is closed: open() it, or create a new one")
                    if self._idle:
                        slot = self._idle.pop()  # most recently used: lets the rest idle out
                        break
                    if len(self._busy) + self._opening < self.max_size:
                        self._opening += 1
                        slot = None
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        waited = self.timeout if timeout is None else timeout
                        raise PoolTimeout(
                            f"no connection available within {waited} s "
                            f"(max_size={self.max_size}): return connections, or raise "
                            "max_size"
                        )
                    self._cond.wait(remaining)
            if slot is None:
                try:
                    slot = self._new_slot()
                finally:
                    with self._cond:
                        self._opening -= 1
                        self._cond.notify()
            else:
                now = self.clock()
                reason = "max_lifetime reached" if now >= slot.expire_at else unusable(slot.conn)
                if reason is not None:
                    self._discard(slot, reason)
                    with self._cond:
                        self._cond.notify()
                    continue
            with self._cond:
                self._busy[id(slot.conn)] = slot
            return slot.conn

    def putconn(self, conn: Connection, close: bool = False) -> None:
        """Return a connection (rolled back if left in a transaction)."""
        with self._cond:
            slot = self._busy.pop(id(conn), None)
        if slot is None:
            raise ConfigError("putconn() got a connection this pool did not hand out")
        try:
            reason = None
            if close or self._closed:
                reason = "closed by the caller" if close else "the pool is closed"
            elif conn.closed:
                reason = "closed"
            elif self.clock() >= slot.expire_at:
                reason = "max_lifetime reached"
            elif conn.get_transaction_status() != _IDLE:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    reason = "broken during rollback"
            if reason is not None:
                self._discard(slot, reason)
                return
            slot.idle_since = self.clock()
            with self._cond:
                self._idle.append(slot)
                self._prune_locked(slot.idle_since)
        finally:
            with self._cond:
                self._cond.notify()

    def _prune_locked(self, now: float) -> None:
        # Close connections idle for max_idle, oldest first, down to min_size.
        while (self._idle and now - self._idle[0].idle_since >= self.max_idle
               and len(self._idle) + len(self._busy) + self._opening > self.min_size):
            slot = self._idle.popleft()
            slot.conn.close()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """Check out a connection for a block: commit on success, roll back on error."""
        conn = self.getconn(timeout)
        try:
            yield conn
            if not conn.closed and not conn.autocommit:
                conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    pass
            raise
        finally:
            self.putconn(conn)


def create_pool(
    conninfo: str | DsqlConfig = "",
    *,
    min_size: int = 1,
    max_size: int = 10,
    max_lifetime: float = _drivers.MAX_LIFETIME,
    max_idle: float = _drivers.MAX_IDLE,
    timeout: float = 30.0,
    open: bool = True,
    token_provider: TokenProvider | None = None,
    clock: Callable[[], float] = time.monotonic,
    **params: Any,
) -> Pool:
    """A thread-safe psycopg2 pool for DSQL, opened unless ``open=False``.

    ``params`` are connection parameters as for :func:`connect`; ``clock`` measures
    lifetimes and idle times (tests inject one).
    """
    config, provider, kwargs = _connect_args(conninfo, params, token_provider, shared=False)
    pool = Pool(config, provider, kwargs, min_size=min_size, max_size=max_size,
                max_lifetime=max_lifetime, max_idle=max_idle, timeout=timeout, clock=clock)
    if open:
        pool.open()
    return pool


__all__ = ["Connection", "Pool", "connect", "create_pool", "unusable"]
