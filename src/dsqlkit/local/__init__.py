"""``dsqlkit local``: a local Aurora DSQL endpoint over an embedded PostgreSQL.

>>> with LocalDSQL(ephemeral=True, port=0) as ep:       # doctest: +SKIP
...     import psycopg
...     with psycopg.connect(ep.dsn()) as conn:
...         conn.execute("SELECT 1")

The endpoint speaks the PostgreSQL protocol over mandatory TLS (SSLRequest or direct TLS),
verifies each password as a real DSQL IAM token (SigV4, against key pairs it trusts), and
forwards each session to its own backend PostgreSQL session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import string
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dsqlkit.auth import sigv4
from dsqlkit.errors import LocalEndpointError

if TYPE_CHECKING:
    from dsqlkit.local.occ.engine import SchemaMode

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_PORT = 5432
_ID_ALPHABET = string.ascii_lowercase + string.digits


def default_data_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "dsqlkit" / "local"


@dataclass(frozen=True)
class EndpointState:
    """What a data directory remembers: the cluster's identity and the trusted key pair."""

    cluster_id: str
    credentials: sigv4.Credentials

    @classmethod
    def load_or_create(cls, directory: Path) -> EndpointState:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "endpoint.json"
        if path.exists():
            data = json.loads(path.read_text())
            return cls(
                cluster_id=data["cluster_id"],
                credentials=sigv4.Credentials(data["access_key_id"], data["secret_access_key"]),
            )
        state = cls(
            cluster_id="".join(secrets.choice(_ID_ALPHABET) for _ in range(26)),
            credentials=sigv4.Credentials(
                "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits)
                                 for _ in range(16)),
                secrets.token_urlsafe(30)[:40],
            ),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"cluster_id": state.cluster_id,
                       "access_key_id": state.credentials.access_key,
                       "secret_access_key": state.credentials.secret_key}, f)
        os.replace(tmp, path)
        return state


def _profile_credentials(profile: str) -> sigv4.Credentials:
    import botocore.session

    session = botocore.session.Session(profile=profile)
    creds = session.get_credentials()
    if creds is None:
        raise LocalEndpointError(f"AWS profile {profile!r} has no credentials")
    frozen = creds.get_frozen_credentials()
    return sigv4.Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class LocalDSQL:
    """A local DSQL endpoint: start it, connect to it, stop it.

    ``data_dir`` keeps the data, CA and key pair across restarts (default: a per-user state
    directory); ``ephemeral=True`` uses a temporary directory removed on stop. ``port=0``
    picks a free port. ``backend_url`` fronts an existing PostgreSQL instead of starting one.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        ephemeral: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
        region: str = DEFAULT_REGION,
        backend: str = "auto",
        backend_url: str | None = None,
        profile: str | None = None,
        trust: Mapping[str, sigv4.Credentials] | None = None,
        max_connections: int = 1000,
        connection_rate: float = 100.0,
        connection_burst: int = 1000,
        max_connection_age: float = 3600.0,
        occ_mode: str = "commit",
        lock_timeout: float = 0.001,
        schema_conflicts: bool | str = True,
        inject: Mapping[str, float] | str | None = None,
        seed: int | None = None,
        rules: bool = True,
        transaction_age_limit: float = 300.0,
        use_uvloop: bool = True,
        cluster_id: str | None = None,
        etc_hosts: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        if ephemeral and data_dir is not None:
            raise LocalEndpointError("pass either data_dir or ephemeral=True, not both")
        from dsqlkit.config import is_cluster_id

        if cluster_id is not None and not is_cluster_id(cluster_id):
            raise LocalEndpointError(
                f"cluster id {cluster_id!r} is not a DSQL cluster id: 26 characters of a-z "
                "and 0-9")
        # None: the data directory's id (a new random one for an ephemeral endpoint).
        self.requested_cluster_id = cluster_id
        # A hosts file that gets the cluster's name while the endpoint runs (hosts.py).
        self.etc_hosts = etc_hosts
        self._hosts_entry: Any = None
        self._tmp: str | None = None
        if ephemeral:
            self._tmp = tempfile.mkdtemp(prefix="dsqlkit-local-")
            self.data_dir = Path(self._tmp)
        else:
            self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.requested_port = port
        self.bind_host = host
        self.region = region
        self.backend_kind = backend
        self.backend_url_arg = backend_url
        self.profile = profile
        self.extra_trust = dict(trust or {})
        self.max_connections = max_connections
        self.connection_rate = connection_rate
        self.connection_burst = connection_burst
        self.max_connection_age = max_connection_age
        if occ_mode not in ("commit", "statement", "off"):
            raise LocalEndpointError(
                f"occ_mode must be 'commit', 'statement' or 'off', not {occ_mode!r}")
        self.occ_mode = occ_mode
        self.lock_timeout = lock_timeout
        self.schema_conflicts = _schema_mode(schema_conflicts)
        from dsqlkit.local.faults import parse_spec

        self.inject = parse_spec(inject) if isinstance(inject, str) else dict(inject or {})
        self.seed = seed
        # rules=False relays statements untouched: for measuring what DSQL's rules cost.
        self.rules = rules
        self.transaction_age_limit = transaction_age_limit
        # Injected clocks (tests): connection and transaction ages and the connection-rate
        # quota, and token expiry. After moving ``clock``, call check_ages().
        self.clock = clock
        self.wall_clock = wall_clock
        if not rules:
            self.occ_mode = "off"
            self.schema_conflicts = "off"
        self.use_uvloop = use_uvloop
        self.port = 0
        self.state: EndpointState | None = None
        self.postgres: Any = None  # ManagedPostgres when we run our own
        self._address: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ identity

    @property
    def cluster_id(self) -> str:
        if self.requested_cluster_id is not None:
            return self.requested_cluster_id
        assert self.state is not None, "start() the endpoint first"
        return self.state.cluster_id

    @property
    def hostname(self) -> str:
        """The DSQL-style endpoint name, ``<cluster-id>.dsql.<region>.on.aws``."""
        return f"{self.cluster_id}.dsql.{self.region}.on.aws"

    @property
    def host(self) -> str:
        return "localhost"

    @property
    def hostnames(self) -> tuple[str, ...]:
        return ("localhost", "127.0.0.1", "::1", self.hostname)

    @property
    def credentials(self) -> sigv4.Credentials:
        if self.profile:
            return _profile_credentials(self.profile)
        assert self.state is not None, "start() the endpoint first"
        return self.state.credentials

    @property
    def ca_path(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def ca_bundle_path(self) -> str:
        """The system's trusted CAs plus the endpoint's CA, for clients that trust the system
        store (``sslrootcert=system``, asyncpg's ``ssl=True``, requests): written at start."""
        return str(self.data_dir / "tls" / "ca-bundle.pem")

    @property
    def hosts_line(self) -> str:
        """The hosts-file line that sends the cluster's name to this endpoint."""
        return f"127.0.0.1 {self.hostname}"

    # ------------------------------------------------------------ connecting

    def token(self, user: str = "admin", *, expires_in: int = 900, host: str | None = None) -> str:
        return sigv4.presign_token(
            host or self.host, self.region, self.credentials,
            action=sigv4.action_for_user(user), expires_in=expires_in,
        )

    def dsn(self, user: str = "admin", **extra: str | int) -> str:
        """A libpq connection string with a freshly minted token as password."""
        params: dict[str, str | int] = {
            "host": self.host, "port": self.port, "user": user, "dbname": "postgres",
            "sslmode": "verify-full", "sslrootcert": self.ca_path,
            "password": self.token(user),
        }
        params.update(extra)
        return " ".join(f"{k}={_libpq_quote(str(v))}" for k, v in params.items())

    def url(self, user: str = "admin") -> str:
        """A ``postgres://`` URL without password, for dsqlkit's connector."""
        return (f"postgres://{quote(user)}@{self.host}:{self.port}/postgres"
                f"?region={self.region}&sslrootcert={quote(self.ca_path)}")

    def env(self) -> dict[str, str]:
        """What DSQL clients read from their environment, for this endpoint: the AWS
        credentials and region that sign tokens it accepts, libpq's ``PG*``, the cluster
        endpoint and user the official samples and suites read, and CA files for clients
        that trust the system store (``SSL_CERT_FILE``: OpenSSL, hence libpq's
        ``sslrootcert=system``, Python's ``ssl``, Go; ``REQUESTS_CA_BUNDLE``: requests;
        ``NODE_EXTRA_CA_CERTS``: Node; ``SSL_CERT_PATH``: the Python connector's suite)."""
        creds = self.credentials
        env = {
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,  # what AWS CLI v1 reads
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": "admin",
            "PGDATABASE": "postgres",
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": self.ca_path,
            "CLUSTER_ENDPOINT": self.hostname,
            "CLUSTER_USER": "admin",
            "REGION": self.region,
            "SSL_CERT_FILE": self.ca_bundle_path,
            "REQUESTS_CA_BUNDLE": self.ca_bundle_path,
            "NODE_EXTRA_CA_CERTS": self.ca_path,
            "SSL_CERT_PATH": self.ca_path,
        }
        if creds.session_token:
            env["AWS_SESSION_TOKEN"] = creds.session_token
        return env

    @property
    def backend_dsn(self) -> str:
        """libpq DSN straight to the backend PostgreSQL (superuser), bypassing the endpoint."""
        assert self._address is not None, "start() the endpoint first"
        return str(self._address.dsn())

    @property
    def backend_url(self) -> str:
        a = self._address
        assert a is not None, "start() the endpoint first"
        auth = quote(a.user) + (f":{quote(a.password)}" if a.password else "")
        if a.is_unix:
            return f"postgresql://{auth}@/{a.database}?host={quote(a.host)}&port={a.port}"
        return f"postgresql://{auth}@{a.host}:{a.port}/{a.database}"

    # ------------------------------------------------------------ lifecycle

    def _lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LocalEndpointError(
                f"another dsqlkit local is running on {self.data_dir}; stop it or pass "
                "--data-dir DIR (or --ephemeral)"
            ) from None
        self._lock_fd = fd

    def _trusted(self) -> dict[str, sigv4.Credentials]:
        assert self.state is not None
        trusted = {self.state.credentials.access_key: self.state.credentials}
        if self.profile:
            c = _profile_credentials(self.profile)
            trusted = {c.access_key: c}
        trusted.update(self.extra_trust)
        return trusted

    def start(self) -> LocalDSQL:
        from dsqlkit.local import catalog
        from dsqlkit.local.backend import BackendAddress, ManagedPostgres
        from dsqlkit.local.tls import ensure_tls

        if self._thread is not None:
            return self
        try:
            self.state = EndpointState.load_or_create(self.data_dir)
            ensure_tls(self.data_dir / "tls", list(self.hostnames))
            write_ca_bundle(Path(self.ca_path), Path(self.ca_bundle_path))
            if self.backend_url_arg:
                self._address = BackendAddress.from_url(self.backend_url_arg)
            else:
                self._lock()
                self.postgres = ManagedPostgres(
                    self.data_dir / "pgdata",
                    kind=self.backend_kind,
                    max_connections=self.max_connections + 50,
                    durable=self._tmp is None,
                    lock_wait_ms=max(1, round(self.lock_timeout * 1000)),
                )
                self._address = self.postgres.start()
            catalog.bootstrap(self._address)
            self._start_server()
            if self.etc_hosts is not None:
                from dsqlkit.local.hosts import HostsEntry

                self._hosts_entry = HostsEntry(self.hostname, self.etc_hosts)
                self._hosts_entry.add()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = _new_loop(self.use_uvloop)
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_setup())
            except BaseException as exc:
                errors.append(exc)
                self._detach_log()
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._server.close())
                self._detach_log()
                loop.close()

        self._thread = threading.Thread(target=run, name="dsqlkit-local", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]

    async def _serve_setup(self) -> None:
        server = self.build_server()
        self.port = _bind(server, self.bind_host, self.requested_port)
        if self.postgres is not None and server.monitor is not None:
            self._report_lock_waits(server.monitor)
        server.start_accepting()
        self._server = server

    def _report_lock_waits(self, monitor: Any) -> None:
        """The PostgreSQL we manage logs its lock waits: the lock monitor asks about them as
        they are written, and keeps its polling as a slow safety net."""
        from dsqlkit.local.occ.lockwaits import LockWaitParser

        parser = LockWaitParser()
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def listen(chunk: bytes) -> None:  # on the loop, or the log's thread before attach
            pids = parser.feed(chunk)
            if not pids:
                return
            if threading.get_ident() == loop_thread:
                monitor.reported(pids)
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                    loop.call_soon_threadsafe(monitor.reported, pids)

        self.postgres.log_listeners[:] = [listen]
        self._attach_log()
        monitor.delay = max(monitor.delay, 0.05)

    def _detach_log(self) -> None:
        """The loop is stopping: a thread drains the log again (call it on the loop)."""
        if self.postgres is not None and self.postgres.log is not None:
            self.postgres.log.detach()

    def _attach_log(self) -> None:
        """Read the managed PostgreSQL's log on the endpoint's loop (dsqlkit.local.pglog)."""
        if self.postgres is not None and self.postgres.log is not None:
            self.postgres.log.attach(asyncio.get_running_loop())

    def build_server(self) -> Any:
        from dsqlkit.local.faults import Faults
        from dsqlkit.local.server import EndpointConfig, Server
        from dsqlkit.local.tls import TLSFiles, server_context

        tls_dir = self.data_dir / "tls"
        files = TLSFiles(tls_dir / "ca.pem", tls_dir / "ca.key", tls_dir / "server.pem",
                         tls_dir / "server.key")
        config = EndpointConfig(
            region=self.region,
            hostnames=self.hostnames,
            credentials=self._trusted(),
            max_connections=self.max_connections,
            connection_rate=self.connection_rate,
            connection_burst=self.connection_burst,
            max_connection_age=self.max_connection_age,
            occ_mode=self.occ_mode,
            lock_timeout=self.lock_timeout,
            schema_conflicts=self.schema_conflicts,
            faults=Faults(self.inject, self.seed),
            rules=self.rules,
            transaction_age_limit=self.transaction_age_limit,
        )
        if self.clock is not None:
            config.clock = self.clock
        if self.wall_clock is not None:
            config.wall_clock = self.wall_clock
        return Server(config, server_context(files), lambda: self._address)

    def check_ages(self) -> None:
        """After moving an injected ``clock``: end the sessions past the connection-age cap
        (a session in a transaction ends when the transaction does), as its timer would."""
        self.call(self.server.check_ages)

    def restart_backend(self) -> None:
        """Restart the managed PostgreSQL (e.g. after :meth:`kill_backend`)."""
        if self.postgres is None:
            raise LocalEndpointError("this endpoint fronts a backend it does not manage")
        self._address = self.postgres.restart()
        if self._loop is not None and self._server is not None \
                and self._server.monitor is not None:
            self.call(self._attach_log)

    def kill_backend(self) -> None:
        """SIGKILL the managed PostgreSQL, as a crash would (chaos testing)."""
        if self.postgres is None:
            raise LocalEndpointError("this endpoint fronts a backend it does not manage")
        self.postgres.kill()

    def stop(self) -> None:
        if self._hosts_entry is not None:
            self._hosts_entry.remove()
            self._hosts_entry = None
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
        self._thread = None
        self._loop = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def run_forever(self) -> None:
        """Serve in the calling thread until interrupted (what ``dsqlkit local`` does)."""
        assert self._thread is not None
        try:
            self._thread.join()
        finally:
            self.stop()

    def __enter__(self) -> LocalDSQL:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> Any:
        return self._server

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the endpoint's event loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_call(fn, *args), self._loop).result(30)


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result


def _bind(server: Any, host: str, requested: int | None) -> int:
    if requested is not None:
        return int(server.bind(host, requested))
    try:
        return int(server.bind(host, DEFAULT_PORT))
    except OSError:
        port = int(server.bind(host, 0))
        log.warning("port %d is in use; listening on %d instead", DEFAULT_PORT, port)
        return port


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _schema_mode(value: bool | str) -> SchemaMode:
    """``schema_conflicts``: True means DSQL's rule (``relation``), False ``off``."""
    if value is True or value == "relation":
        return "relation"
    if value is False or value == "off":
        return "off"
    if value == "strict":
        return "strict"
    raise LocalEndpointError(
        f"schema_conflicts must be 'relation', 'strict', 'off' or a bool, not {value!r}")


# Where distributions keep the system's CA bundle, when Python's ssl module does not say.
_SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSDs
    "/etc/ssl/ca-bundle.pem",  # openSUSE
)


def system_ca_file() -> str | None:
    """The CA bundle clients of this machine trust: ``SSL_CERT_FILE`` if set, else OpenSSL's
    default file, else a distribution's."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile,
                      *_SYSTEM_CA_FILES):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def write_ca_bundle(ca: Path, bundle: Path) -> None:
    """``bundle`` = the system's CAs + the endpoint's ``ca`` (rewritten only when it changes;
    a bundle that is itself the system file is not included twice)."""
    system = system_ca_file()
    parts = []
    if system and os.path.realpath(system) != os.path.realpath(bundle):
        parts.append(Path(system).read_bytes().rstrip(b"\n") + b"\n")
    parts.append(ca.read_bytes())
    data = b"".join(parts)
    if bundle.exists() and bundle.read_bytes() == data:
        return
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, bundle)


def _libpq_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


__all__ = ["LocalDSQL", "default_data_dir"]
