"""The listener: TLS negotiation (SSLRequest and direct TLS), quotas, cancel routing.

Every accepted socket is classified by peeking at its first bytes, without consuming them:
a TLS record (0x16) is direct TLS and must negotiate ALPN ``postgresql``; an SSLRequest
gets ``S`` and a TLS handshake; a CancelRequest is served in plaintext, as libpq sends it;
anything else is plaintext, which DSQL refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dsqlkit.auth import sigv4
from dsqlkit.local import wire
from dsqlkit.local.backend import BackendAddress, send_cancel
from dsqlkit.local.catalog import ADMIN_ROLE, RESERVED_ROLES
from dsqlkit.local.faults import Faults
from dsqlkit.local.jobs import JobRunner
from dsqlkit.local.link import Link
from dsqlkit.local.occ.engine import Conflict, Engine, SchemaMode
from dsqlkit.local.occ.monitor import LockMonitor
from dsqlkit.local.session import Session
from dsqlkit.local.startup import Refusal
from dsqlkit.local.tls import ALPN

log = logging.getLogger(__name__)


@dataclass
class EndpointConfig:
    region: str
    hostnames: tuple[str, ...]
    credentials: Mapping[str, sigv4.Credentials] = field(repr=False)
    max_connections: int = 1000
    connection_rate: float = 100.0
    connection_burst: int = 1000
    max_connection_age: float = 3600.0
    startup_timeout: float = 30.0
    handshake_timeout: float = 10.0
    backend_users: Mapping[str, str] = field(default_factory=lambda: {"admin": "admin"})
    # "commit": conflicts reported at COMMIT, as DSQL does; "statement": at the statement
    # (with DSQL's message); "off": PostgreSQL's own behaviour and messages.
    occ_mode: str = "commit"
    # How long a statement may wait on another transaction's lock before the endpoint makes
    # way for it (DSQL never waits; see dsqlkit.local.occ). In "statement" mode, the lock
    # timeout after which the statement fails.
    lock_timeout: float = 0.001
    # OC001 after another session's DDL: "relation" (a table the session used was changed,
    # as on DSQL), "strict" (any DDL, on the next statement that touches storage), "off".
    schema_conflicts: SchemaMode = "relation"
    faults: Faults = field(default_factory=Faults)
    # False: relay statements untouched (no dialect, rules or OCC emulation); only for
    # measuring what the rules cost.
    rules: bool = True
    # DSQL aborts transactions older than 300 s (configurable for tests).
    transaction_age_limit: float = 300.0
    # The endpoint's clocks: connection ages, transaction ages and the connection-rate
    # quota (monotonic seconds), and token expiry (the wall clock). Tests inject
    # controllable ones.
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime] = field(
        default=lambda: datetime.now(timezone.utc))


class TokenBucket:
    """DSQL's connection-rate quota: ``rate`` new connections per second, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Server:
    def __init__(
        self,
        config: EndpointConfig,
        ssl_context: ssl.SSLContext,
        backend_address: Callable[[], BackendAddress],
    ) -> None:
        self.config = config
        self.clock = config.clock
        self.ssl_context = ssl_context
        ssl_context.sni_callback = self._sni
        self.backend_address = backend_address
        self.sessions: dict[tuple[int, int], Session] = {}
        self.by_sid: dict[int, Session] = {}
        self.pids: set[int] = set()
        self.open_connections = 0
        self.bucket = TokenBucket(config.connection_rate, config.connection_burst,
                                  clock=config.clock)
        self.listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []
        self.faults = config.faults
        # A finished build changes the catalog on DSQL too, and DSQL may then answer OC001;
        # the endpoint does not, which keeps unrelated sessions quiet (docs/local.md).
        self.jobs = JobRunner(backend_address, lambda: None)
        self.engine = Engine(config.schema_conflicts)
        self._commit_waiters: dict[int, asyncio.Future[None]] = {}
        self.monitor: LockMonitor | None = None
        if config.occ_mode == "commit":
            self.monitor = LockMonitor(self.engine, backend_address,
                                       lambda: self.sessions.values(),
                                       delay=config.lock_timeout)
        # Sessions that sent the backend work and wait for its answer (a measure of load).
        self.sessions_waiting = 0
        self.stats = {"accepted": 0, "refused_rate": 0, "refused_max": 0, "plaintext": 0,
                      "auth_failed": 0, "sessions": 0}

    # ------------------------------------------------------------ listening

    def bind(self, host: str, port: int) -> int:
        """Listen on ``host`` (and on ::1 too when host is 127.0.0.1); returns the port."""
        hosts = [host]
        if host == "127.0.0.1" and socket.has_ipv6:
            hosts.append("::1")
        for h in hosts:
            family = socket.AF_INET6 if ":" in h else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((h, port))
            except OSError:
                s.close()
                if h == "::1":
                    continue  # no IPv6 loopback here, or the port is taken there
                raise
            s.listen(1024)
            s.setblocking(False)
            port = s.getsockname()[1]
            self.listeners.append(s)
        return port

    def start_accepting(self) -> None:
        for s in self.listeners:
            self._accepting.append(asyncio.ensure_future(self._accept_loop(s)))
        self.jobs.start()
        if self.monitor is not None:
            self.monitor.start()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            task = asyncio.ensure_future(self._serve_socket(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self.jobs.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        for t in self._accepting:
            t.cancel()
        for s in self.listeners:
            s.close()
        for session in list(self.sessions.values()):
            session.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ negotiation

    @staticmethod
    def _sni(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj._dsqlkit_sni = name  # type: ignore[union-attr]

    async def _peek(self, sock: socket.socket, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = sock.recv(n, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data:
                    raise ConnectionError("closed before the first packet")
                if len(data) >= n or data[0] == 0x16:
                    return data
                await asyncio.sleep(0.002)  # a first packet split across segments
                continue
            fut: asyncio.Future[None] = loop.create_future()

            def ready(f: asyncio.Future[None] = fut) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_reader(sock.fileno(), ready)
            try:
                await fut
            finally:
                loop.remove_reader(sock.fileno())

    async def _serve_socket(self, sock: socket.socket) -> None:
        self.open_connections += 1
        try:
            await self._negotiate(sock)
        except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError) as exc:
            log.debug("connection ended during negotiation: %s", exc)
        except wire.ProtocolViolation as exc:
            log.debug("protocol violation during negotiation: %s", exc)
        finally:
            self.open_connections -= 1
            with contextlib.suppress(OSError):
                sock.close()

    async def _negotiate(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout = self.config.handshake_timeout
        self.stats["accepted"] += 1
        refusal = self._admission()
        while True:
            head = await asyncio.wait_for(self._peek(sock, 8), timeout)
            if head[0] == 0x16:
                await self._tls_session(sock, direct=True, refusal=refusal)
                return
            length, code = struct.unpack("!ii", head[:8])
            if code == wire.SSL_REQUEST_CODE and length == 8:
                await loop.sock_recv(sock, 8)
                await loop.sock_sendall(sock, wire.SSL_ACCEPT)
                await self._tls_session(sock, direct=False, refusal=refusal)
                return
            if code == wire.GSSENC_REQUEST_CODE and length == 8:
                await loop.sock_recv(sock, 8)
                await loop.sock_sendall(sock, wire.SSL_REFUSE)
                continue
            if code == wire.CANCEL_REQUEST_CODE and length == 16:
                data = b""
                while len(data) < 16:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 16 - len(data)), timeout)
                    if not chunk:
                        return
                    data += chunk
                await self.cancel(*wire.parse_cancel(data))
                return
            # Plaintext startup: DSQL rejects connections without TLS, with 08P01 and "SSL is
            # mandatory" (what the official connector's suite, green on DSQL, expects).
            self.stats["plaintext"] += 1
            # Read the startup packet first: closing with it unread would reset the
            # connection, and the client could lose the answer.
            remaining = length if code >> 16 == 3 and length <= wire.MAX_STARTUP else 0
            with contextlib.suppress(asyncio.TimeoutError):
                while remaining > 0:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, remaining), timeout)
                    if not chunk:
                        break
                    remaining -= len(chunk)
            await loop.sock_sendall(sock, Refusal(
                "08P01", "unable to accept connection, SSL is mandatory").frame())
            return

    def _admission(self) -> Refusal | None:
        if self.open_connections > self.config.max_connections:
            self.stats["refused_max"] += 1
            return Refusal("53300", "Unable to accept connection, too many open connections.")
        if not self.bucket.take():
            self.stats["refused_rate"] += 1
            return Refusal("53400", "Unable to accept connection, rate exceeded.")
        return None

    async def _tls_session(self, sock: socket.socket, *, direct: bool,
                           refusal: Refusal | None) -> None:
        loop = asyncio.get_running_loop()
        link = Link(typed=False, max_length=wire.MAX_STARTUP)
        transport, _ = await loop.connect_accepted_socket(
            lambda: link, sock, ssl=self.ssl_context,
            ssl_handshake_timeout=self.config.handshake_timeout,
        )
        try:
            sslobj = transport.get_extra_info("ssl_object")
            sni = getattr(sslobj, "_dsqlkit_sni", None)
            if direct and (sslobj is None or sslobj.selected_alpn_protocol() != ALPN):
                link.write(Refusal("08P01", "received direct SSL connection request without "
                                   "ALPN protocol negotiation extension").frame())
                return
            if refusal is not None:
                # Read the startup packet first, so that the client is ready for the error.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.read_frame(), self.config.handshake_timeout)
                link.write(refusal.frame())
                return
            session = Session(self, link, sni=sni)
            await session.run()
        finally:
            link.close()

    # ------------------------------------------------------------ sessions

    def verify_token(self, token: str, user: str) -> sigv4.VerifiedToken:
        try:
            return sigv4.verify_token(
                token,
                user=user,
                region=self.config.region,
                hosts=self.config.hostnames,
                lookup=self.config.credentials.get,
                now=self.config.wall_clock(),
            )
        except Exception:
            self.stats["auth_failed"] += 1
            raise

    async def authorize(self, user: str) -> None:
        """Roles of the endpoint itself (its own role, the backend user it connects as) do
        not exist for clients: DSQL has no such roles. (The IAM mapping of other roles is
        checked once the backend session is open, see startup.py.)"""
        if user != ADMIN_ROLE and (user in RESERVED_ROLES
                                   or user == self.backend_address().user):
            raise Refusal("08P01", "unable to accept connection, access denied",
                          hint=f"Role {user} does not exist")

    def commit_finished(self, sid: int) -> asyncio.Future[None]:
        """Resolved when the transaction of session ``sid`` (whose COMMIT is at the
        backend) has ended."""
        fut = self._commit_waiters.get(sid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._commit_waiters[sid] = fut
        return fut

    def transaction_finished(self, sid: int,
                             doomed: Sequence[tuple[int, Conflict]] = ()) -> None:
        """Session ``sid``'s transaction ended; ``doomed``: the ones it made lose."""
        fut = self._commit_waiters.pop(sid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        for loser, _ in doomed:
            session = self.by_sid.get(loser)
            if session is not None:
                session.lost()

    def backend_startup(self, user: str, params: dict[str, str]) -> dict[str, str]:
        # DSQL pins every transaction at REPEATABLE READ. In "commit" mode the lock monitor
        # ends lock waits; in "statement" mode a lock timeout does.
        options = "-c default_transaction_isolation=repeatable\\ read"
        if self.config.occ_mode == "statement" and self.config.lock_timeout > 0:
            options += f" -c lock_timeout={int(self.config.lock_timeout * 1000)}"
        return {
            "user": self.config.backend_users.get(user, user),
            "database": self.backend_address().database,
            **params,
            "options": options,
        }

    def check_ages(self) -> None:
        """The clock moved: end the sessions past the connection-age cap (those in a
        transaction when it ends)."""
        for session in list(self.sessions.values()):
            session.check_age()

    def register(self, session: Session) -> tuple[int, int]:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self.pids:
                break
        key = (pid, secrets.randbelow(2**31 - 1))
        self.pids.add(pid)
        self.sessions[key] = session
        self.by_sid[pid] = session
        self.stats["sessions"] += 1
        return key

    def unregister(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            self.by_sid.pop(session.key[0], None)
            self.pids.discard(session.key[0])

    async def cancel(self, pid: int, secret: int) -> None:
        session = self.sessions.get((pid, secret))
        if session is None or session.backend is None:
            log.debug("ignored a cancel request with an unknown key")
            return
        await send_cancel(self.backend_address(), session.backend.pid, session.backend.secret)
