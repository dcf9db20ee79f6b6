"""Shared test helpers. The ``dsql_local`` fixture itself comes from dsqlkit's pytest plugin."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator

import pytest

from dsqlkit.local import LocalDSQL, wire


class RawClient:
    """A hand-driven protocol client over TLS, for tests that send bytes no driver would."""

    def __init__(self, ep: LocalDSQL, *, sni: str | None = "localhost", direct: bool = False,
                 alpn: bool = True, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", ep.port), timeout=timeout)
        ctx = ssl.create_default_context(cafile=ep.ca_path)
        ctx.check_hostname = sni is not None
        if alpn:
            ctx.set_alpn_protocols(["postgresql"])
        if not direct:
            self.sock.sendall(wire.ssl_request())
            assert self.sock.recv(1) == b"S"
        self.tls = ctx.wrap_socket(self.sock, server_hostname=sni)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)

    def read_message(self) -> tuple[int, bytes]:
        """The next backend message (type, body); raises EOFError when the server closed."""
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            try:
                chunk = self.tls.recv(65536)
            except (ssl.SSLError, OSError) as exc:
                raise EOFError(str(exc)) from exc
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        length = struct.unpack("!i", self.buf[1:5])[0]
        mtype, body = self.buf[0], self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return mtype, body

    def read_until(self, mtype: int) -> list[tuple[int, bytes]]:
        out = []
        while True:
            m = self.read_message()
            out.append(m)
            if m[0] == mtype:
                return out

    def error(self) -> dict[str, str]:
        """Read until an ErrorResponse and return its fields."""
        for mtype, body in self.read_until(wire.ERROR_RESPONSE)[-1:]:
            return wire.parse_fields(bytes([mtype]) + b"\0\0\0\0" + body)
        raise AssertionError("unreachable")

    def closed(self) -> bool:
        try:
            self.read_message()
        except EOFError:
            return True
        return False

    def login(self, ep: LocalDSQL, user: str = "admin") -> None:
        self.send(wire.startup_message({"user": user, "database": "postgres"}))
        mtype, body = self.read_message()
        assert mtype == wire.AUTHENTICATION and struct.unpack("!i", body[:4])[0] == 3
        self.send(wire.password(ep.token(user)))
        self.read_until(wire.READY_FOR_QUERY)

    def close(self) -> None:
        try:
            self.tls.close()
        except OSError:
            pass


@pytest.fixture
def raw_client(dsql_local: LocalDSQL) -> Iterator[type[RawClient]]:
    clients: list[RawClient] = []

    class Tracked(RawClient):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(dsql_local, *args, **kwargs)  # type: ignore[arg-type]
            clients.append(self)

    yield Tracked
    for c in clients:
        c.close()
