"""A ``dsqlkit local`` endpoint in a child process, and a hand-driven protocol client.

The endpoint runs in its own process so that its memory (RSS) and file descriptors can be
measured apart from the load generator's, and so that the two do not share a GIL. Unlike
``dsqlkit local --json`` (bench/_endpoint.py), the child takes any ``LocalDSQL`` argument,
including extra trusted key pairs with session tokens.

Run as a script, this file *is* the child: ``python reliability_endpoint.py '<json kwargs>'``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dsqlkit.auth import sigv4
from dsqlkit.local import wire


@dataclass(frozen=True)
class EndpointInfo:
    """How to reach a running endpoint, and which process it is."""

    port: int
    ca_path: str
    region: str
    hostname: str
    hostnames: tuple[str, ...]
    credentials: sigv4.Credentials = field(repr=False)
    backend_dsn: str = field(repr=False)
    pid: int
    log_path: str = ""

    def token(self, user: str = "admin", *, creds: sigv4.Credentials | None = None,
              host: str = "localhost") -> str:
        return sigv4.presign_token(host, self.region, creds or self.credentials,
                                   action=sigv4.action_for_user(user))

    def url(self, user: str = "admin") -> str:
        """A connection string for dsqlkit's connector (credentials passed separately)."""
        return (f"postgres://{user}@localhost:{self.port}/postgres?region={self.region}"
                f"&sslrootcert={self.ca_path}")

    def dsn(self, user: str = "admin", *, creds: sigv4.Credentials | None = None) -> str:
        return (f"host=localhost port={self.port} user={user} dbname=postgres "
                f"sslmode=verify-full sslrootcert={self.ca_path} "
                f"password={self.token(user, creds=creds)}")

    def rss(self) -> int:
        """The endpoint process's resident memory, in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{self.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def _creds_json(c: sigv4.Credentials) -> list[str | None]:
    return [c.access_key, c.secret_key, c.session_token]


@contextmanager
def child_endpoint(**kwargs: Any) -> Iterator[EndpointInfo]:
    """Start ``LocalDSQL(ephemeral=True, port=0, **kwargs)`` in a child process.

    ``trust`` may map access key ids to :class:`~dsqlkit.auth.sigv4.Credentials`. The child's
    log (WARNING and above, with tracebacks) goes to a file, read by :meth:`EndpointInfo.log_text`.
    """
    trust = {k: _creds_json(v) for k, v in (kwargs.pop("trust", None) or {}).items()}
    args = json.dumps({**kwargs, "trust": trust})
    fd, log_path = tempfile.mkstemp(prefix="dsqlkit-endpoint-", suffix=".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
    try:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), args],
                                stdout=subprocess.PIPE, stderr=fd, text=True, env=env)
    finally:
        os.close(fd)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"the endpoint did not start:\n{f.read()[-3000:]}")
        d = json.loads(line)
        yield EndpointInfo(
            port=d["port"], ca_path=d["ca_path"], region=d["region"], hostname=d["hostname"],
            hostnames=tuple(d["hostnames"]), credentials=sigv4.Credentials(*d["credentials"]),
            backend_dsn=d["backend_dsn"], pid=proc.pid, log_path=log_path,
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(log_path)


def _child_main(raw: str) -> None:
    import logging

    from dsqlkit.local import LocalDSQL

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    kwargs = json.loads(raw)
    trust = {k: sigv4.Credentials(*v) for k, v in kwargs.pop("trust").items()}
    ep = LocalDSQL(ephemeral=True, port=0, trust=trust, **kwargs)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ep.start()
    try:
        print(json.dumps({
            "port": ep.port, "ca_path": ep.ca_path, "region": ep.region,
            "hostname": ep.hostname, "hostnames": list(ep.hostnames),
            "credentials": _creds_json(ep.credentials), "backend_dsn": ep.backend_dsn,
        }), flush=True)
        ep.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ep.stop()


# ---------------------------------------------------------------------------------------------
# a hand-driven client


class Closed(Exception):
    """The server closed the connection (EOF, reset, or a TLS failure). ``reset``: the close
    was a TCP reset, which happens when a server closes a socket with unread input (here,
    messages pipelined behind the one that ended the session) and may discard what the
    server sent last."""

    def __init__(self, message: str, *, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


class RawConn:
    """One connection to the endpoint, driven byte by byte: plaintext, SSLRequest then TLS,
    or direct TLS; messages are read back with :meth:`read`."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port),
                                                            timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sent = 0

    def tls(self, ca_path: str, *, sni: str | None = "localhost", direct: bool = False,
            alpn: list[str] | None = None) -> RawConn:
        """Upgrade to TLS: after an SSLRequest (answered ``S``) or directly."""
        if not direct:
            self.send(wire.ssl_request())
            answer = self.sock.recv(1)
            if answer != b"S":
                raise Closed(f"SSLRequest answered {answer!r}")
        ctx = ssl.create_default_context(cafile=ca_path)
        ctx.check_hostname = sni is not None
        if alpn is None:
            alpn = ["postgresql"]
        if alpn:
            ctx.set_alpn_protocols(alpn)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=sni)
        except (ssl.SSLError, OSError) as exc:
            raise Closed(f"TLS handshake failed: {exc}") from exc
        return self

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise Closed(str(exc)) from exc
        self.sent += 1

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise Closed(str(exc), reset=isinstance(exc, ConnectionResetError)) from exc
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def read(self) -> tuple[int, bytes]:
        """The next message as (type, whole frame); raises Closed or TimeoutError."""
        while len(self.buf) < 5:
            self._fill()
        (length,) = struct.unpack_from("!i", self.buf, 1)
        while len(self.buf) < 1 + length:
            self._fill()
        frame = self.buf[: 1 + length]
        self.buf = self.buf[1 + length:]
        return frame[0], frame

    def read_byte(self) -> bytes:
        while not self.buf:
            self._fill()
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def login(self, password: str, user: str = "admin") -> list[tuple[int, bytes]]:
        """Startup and password; returns the messages up to ReadyForQuery (or raises)."""
        self.send(wire.startup_message({"user": user, "database": "postgres"}))
        mtype, frame = self.read()
        if mtype != wire.AUTHENTICATION:
            raise Closed(f"startup answered {chr(mtype)}: {wire.parse_fields(frame)}")
        self.send(wire.password(password))
        out = []
        while True:
            mtype, frame = self.read()
            out.append((mtype, frame))
            if mtype == wire.ERROR_RESPONSE:
                raise Closed(f"login refused: {wire.parse_fields(frame)}")
            if mtype == wire.READY_FOR_QUERY:
                return out

    def rest(self, timeout: float = 10.0) -> tuple[list[tuple[int, bytes]], bool]:
        """Every message until the server closes: (messages, closed). ``closed`` is False
        when the server kept the connection open for ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(self.read())
            except Closed:
                return out, True
            except TimeoutError:
                return out, False
            except struct.error:
                return out, True
        return out, False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def error_of(frame: bytes) -> tuple[str, str, str]:
    """(severity, sqlstate, message) of an ErrorResponse frame."""
    f = wire.parse_fields(frame)
    return f.get("S", "?"), f.get("C", "?"), f.get("M", "")


def hint_of(frame: bytes) -> str:
    return wire.parse_fields(frame).get("H", "")


if __name__ == "__main__":
    _child_main(sys.argv[1])
