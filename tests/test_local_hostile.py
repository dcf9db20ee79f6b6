"""Hostile and malformed input: every bad session gets an error and is closed, the server
keeps serving, and nothing allocates on a length field."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading

import psycopg
import pytest

from clock_support import settles
from dsqlkit.local import LocalDSQL, wire


@pytest.fixture
def healthy(dsql_local: LocalDSQL):  # type: ignore[no-untyped-def]
    """A session running queries in the background for the whole test; it must see no error."""
    stop = threading.Event()
    running = threading.Event()  # its first query answered (or it failed)
    errors: list[BaseException] = []
    count = [0]

    def run() -> None:
        try:
            with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
                while not stop.is_set():
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                    count[0] += 1
                    running.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            running.set()

    t = threading.Thread(target=run)
    t.start()
    running.wait(30)
    yield
    stop.set()
    t.join(30)
    assert not errors, errors
    assert count[0] > 0


def _tls(ep: LocalDSQL) -> ssl.SSLSocket:
    s = socket.create_connection(("127.0.0.1", ep.port), timeout=10)
    s.sendall(wire.ssl_request())
    assert s.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=ep.ca_path)
    return ctx.wrap_socket(s, server_hostname="localhost")


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (OSError, ssl.SSLError):
        return data


def _fatal(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", data[:40]
    (length,) = struct.unpack("!i", data[1:5])
    return wire.parse_fields(data[: 1 + length])


@pytest.mark.usefixtures("healthy")
def test_garbage_startup_packets(dsql_local: LocalDSQL) -> None:
    rng = random.Random(7)
    for _ in range(50):
        s = _tls(dsql_local)
        s.sendall(rng.randbytes(rng.randint(1, 300)))
        _read_all(s)  # whatever it answers, it must answer and close
        s.close()


@pytest.mark.usefixtures("healthy")
def test_oversized_startup_length_is_refused_without_reading_it(dsql_local: LocalDSQL) -> None:
    s = _tls(dsql_local)
    s.sendall(struct.pack("!ii", 0x7FFFFFF0, wire.PROTOCOL_V3))
    err = _fatal(_read_all(s))
    assert err["S"] == "FATAL"
    assert err["C"] == "08P01"
    assert err["M"] == "invalid length of startup packet"


@pytest.mark.usefixtures("healthy")
def test_truncated_startup_then_close(dsql_local: LocalDSQL) -> None:
    for cut in (1, 3, 7, 20):
        s = _tls(dsql_local)
        s.sendall(wire.startup_message({"user": "admin", "database": "postgres"})[:cut])
        s.close()


@pytest.mark.usefixtures("healthy")
def test_startup_not_utf8_and_bad_version(dsql_local: LocalDSQL) -> None:
    s = _tls(dsql_local)
    body = struct.pack("!i", wire.PROTOCOL_V3) + b"user\0\xff\xfe\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    assert _fatal(_read_all(s))["C"] == "08P01"
    s = _tls(dsql_local)
    body = struct.pack("!i", 4 << 16) + b"user\0admin\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    err = _fatal(_read_all(s))
    assert err["C"] == "0A000" and "unsupported frontend protocol 4.0" in err["M"]


@pytest.mark.usefixtures("healthy")
def test_password_phase_violations(dsql_local: LocalDSQL) -> None:
    s = _tls(dsql_local)
    s.sendall(wire.startup_message({"user": "admin", "database": "postgres"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(wire.query("SELECT 1"))  # not a password message
    assert _fatal(_read_all(s))["C"] == "08P01"
    s = _tls(dsql_local)
    s.sendall(wire.startup_message({"user": "admin", "database": "postgres"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(wire.message(wire.PASSWORD, b"x" * 20_000 + b"\0"))
    err = _fatal(_read_all(s))
    assert err["C"] == "08006" and "malformed token" in err.get("H", "")


@pytest.mark.usefixtures("healthy")
@pytest.mark.parametrize(
    ("payload", "sqlstate"),
    [
        (struct.pack("!ci", b"Q", 2), "08P01"),  # length below the minimum
        (struct.pack("!ci", b"Q", 64 * 1024 * 1024), "08P01"),  # above DSQL's 10 MiB
        (wire.message(ord("z"), b"junk"), "08P01"),  # not a frontend message type
    ],
)
def test_relay_violations_close_only_that_session(
    raw_client: type, payload: bytes, sqlstate: str, dsql_local: LocalDSQL
) -> None:
    c = raw_client()
    c.login(dsql_local)
    c.send(payload)
    err = c.error()
    assert err["S"] == "FATAL" and err["C"] == sqlstate
    assert c.closed()


@pytest.mark.usefixtures("healthy")
def test_malformed_body_closes_only_that_session(
    raw_client: type, dsql_local: LocalDSQL
) -> None:
    c = raw_client()
    c.login(dsql_local)
    c.send(wire.message(wire.QUERY, b"SELECT 1"))  # no terminating NUL
    err = c.error()
    assert err["C"] == "08P01" and err["S"] == "FATAL"
    assert c.closed()


@pytest.mark.usefixtures("healthy")
def test_tls_handshake_garbage(dsql_local: LocalDSQL) -> None:
    for first in (b"\x16\x03\x01\x00\x05hello", b"\x16" + os.urandom(200)):
        s = socket.create_connection(("127.0.0.1", dsql_local.port), timeout=10)
        s.sendall(first)
        _read_all(s)
        s.close()


@pytest.mark.usefixtures("healthy")
def test_plaintext_garbage_and_silent_clients(dsql_local: LocalDSQL) -> None:
    s = socket.create_connection(("127.0.0.1", dsql_local.port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    err = _fatal(_read_all(s))
    assert err["C"] == "08P01"
    accepted = dsql_local.server.stats["accepted"]
    silent = [socket.create_connection(("127.0.0.1", dsql_local.port)) for _ in range(20)]
    # The endpoint has accepted all of them and waits for their first bytes.
    settles(lambda: dsql_local.server.stats["accepted"] >= accepted + 20,
            "the endpoint to accept the silent clients")
    with psycopg.connect(dsql_local.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for x in silent:
        x.close()


def test_endpoint_still_serves_after_abuse(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn()) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
