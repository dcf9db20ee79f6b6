"""The PostgreSQL behind the local endpoint: an embedded PostgreSQL 16 from the ``pgserver``
wheel, the system's PostgreSQL binaries, or an existing server given by URL.

Only this module starts, stops or restarts PostgreSQL processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local import wire
from dsqlkit.local.link import Link
from dsqlkit.local.pglog import ServerLog

log = logging.getLogger(__name__)

SOCKET_PORT = 5432
# Server log settings the endpoint reads lock waits with (dsqlkit.local.occ.lockwaits).
LOG_SETTINGS = {
    "log_lock_waits": "on",
    "log_line_prefix": "%m [%p] ",
    "lc_messages": "C",
}


@dataclass(frozen=True)
class BackendAddress:
    """Where backend sessions are opened: a Unix socket directory or a TCP host."""

    host: str  # a directory for a Unix socket, else a host name
    port: int
    user: str
    database: str = "postgres"
    password: str | None = field(default=None, repr=False)

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")

    def dsn(self, user: str | None = None) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={user or self.user}",
                 f"dbname={self.database}"]
        if self.password:
            parts.append(f"password={self.password}")
        return " ".join(parts)

    @classmethod
    def from_url(cls, url: str) -> BackendAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise LocalEndpointError(
                f"--backend-url must be a postgresql:// URL, not {parts.scheme or 'a bare string'}"
            )
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        host = unquote(query.get("host", parts.hostname or "")) or "/tmp"
        return cls(
            host=host,
            port=parts.port or int(query.get("port", SOCKET_PORT)),
            user=unquote(parts.username or "postgres"),
            database=unquote(parts.path.lstrip("/") or "postgres"),
            password=unquote(parts.password) if parts.password else None,
        )


def find_bin_dir(kind: str = "auto") -> Path:
    """Directory holding ``initdb`` and ``postgres``: pgserver's first, then the system's."""
    candidates: list[Path] = []
    if kind in ("auto", "pgserver"):
        # Locate the wheel's binaries without importing pgserver, whose import has side
        # effects (lock files in the runtime directory, warnings).
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    if kind in ("auto", "system"):
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
        versions = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(Path(v) for v in versions)
    for c in candidates:
        if (c / "initdb").exists() and (c / "postgres").exists():
            return c
    raise LocalEndpointError(
        "no PostgreSQL binaries found: install the embedded server with "
        "'pip install dsqlkit[local]' (pgserver), install PostgreSQL (initdb on PATH or "
        "/usr/lib/postgresql/<version>/bin), or pass --backend-url postgresql://..."
    )


def _run_as_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: pick an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LocalEndpointError(
        "running as root, and neither a 'postgres' nor a 'nobody' account exists to run "
        "PostgreSQL as; create one or run dsqlkit as a normal user"
    )


def _allow_traversal(path: Path) -> None:
    """Let another account reach ``path`` by granting search (not read) on its ancestors."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)


class ManagedPostgres:
    """A PostgreSQL cluster in ``pgdata`` that this process initialises, starts and stops."""

    def __init__(
        self,
        pgdata: Path,
        *,
        bin_dir: Path | None = None,
        kind: str = "auto",
        max_connections: int = 1100,
        durable: bool = True,
        port: int = SOCKET_PORT,
        settings: dict[str, str] | None = None,
        lock_wait_ms: int = 1,
    ) -> None:
        self.pgdata = pgdata
        self.bin_dir = bin_dir or find_bin_dir(kind)
        self.max_connections = max_connections
        self.durable = durable
        self.port = port
        self.extra_settings = dict(settings or {})
        self.user = _run_as_user()
        self.socket_dir = ""
        self.proc: subprocess.Popen[bytes] | None = None
        # Called with every chunk of the server's log (see dsqlkit.local.pglog).
        self.log_listeners: list[Callable[[bytes], None]] = []
        self.log: ServerLog | None = None
        # How long a lock wait lasts before PostgreSQL reports it (deadlock_timeout).
        self.lock_wait_ms = lock_wait_ms
        self.log_path = pgdata.parent / "postgres.log"

    # -- lifecycle

    def _popen_kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.pgdata)
        if self.user is not None:
            _allow_traversal(self.pgdata.parent)
            _allow_traversal(self.bin_dir)
            _allow_traversal(self.bin_dir.parent / "lib")
        cmd = [str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
               "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        res = subprocess.run(  # type: ignore[call-overload]
            cmd, capture_output=True, text=True, **self._popen_kwargs()
        )
        if res.returncode != 0:
            raise LocalEndpointError(
                f"initdb failed ({res.returncode}): {res.stderr.strip()[-2000:]}"
            )

    def start(self, timeout: float = 30.0) -> BackendAddress:
        self.init()
        if not self.socket_dir or not os.path.isdir(self.socket_dir):
            self.socket_dir = tempfile.mkdtemp(prefix="dsqlkit-pg-")
            os.chmod(self.socket_dir, 0o700)
            self._chown(Path(self.socket_dir))
        self._reap_stale()
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": self.socket_dir,
            "unix_socket_permissions": "0700",
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "timezone": "UTC",
            "log_timezone": "UTC",
            "datestyle": "ISO, MDY",
            "logging_collector": "off",
            # The log holds the server's own messages (LOG, FATAL, PANIC) and its lock
            # waits, not every client statement's error: under contention those are most of
            # its lines, and the endpoint reads it as it is written.
            "log_min_messages": "log",
            "log_error_verbosity": "terse",
            "log_min_error_statement": "panic",
            # A COMMIT is acknowledged only once its WAL reached the kernel: killing
            # PostgreSQL (a crash, kill_backend()) never loses an acknowledged commit, as DSQL
            # never does. fsync decides whether an OS crash can.
            "synchronous_commit": "on",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "max_locks_per_transaction": "256",
            # DSQL never makes a statement wait. PostgreSQL logs a lock wait once it lasted
            # deadlock_timeout, which tells the endpoint to make way (dsqlkit.local.occ), and
            # breaks a cycle of waiting statements then, as a conflict.
            "deadlock_timeout": f"{self.lock_wait_ms}ms",
            **LOG_SETTINGS,
            **self.extra_settings,
        }
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata)]
        for k, v in settings.items():
            cmd += ["-c", f"{k}={v}"]
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.PIPE,
                start_new_session=True, **self._popen_kwargs()
            )
        finally:
            logf.close()
        assert self.proc is not None and self.proc.stderr is not None
        self.log = ServerLog(self.proc.stderr, self.log_path, self.log_listeners)
        self.log.start()
        self._wait_ready(timeout)
        log.info("PostgreSQL (%s) ready on %s", self.bin_dir, self.socket_dir)
        return self.address

    @property
    def address(self) -> BackendAddress:
        return BackendAddress(host=self.socket_dir, port=self.port, user="postgres")

    def address_url(self) -> str:
        """A ``postgresql://`` URL of the Unix socket, for ``--backend-url``."""
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        pidfile = self.pgdata / "postmaster.pid"
        sock = Path(self.socket_dir) / f".s.PGSQL.{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LocalEndpointError(
                    f"PostgreSQL exited with status {self.proc.returncode}; "
                    f"log tail:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # The pid check matters after a crash: the killed postmaster's file still
                # says "ready" until the new one replaces it.
                if (len(lines) >= 8 and lines[0].strip() == str(self.proc.pid)
                        and lines[7].strip() == "ready" and sock.exists()):
                    return
            time.sleep(0.02)
        raise LocalEndpointError(f"PostgreSQL did not become ready in {timeout:.0f} s; "
                                 f"log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _reap_stale(self) -> None:
        """Kill what is left of an earlier postmaster on this data directory (after SIGKILL)."""
        leftovers = self._cluster_pids()
        for p in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while leftovers and time.monotonic() < deadline:
            leftovers = [p for p in leftovers if self._alive(p)]
            time.sleep(0.02)

    @staticmethod
    def _alive(pid: int) -> bool:
        """Still running: a zombie (dead, not yet reaped by its new parent) does not count;
        it holds no shared memory any more."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    def _cluster_pids(self) -> list[int]:
        """Every process of this cluster, found through /proc: the postmaster, its backends,
        and the orphans of a SIGKILLed postmaster (reparented, and still holding the
        cluster's shared memory while they finish a statement). PostgreSQL processes work
        in the data directory, so their cwd names it; a pid alone could have been reused.
        """
        pids = []
        data_dir = os.path.realpath(self.pgdata)
        me = os.getpid()
        for proc in glob.glob("/proc/[0-9]*"):
            try:
                pid = int(proc.rsplit("/", 1)[1])
                if pid != me and os.readlink(f"{proc}/cwd") == data_dir:
                    pids.append(pid)
            except (OSError, ValueError):
                continue
        return pids

    def kill(self) -> None:
        """SIGKILL the postmaster (chaos testing): sessions on it die, data survives."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # As after a real crash, the backends left behind are reaped at the next start.

    def restart(self, timeout: float = 30.0) -> BackendAddress:
        """Start again after a crash or a stop, on the same socket directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop(remove_socket_dir=False)
        return self.start(timeout)

    def stop(self, timeout: float = 10.0, *, remove_socket_dir: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown: roll back sessions, checkpoint, exit.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove_socket_dir and self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------- backend sessions


@dataclass
class BackendSession:
    """An authenticated backend connection, ready for the relay."""

    link: Link
    parameters: dict[str, str]
    pid: int
    secret: int


class BackendRefused(Exception):
    """The backend answered the startup with an error; ``frame`` is its ErrorResponse."""

    def __init__(self, frame: bytes) -> None:
        fields = wire.parse_fields(frame)
        super().__init__(fields.get("M", "backend refused the connection"))
        self.frame = frame
        self.fields = fields


def _scram_client(password: str) -> tuple[bytes, Callable[[bytes], bytes], Callable[[bytes], None]]:
    """SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it: first message and the two steps."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    state: dict[str, bytes] = {}

    def final(server_first: bytes) -> bytes:
        attrs = dict(p.split("=", 1) for p in server_first.decode().split(","))
        if not attrs["r"].startswith(nonce):
            raise LocalEndpointError("backend SCRAM nonce mismatch")
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth = f"{first_bare},{server_first.decode()},{without_proof}".encode()
        sig = hmac.new(stored, auth, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        state["server_sig"] = hmac.new(server_key, auth, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check(server_final: bytes) -> None:
        attrs = dict(p.split("=", 1) for p in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != state.get("server_sig"):
            raise LocalEndpointError("backend SCRAM server signature mismatch")

    return f"n,,{first_bare}".encode(), final, check


async def open_session(
    address: BackendAddress, params: dict[str, str], *, timeout: float = 10.0
) -> BackendSession:
    """Connect to the backend and run the startup handshake with ``params``."""
    loop = asyncio.get_running_loop()
    link = Link(typed=True, max_length=1 << 30)
    try:
        if address.is_unix:
            await asyncio.wait_for(
                loop.create_unix_connection(lambda: link, address.socket_path), timeout
            )
        else:
            await asyncio.wait_for(
                loop.create_connection(lambda: link, address.host, address.port), timeout
            )
    except (OSError, asyncio.TimeoutError) as exc:
        raise LocalEndpointError(f"backend PostgreSQL unreachable: {exc}") from exc
    try:
        return await asyncio.wait_for(_handshake(link, address, params), timeout)
    except BaseException:
        link.abort()
        raise


async def _handshake(
    link: Link, address: BackendAddress, params: dict[str, str]
) -> BackendSession:
    user = params["user"]
    link.write(wire.startup_message(params))
    statuses: dict[str, str] = {}
    pid = secret = 0
    scram_final: Callable[[bytes], bytes] | None = None
    scram_check: Callable[[bytes], None] | None = None
    while True:
        mtype, frame = await link.read_frame()
        if mtype == wire.ERROR_RESPONSE:
            raise BackendRefused(frame)
        if mtype == wire.AUTHENTICATION:
            code = wire.parse_auth_code(frame)
            pw = address.password or ""
            if code == 0:
                continue
            if code == 3:
                link.write(wire.password(pw))
            elif code == 5:
                inner = hashlib.md5((pw + user).encode()).hexdigest()
                digest = hashlib.md5(inner.encode() + frame[9:13]).hexdigest()
                link.write(wire.password("md5" + digest))
            elif code == 10:
                first, scram_final, scram_check = _scram_client(pw)
                body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
                link.write(wire.message(wire.PASSWORD, body))
            elif code == 11 and scram_final is not None:
                link.write(wire.message(wire.PASSWORD, scram_final(frame[9:])))
            elif code == 12 and scram_check is not None:
                scram_check(frame[9:])
            else:
                raise LocalEndpointError(f"backend asks for unsupported authentication {code}")
        elif mtype == wire.PARAMETER_STATUS:
            k, v = wire.parse_parameter_status(frame)
            statuses[k] = v
        elif mtype == wire.BACKEND_KEY_DATA:
            pid, secret = wire.parse_backend_key(frame)
        elif mtype == wire.READY_FOR_QUERY:
            return BackendSession(link=link, parameters=statuses, pid=pid, secret=secret)
        elif mtype in (wire.NOTICE_RESPONSE, wire.NEGOTIATE_PROTOCOL_VERSION):
            continue
        else:
            raise LocalEndpointError(f"unexpected backend message {chr(mtype)!r} during startup")


async def send_cancel(address: BackendAddress, pid: int, secret: int) -> None:
    """Deliver a CancelRequest for a backend session (on a new connection, as the protocol says)."""
    try:
        if address.is_unix:
            _, writer = await asyncio.open_unix_connection(address.socket_path)
        else:
            _, writer = await asyncio.open_connection(address.host, address.port)
    except OSError as exc:
        log.warning("could not deliver a cancel request to the backend: %s", exc)
        return
    writer.write(wire.cancel_request(pid, secret))
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
