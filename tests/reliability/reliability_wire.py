"""Wire fuzzing of the local endpoint: malformed and mutated protocol messages in every phase
(plaintext, SSL negotiation and direct TLS, startup, authentication, simple and extended
query, COPY, cancel), sent over many sessions while a healthy session runs transfers.

Each *script* drives one session and classifies how the endpoint ended it:

* ``error``: an ErrorResponse, then the endpoint closed the connection (a FATAL, or an 08P01
  that ends the session as PostgreSQL does);
* ``closed``: the endpoint closed without an error where no PostgreSQL server could answer
  one (a failed TLS handshake, a CancelRequest, a Terminate);
* ``client-closed``: the script stopped mid-message (a hostile length field with a short
  body) and closed; the endpoint must merely not allocate for the length it was promised;
* ``violation``: anything else (no answer, a close without an error after a complete
  malformed message, an answer that is not an error) -- each recorded with its reason.

:func:`run_wire_fuzz` runs scripts from several threads until a message budget is spent,
holds sessions with hostile length fields open while it measures the endpoint's memory, and
returns a :class:`WireReport`.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
from reliability_endpoint import Closed, EndpointInfo, RawConn, error_of
from reliability_tokens import Context, RandomDraw, mutate

from dsqlkit.local import wire

MiB = 1024 * 1024


@dataclass
class Tally:
    """Counts shared by the fuzzing threads."""

    messages: int = 0
    sessions: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, script: str, ending: str, messages: int,
               errors: list[tuple[str, str]], why: str = "") -> None:
        with self.lock:
            self.messages += messages
            self.sessions[script] += 1
            self.endings[ending] += 1
            for severity, sqlstate in errors:
                self.errors[f"{severity} {sqlstate}"] += 1
            if ending == "violation":
                self.violations.append(f"{script}: {why}")


class Session:
    """One script's session: counts what it sent and what came back."""

    def __init__(self, script: str, info: EndpointInfo, tally: Tally) -> None:
        self.script = script
        self.info = info
        self.tally = tally
        self.sent = 0
        self.errors: list[tuple[str, str]] = []
        self.conn: RawConn | None = None
        self.done = False
        self.detail = ""
        self.last: list[bytes] = []

    def open(self, *, tls: bool = True, **tls_args: Any) -> RawConn:
        self.conn = RawConn(self.info.port, timeout=10)
        if tls:
            self.conn.tls(self.info.ca_path, **tls_args)
        return self.conn

    def send(self, data: bytes, messages: int = 1) -> None:
        assert self.conn is not None
        self.sent += messages
        self.conn.send(data)

    def note(self, frame: bytes) -> tuple[str, str, str]:
        err = error_of(frame)
        self.errors.append((err[0], err[1]))
        return err

    def end(self, ending: str, why: str = "") -> None:
        if not self.done:
            self.done = True
            if self.detail and why:
                why = f"[{self.detail}] {why}"
            self.tally.record(self.script, ending, self.sent, self.errors, why)
        if self.conn is not None:
            self.conn.close()

    def expect_error_then_close(self, what: str, *, may_close: bool = False,
                                errored: bool = False) -> None:
        """The endpoint must answer with an error and close (or, with ``may_close``, it may
        just close); ``errored``: the error was read already."""
        assert self.conn is not None
        msgs, closed = self.conn.rest()
        errors = [m for m in msgs if m[0] == wire.ERROR_RESPONSE]
        for _, frame in errors:
            self.note(frame)
        others = [chr(m[0]) for m in msgs if m[0] not in (wire.ERROR_RESPONSE,
                                                          wire.NOTICE_RESPONSE)]
        if not closed:
            self.end("violation", f"{what}: still open after 10 s (got {others or 'nothing'})")
        elif (errors or errored) and not others:
            self.end("error")
        elif not msgs and may_close:
            self.end("closed")
        else:
            self.end("violation", f"{what}: closed after {others or 'no error'}")


# ---------------------------------------------------------------------------------------------
# building blocks


def cstr(s: bytes) -> bytes:
    return s + b"\0"


def startup(params: dict[str, str], version: int = wire.PROTOCOL_V3) -> bytes:
    body = struct.pack("!i", version) + b"".join(
        cstr(k.encode()) + cstr(v.encode()) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def flip(rng: random.Random, data: bytes, n: int | None = None) -> bytes:
    """``data`` with a few bytes changed, inserted or removed."""
    out = bytearray(data)
    for _ in range(n or rng.randint(1, 4)):
        op = rng.randrange(3)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 4))
        elif out:
            del out[at:at + rng.randint(1, 4)]
    return bytes(out)


SQL = [
    "SELECT 1", "SELECT $1::int", "SELECT 'a' || $1", "SELECT * FROM fuzz_missing",
    "SELECT count(*) FROM fuzz_copy", "UPDATE fuzz_missing SET a = 1",
    "DELETE FROM fuzz_copy WHERE a = 'never'", "INSERT INTO fuzz_copy VALUES ('q')",
    "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "SHOW server_version",
    "SET search_path = public", "SELECT 1; SELECT 2", "", ";", "SELECT E'\\xff'",
    "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE ALL", "DECLARE c CURSOR FOR SELECT 1",
    "LISTEN ch", "NOTIFY ch", "SELECT pg_backend_pid()", "SELECT version()",
    "SELECT repeat('x', 70000)", "SELECT generate_series(1, 200)",
    "SELECT a FROM fuzz_copy LIMIT 3 FOR UPDATE", "COPY (SELECT 1) TO STDOUT",
    "SELECT 1 /* comment */ -- tail", "SELECT '\u00e9\u4e2d\U0001f600'", "VALUES (1, 2)",
    "SELECT $1, $2, $3", "SELECT 1e400::float8", "SELECT 1/0",
]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ();,'\"$*-/\\:=<>\u00e9\u4e2d\t\n"


def fuzz_sql(rng: random.Random) -> str:
    sql = rng.choice(SQL)
    for _ in range(rng.choice((0, 0, 1, 2, 5))):
        at = rng.randint(0, len(sql))
        op = rng.randrange(3)
        if op == 0:
            sql = sql[:at] + rng.choice(_CHARS) + sql[at + 1:]
        elif op == 1:
            sql = sql[:at] + "".join(rng.choice(_CHARS) for _ in range(rng.randint(1, 8))) \
                + sql[at:]
        else:
            sql = sql[:at] + sql[at + rng.randint(1, 6):]
    return sql


def _i16(n: int) -> bytes:
    return struct.pack("!h", n)


def _i32(n: int) -> bytes:
    return struct.pack("!i", n)


def relay_unit(rng: random.Random) -> tuple[bytes, int, int, str]:
    """One unit for a logged-in session: (bytes, messages, ReadyForQuery expected, kind).

    Framing is always valid; bodies may be malformed. A unit ends with Sync (or is a simple
    Query), so it gets exactly one ReadyForQuery unless its error ends the session.
    """
    kind = rng.choice(("query", "query", "extended", "extended", "copy-out", "function",
                       "junk-body", "cancel-noise"))
    if kind == "query":
        body = fuzz_sql(rng).encode()
        if rng.random() < 0.05:
            body = flip(rng, body)  # may hold a NUL or invalid UTF-8: FATAL 08P01
        return wire.message(wire.QUERY, cstr(body)), 1, 1, kind
    if kind == "extended":
        name = rng.choice((b"", b"s1", b"s2", rng.randbytes(3).hex().encode()))
        portal = rng.choice((b"", b"p1"))
        sql = fuzz_sql(rng).encode()
        n_types = rng.choice((0, 0, 1, 3, -1))
        types = b"".join(_i32(rng.choice((0, 23, 25, 16, 2**31 - 1, -5))) for _ in
                         range(max(n_types, 0)))
        msgs = [wire.message(wire.PARSE, cstr(name) + cstr(sql) + _i16(n_types) + types)]
        n_params = rng.choice((0, 1, 2, 3, -2))
        params = []
        for _ in range(max(n_params, 0)):
            value = rng.choice((b"1", b"abc", b"\xff\xfe", b"", rng.randbytes(8)))
            length = rng.choice((len(value), len(value), -1, -7, len(value) + 3))
            params.append(_i32(length) + (value if length >= 0 else b""))
        formats = rng.choice(((), (0,), (1,), (0, 1, 0), (7,)))
        bind = (cstr(portal) + cstr(name) + _i16(len(formats))
                + b"".join(_i16(f) for f in formats) + _i16(n_params) + b"".join(params)
                + _i16(rng.choice((0, 1, 2))) + b"".join(_i16(rng.choice((0, 1)))
                                                          for _ in range(2)))
        msgs.append(wire.message(wire.BIND, bind))
        if rng.random() < 0.5:
            msgs.append(wire.message(wire.DESCRIBE, rng.choice((b"S", b"P", b"X"))
                                     + cstr(rng.choice((name, portal, b"nope")))))
        msgs.append(wire.message(wire.EXECUTE, cstr(rng.choice((portal, b"nope")))
                                 + _i32(rng.choice((0, 1, -1, 2**31 - 1)))))
        if rng.random() < 0.3:
            msgs.append(wire.message(wire.CLOSE, rng.choice((b"S", b"P", b"?"))
                                     + cstr(rng.choice((name, portal)))))
        if rng.random() < 0.2:
            msgs.append(wire.message(wire.FLUSH))
        if rng.random() < 0.2:
            i = rng.randrange(len(msgs))
            m = msgs[i]
            body = flip(rng, m[5:])
            msgs[i] = wire.message(m[0], body)
        msgs.append(wire.SYNC_MSG)
        return b"".join(msgs), len(msgs), 1, kind
    if kind == "copy-out":
        return wire.query(rng.choice(("COPY (SELECT 1) TO STDOUT",
                                      "COPY fuzz_copy TO STDOUT"))), 1, 1, kind
    if kind == "function":
        nargs = rng.randint(0, 2)
        args = b"".join(_i32(4) + _i32(rng.randrange(2**31)) for _ in range(nargs))
        # An OID far above the catalog's: no function runs, the backend reports 42883.
        body = (_i32(rng.randrange(2**31 - 20000) + 20000) + _i16(1) + _i16(1) + _i16(nargs)
                + args + _i16(0))
        return wire.message(wire.FUNCTION_CALL, body), 1, 1, kind
    if kind == "junk-body":
        mtype = rng.choice((wire.QUERY, wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE,
                            wire.CLOSE))
        return (wire.message(mtype, rng.randbytes(rng.randint(0, 40))) + wire.SYNC_MSG, 2, 1,
                kind)
    # Messages outside COPY that a server ignores, then a Sync.
    noise = rng.choice((wire.message(wire.COPY_DATA, b"stray"), wire.message(wire.COPY_DONE),
                        wire.message(wire.COPY_FAIL, b"x\0"), wire.message(wire.FLUSH)))
    return noise + wire.SYNC_MSG, 2, 1, kind


def copy_in_data(rng: random.Random) -> list[bytes]:
    """What a client sends once the endpoint answered ``COPY fuzz_copy FROM STDIN`` with
    CopyInResponse: rows (some malformed), then CopyDone or CopyFail."""
    msgs = []
    for _ in range(rng.randint(0, 5)):
        row = rng.choice((b"x\n", b"a\tb\n", b"\\N\n", b"\xff\n", rng.randbytes(6),
                          b"y" * 1000 + b"\n"))
        msgs.append(wire.message(wire.COPY_DATA, row))
    if rng.random() < 0.7:
        msgs.append(wire.message(wire.COPY_DONE))
    else:
        msgs.append(wire.message(wire.COPY_FAIL, cstr(b"fuzz says no")))
    return msgs


def framing_violation(rng: random.Random) -> tuple[bytes, bool]:
    """A message whose framing is invalid: (bytes, complete). ``complete`` is False when the
    endpoint must wait for more bytes (a hostile but legal length with a short body)."""
    choice = rng.randrange(5)
    if choice == 0:
        bad = rng.choice([t for t in range(256) if t not in wire.FRONTEND_TYPES])
        return wire.message(bad, rng.randbytes(rng.randint(0, 20))), True
    if choice == 1:
        return struct.pack("!ci", bytes([rng.choice(b"QPBDESCd")]), rng.randint(-2**31, 3)), True
    if choice == 2:
        return struct.pack("!ci", b"Q", rng.randint(wire.MAX_MESSAGE + 1, 2**31 - 1)), True
    if choice == 3:
        return wire.message(wire.PASSWORD, cstr(b"late password")), True
    length = rng.randint(1000, wire.MAX_MESSAGE)
    return struct.pack("!ci", b"Q", length) + rng.randbytes(rng.randint(0, 200)), False


# ---------------------------------------------------------------------------------------------
# scripts: one session each


def s_plaintext(rng: random.Random, s: Session, ctx: Context) -> None:
    s.open(tls=False)
    data = rng.choice((rng.randbytes(rng.randint(8, 300)), startup({"user": "admin"}),
                       b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", flip(rng, wire.ssl_request())
                       + b"\0" * 8))
    if data[0] == 0x16:
        data = b"\x17" + data[1:]
    head = struct.unpack("!ii", data[:8])
    if head[1] in (wire.SSL_REQUEST_CODE, wire.GSSENC_REQUEST_CODE,
                   wire.CANCEL_REQUEST_CODE) and head[0] in (8, 16):
        data = b"\0\0\0\x09" + data[4:]
    s.send(data)
    s.expect_error_then_close("plaintext first packet")


def s_negotiation(rng: random.Random, s: Session, ctx: Context) -> None:
    """SSLRequest/GSSENCRequest/direct TLS, right and wrong."""
    variant = rng.randrange(8)
    if variant == 0:  # direct TLS, garbage ClientHello
        conn = s.open(tls=False)
        s.send(b"\x16\x03\x01" + rng.randbytes(rng.randint(2, 300)))
        msgs, closed = conn.rest()
        s.end("closed" if closed and not msgs else "violation",
              "" if closed else "garbage ClientHello left open")
    elif variant == 1:  # direct TLS without ALPN
        try:
            s.open(direct=True, alpn=[])
        except Closed:
            s.end("closed")
            return
        s.send(startup({"user": "admin", "database": "postgres"}))
        s.expect_error_then_close("direct TLS without ALPN")
    elif variant == 2:  # direct TLS with another ALPN protocol
        try:
            s.open(direct=True, alpn=["http/1.1"])
        except Closed:
            s.end("closed")
            return
        s.send(startup({"user": "admin", "database": "postgres"}))
        s.expect_error_then_close("direct TLS with ALPN http/1.1", may_close=True)
    elif variant == 3:  # no SNI
        s.open(sni=None)
        s.send(startup({"user": "admin", "database": "postgres"}))
        s.expect_error_then_close("no SNI")
    elif variant == 4:  # SSLRequest inside TLS
        s.open()
        s.send(wire.ssl_request())
        s.expect_error_then_close("SSLRequest inside TLS")
    elif variant == 5:  # GSSENCRequest refused, then SSLRequest, then garbage startup
        conn = s.open(tls=False)
        s.send(struct.pack("!ii", 8, wire.GSSENC_REQUEST_CODE))
        if conn.read_byte() != b"N":
            s.end("violation", "GSSENCRequest not answered N")
            return
        conn.tls(s.info.ca_path)
        s.send(flip(rng, startup({"user": "admin", "database": "postgres"}), 2))
        _after_startup(rng, s, ctx, complete=False)
    elif variant == 6:  # SSLRequest answered, then not TLS
        conn = s.open(tls=False)
        s.send(wire.ssl_request())
        conn.read_byte()
        s.send(rng.randbytes(rng.randint(8, 100)).replace(b"\x16", b"\x15"))
        msgs, closed = conn.rest()
        s.end("closed" if closed and not msgs else "violation", "non-TLS after S left open")
    else:  # CancelRequest inside TLS, with an unknown key
        s.open()
        s.send(wire.cancel_request(rng.randrange(2**31), rng.randrange(2**31)))
        msgs, closed = s.conn.rest() if s.conn else ([], True)
        s.end("closed" if closed and not msgs else "violation", "cancel inside TLS")


def s_cancel(rng: random.Random, s: Session, ctx: Context) -> None:
    """Plaintext CancelRequests: unknown keys (ignored), wrong lengths (plaintext: refused)."""
    conn = s.open(tls=False)
    if rng.random() < 0.7:
        s.send(wire.cancel_request(rng.randrange(2**31), rng.randrange(2**31)))
        msgs, closed = conn.rest()
        s.end("closed" if closed and not msgs else "violation", "unknown cancel key")
    else:
        s.send(struct.pack("!ii", 12, wire.CANCEL_REQUEST_CODE) + rng.randbytes(4))
        s.expect_error_then_close("cancel request of 12 bytes")


def _startup_packet(rng: random.Random) -> tuple[bytes, bool, str]:
    """A mutated first packet inside TLS: (bytes, complete, variant)."""
    params = {"user": "admin", "database": "postgres"}
    variant = rng.randrange(10)
    if variant == 0:
        return rng.randbytes(rng.randint(4, 200)), False, "random"
    if variant == 1:
        data = flip(rng, startup(params))
        return data, False, "flipped"
    if variant == 2:  # hostile length: above the limit (refused at once) or below 8
        length = rng.choice((rng.randint(wire.MAX_STARTUP + 1, 2**31 - 1), rng.randint(-5, 7)))
        return struct.pack("!ii", length, wire.PROTOCOL_V3), True, "hostile-length"
    if variant == 3:  # a legal length, a short body: the endpoint waits, allocating nothing
        return (struct.pack("!ii", wire.MAX_STARTUP, wire.PROTOCOL_V3) + b"user\0", False,
                "short-body")
    if variant == 4:
        version = rng.choice((2 << 16, (3 << 16) | 1, (3 << 16) | 99, 4 << 16, 1234 << 16 | 5678))
        return startup(params, version), True, "version"
    if variant == 5:
        bad = rng.choice(({"database": "postgres"}, {"user": "admin", "database": "other"},
                          {"user": "", "database": "postgres"},
                          {"user": "admin", "database": "postgres", "search_path": "x"},
                          {"user": "admin", "database": "postgres", "options": "-c"},
                          {"user": "admin", "database": "postgres", "options": "--bad"},
                          {"user": "admin", "database": "postgres",
                           "options": "-c work_mem=1MB"},
                          {"user": "admin", "database": "postgres", "replication": "true"},
                          {"user": "admin", "database": "postgres", "_pq_.fuzz": "1"},
                          {"user": "admin", "database": "postgres", "x" * 50: "y" * 9000}))
        return startup(bad), True, "parameters"
    if variant == 6:  # not UTF-8
        body = struct.pack("!i", wire.PROTOCOL_V3) + b"user\0\xff\xfeadmin\0\0"
        return struct.pack("!i", len(body) + 4) + body, True, "not-utf8"
    if variant == 7:  # duplicate, unterminated, too many parameters
        body = struct.pack("!i", wire.PROTOCOL_V3) + rng.choice((
            b"user\0admin\0user\0admin\0\0", b"user\0admin", b"".join(
                f"k{i}\0v\0".encode() for i in range(70)) + b"\0"))
        return struct.pack("!i", len(body) + 4) + body, True, "malformed-parameters"
    if variant == 8:
        return (struct.pack("!iii", 16, wire.CANCEL_REQUEST_CODE, 1) + b"\0\0\0\1", True,
                "cancel")
    return startup(params), True, "valid"


def _after_startup(rng: random.Random, s: Session, ctx: Context, complete: bool = True) -> None:
    """Read what the endpoint said to a (possibly malformed) startup packet and go on."""
    conn = s.conn
    assert conn is not None
    conn.sock.settimeout(10 if complete else 1)
    while True:
        try:
            mtype, frame = conn.read()
        except Closed:
            s.end("closed" if not complete or s.detail == "cancel" else "violation",
                  f"startup packet {s.detail} closed without an error")
            return
        except TimeoutError:
            s.end("client-closed" if not complete else "violation",
                  "no answer to a complete startup packet")
            return
        if mtype == wire.ERROR_RESPONSE:
            s.note(frame)
            s.expect_error_then_close("after startup error", errored=True)
            return
        if mtype == wire.NEGOTIATE_PROTOCOL_VERSION:
            continue
        if mtype == wire.AUTHENTICATION:
            _auth(rng, s, ctx)
            return
        s.end("violation", f"startup answered with {chr(mtype)!r}")
        return


def s_startup(rng: random.Random, s: Session, ctx: Context) -> None:
    s.open()
    data, complete, s.detail = _startup_packet(rng)
    s.send(data)
    _after_startup(rng, s, ctx, complete)


def _auth(rng: random.Random, s: Session, ctx: Context) -> None:
    """The endpoint asked for the password: answer it wrongly."""
    variant = rng.randrange(7)
    if variant == 0:
        s.send(wire.query("SELECT 1"))
    elif variant == 1:
        s.send(wire.message(wire.PASSWORD, b"no terminator"))
    elif variant == 2:
        s.send(wire.message(wire.PASSWORD, b"SCRAM-SHA-256\0" + _i32(8) + b"n,,n=,r="))
    elif variant == 3:
        s.send(struct.pack("!ci", b"p", rng.choice((wire.MAX_MESSAGE + 1, 2, -1))))
    elif variant == 4:  # hostile legal length, short body: the endpoint waits
        s.send(struct.pack("!ci", b"p", rng.randint(1000, wire.MAX_MESSAGE)) + b"abc")
        s.end("client-closed")
        return
    else:
        case = mutate(RandomDraw(rng), ctx)
        while case.expected() or "\0" in case.token or case.user != "admin":
            case = mutate(RandomDraw(rng), ctx)
        s.detail = f"{case.mutation} {case.token!r}"
        s.send(wire.password(case.token))
    s.expect_error_then_close("bad password")


def s_auth(rng: random.Random, s: Session, ctx: Context) -> None:
    conn = s.open()
    s.send(startup({"user": "admin", "database": "postgres"}))
    mtype, _ = conn.read()
    if mtype != wire.AUTHENTICATION:
        s.end("violation", "valid startup not answered with an authentication request")
        return
    _auth(rng, s, ctx)


def s_relay(rng: random.Random, s: Session, ctx: Context, units: int = 40) -> None:
    """A logged-in session sending mutated messages, ending with a framing violation, a
    Terminate, or a hostile length field with a short body."""
    conn = s.open()
    conn.login(s.info.token())
    s.sent += 2
    remaining = rng.randint(units // 4, units)
    in_block = False
    while remaining > 0:
        batch = []
        want = 0
        copy = rng.random() < 0.1
        if copy:
            # COPY FROM STDIN, the data sent after the CopyInResponse as drivers do
            # (test_copy_data_pipelined_behind_the_copy_statement covers the other way).
            batch.append(wire.query("COPY fuzz_copy FROM STDIN"))
            s.sent += 1
            remaining -= 1
        else:
            kinds = []
            for _ in range(min(remaining, rng.randint(1, 8))):
                data, n, ready, kind = relay_unit(rng)
                kinds.append(kind)
                batch.append(data)
                s.sent += n
                want += ready
                remaining -= 1
        s.detail = f"{'copy' if copy else ','.join(kinds)} after {b''.join(s.last)[:300]!r}"
        s.last = batch
        conn.send(b"".join(batch))
        if copy:
            conn.sock.settimeout(10)
            try:
                mtype, frame = conn.read()
            except Closed:
                s.end("violation", "closed after COPY FROM STDIN")
                return
            except TimeoutError:
                s.end("violation", "COPY FROM STDIN not answered "
                                   f"({'in' if in_block else 'outside'} a transaction block)")
                return
            if mtype == wire.ERROR_RESPONSE:
                s.note(frame)
            elif mtype == wire.COPY_IN_RESPONSE:
                tail = copy_in_data(rng)
                conn.send(b"".join(tail))
                s.sent += len(tail)
            want = 1
        got = 0
        conn.sock.settimeout(10)
        ending = False
        while got < want:
            try:
                mtype, frame = conn.read()
            except Closed as exc:
                if ending:
                    s.end("error")
                elif exc.reset:
                    # Closed with our later messages unread: the error it sent may be lost.
                    s.end("reset")
                else:
                    where = "in" if in_block else "outside"
                    s.end("violation", f"closed mid-batch without an error ({exc}), {where} a "
                                       f"transaction block: {b''.join(batch)[:600]!r}")
                return
            except TimeoutError:
                s.end("violation", "no ReadyForQuery within 10 s")
                return
            if mtype == wire.ERROR_RESPONSE:
                severity, sqlstate, _ = s.note(frame)
                # A FATAL error, or a protocol violation the backend reports as an ERROR,
                # ends the session (as PostgreSQL does for most violations).
                ending = ending or severity == "FATAL" or sqlstate == "08P01"
            elif mtype == wire.READY_FOR_QUERY:
                got += 1
                in_block = frame[5] != ord("I")
        if ending:
            s.expect_error_then_close("after a session-ending error", errored=True)
            return
    end = rng.randrange(4)
    if end == 0:
        s.send(wire.TERMINATE_MSG)
        msgs, closed = conn.rest()
        s.end("closed" if closed and not msgs else "violation", "Terminate")
        return
    data, complete = framing_violation(rng)
    s.detail = f"framing {data[:12]!r} after {s.detail}"
    s.send(data)
    if not complete:
        s.end("client-closed")
        return
    s.expect_error_then_close("framing violation")


def _cancel(s: Session, pid: int, secret: int) -> None:
    other = RawConn(s.info.port)
    other.send(wire.cancel_request(pid, secret))
    other.rest(2)  # the endpoint closes a cancel connection without an answer
    other.close()
    s.sent += 1


def s_cancel_live(rng: random.Random, s: Session, ctx: Context) -> None:
    """Cancel a running query with the key the endpoint handed out (it must reach the
    backend: 57014), or with a wrong secret (it must not)."""
    conn = s.open()
    msgs = conn.login(s.info.token())
    s.sent += 2
    pid, secret = next(wire.parse_backend_key(f) for t, f in msgs
                       if t == wire.BACKEND_KEY_DATA)
    right = rng.random() < 0.5
    # The right key is sent until the query ends (a cancel that arrives before the query
    # reached the backend cancels nothing); the wrong one twice during a short query.
    s.send(wire.query("SELECT pg_sleep(10)" if right else "SELECT pg_sleep(0.3)"))
    cancels = 0
    cancelled = False
    conn.sock.settimeout(0.1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if right or cancels < 2:
            _cancel(s, pid, secret if right else secret ^ 0x5A5A)
            cancels += 1
        try:
            mtype, frame = conn.read()
        except TimeoutError:
            continue
        except Closed:
            s.end("violation", "session lost while cancelling")
            return
        conn.sock.settimeout(10)
        if mtype == wire.ERROR_RESPONSE:
            cancelled = s.note(frame)[1] == "57014"
        if mtype == wire.READY_FOR_QUERY:
            break
    else:
        s.end("violation", "the cancelled query never ended")
        return
    if cancelled != right:
        s.end("violation", f"cancel with {'right' if right else 'wrong'} key: "
                           f"cancelled={cancelled}")
        return
    s.send(wire.TERMINATE_MSG)
    s.end("closed")


SCRIPTS: dict[str, tuple[float, Callable[[random.Random, Session, Context], None]]] = {
    "plaintext": (0.06, s_plaintext),
    "negotiation": (0.10, s_negotiation),
    "cancel": (0.04, s_cancel),
    "startup": (0.18, s_startup),
    "auth": (0.17, s_auth),
    "relay": (0.43, s_relay),
    "cancel-live": (0.02, s_cancel_live),
}


def run_script(name: str, rng: random.Random, info: EndpointInfo, tally: Tally,
               ctx: Context) -> None:
    s = Session(name, info, tally)
    try:
        SCRIPTS[name][1](rng, s, ctx)
    except Closed as exc:
        s.end("violation", f"unexpected close: {exc}")
    except (TimeoutError, OSError) as exc:
        s.end("violation", f"{type(exc).__name__}: {exc}")
    finally:
        s.end("client-closed")


# ---------------------------------------------------------------------------------------------
# the healthy session


@dataclass
class Healthy:
    transfers: int = 0
    errors: list[str] = field(default_factory=list)
    max_latency: float = 0.0


def healthy_transfers(info: EndpointInfo, stop: threading.Event, out: Healthy,
                      started: threading.Event) -> None:
    """Move money back and forth between two accounts, one transaction at a time, on one
    connection; any error at all is recorded."""
    from dsqlkit.psycopg import connect

    try:
        with connect(info.url(), credentials=info.credentials, autocommit=True) as conn:
            started.set()
            i = 0
            while not stop.is_set():
                a, b = (1, 2) if i % 2 else (2, 1)
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute("UPDATE fuzz_accounts SET balance = balance - 1 WHERE id = %s",
                                 (a,))
                    conn.execute("UPDATE fuzz_accounts SET balance = balance + 1 WHERE id = %s",
                                 (b,))
                out.max_latency = max(out.max_latency, time.perf_counter() - t)
                out.transfers += 1
                i += 1
    except Exception as exc:
        out.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        started.set()


# ---------------------------------------------------------------------------------------------
# the whole run


@dataclass
class WireReport:
    tally: Tally
    healthy: Healthy
    rss_before: int
    rss_holding: int
    rss_after: int
    holders: int
    promised_bytes: int
    fds_before: int
    fds_after: int
    backends_before: int
    backends_after: int
    balance_sum: Decimal | None
    endpoint_log_problems: list[str]
    endpoint_warnings: Counter[str]
    seconds: float
    alive: bool

    def lines(self) -> list[str]:
        t = self.tally
        out = [
            f"messages sent            {t.messages:,}",
            f"sessions                 {sum(t.sessions.values()):,} "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(t.sessions.items())),
            "session endings          " + ", ".join(f"{k} {v:,}" for k, v in
                                                     sorted(t.endings.items())),
            "errors returned          " + ", ".join(f"{k} {v:,}" for k, v in
                                                     t.errors.most_common()),
            f"violations               {len(t.violations)}",
            f"endpoint RSS             {self.rss_before / MiB:.1f} MiB before, "
            f"{self.rss_holding / MiB:.1f} MiB while {self.holders} sessions held hostile "
            f"length fields promising {self.promised_bytes / MiB:,.0f} MiB, "
            f"{self.rss_after / MiB:.1f} MiB after",
            f"endpoint fds             {self.fds_before} before, {self.fds_after} after",
            f"backend sessions         {self.backends_before} before, {self.backends_after} after",
            f"healthy session          {self.healthy.transfers:,} transfers, "
            f"{len(self.healthy.errors)} errors, slowest {self.healthy.max_latency * 1000:.0f} ms",
            f"endpoint alive           {self.alive}; errors in its log: "
            f"{len(self.endpoint_log_problems)}",
            f"wall time                {self.seconds:.1f} s",
        ]
        out += [f"  endpoint warning ({n}x): {w}" for w, n in self.endpoint_warnings.items()]
        out += [f"  violation: {v}" for v in t.violations[:20]]
        out += [f"  healthy error: {e}" for e in self.healthy.errors[:5]]
        out += [f"  endpoint log: {p}" for p in self.endpoint_log_problems[:10]]
        return out


def log_records(text: str) -> list[str]:
    """The endpoint log's ERROR/CRITICAL records (with their tracebacks), one string each."""
    records: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(("DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL ")):
            if current is not None:
                records.append("\n".join(current))
            current = [line] if line.startswith(("ERROR ", "CRITICAL ")) else None
        elif current is not None:
            current.append(line)
    if current is not None:
        records.append("\n".join(current))
    return records


def _backends(info: EndpointInfo) -> int:
    with psycopg.connect(info.backend_dsn, autocommit=True) as conn:
        # The endpoint's lock monitor opens its own connection the first time a statement
        # waits; it is not a client's session.
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend' AND pid <> pg_backend_pid() AND "
                           "application_name <> 'dsqlkit-lock-monitor'").fetchone()
        return int(row[0]) if row else -1


def _settle(measure: Callable[[], int], target: int, seconds: float = 10.0) -> int:
    """Poll ``measure`` until it is at most ``target`` (sessions take a moment to end)."""
    deadline = time.monotonic() + seconds
    value = measure()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def hold_hostile_lengths(info: EndpointInfo, n: int) -> tuple[list[RawConn], int]:
    """Open ``n`` sessions that each promise a large message and send only its first bytes:
    in the startup phase (up to the 10,000-byte startup limit), in the password phase and in
    a logged-in session (up to the 10 MiB message limit). Returns them and the bytes promised.
    """
    held: list[RawConn] = []
    promised = 0
    for i in range(n):
        c = RawConn(info.port).tls(info.ca_path)
        phase = i % 3
        if phase == 0:
            c.send(struct.pack("!ii", wire.MAX_STARTUP, wire.PROTOCOL_V3) + b"user\0admin\0")
            promised += wire.MAX_STARTUP
        elif phase == 1:
            c.send(startup({"user": "admin", "database": "postgres"}))
            c.read()
            c.send(struct.pack("!ci", b"p", wire.MAX_MESSAGE) + b"x" * 1000)
            promised += wire.MAX_MESSAGE
        else:
            c.login(info.token())
            c.send(struct.pack("!ci", b"Q", wire.MAX_MESSAGE) + b"SELECT " + b"1" * 4000)
            promised += wire.MAX_MESSAGE
        held.append(c)
    return held, promised


def prepare(info: EndpointInfo) -> None:
    from dsqlkit.psycopg import connect

    with connect(info.url(), credentials=info.credentials, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fuzz_accounts (id int PRIMARY KEY, "
                     "balance numeric NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS fuzz_copy (a text)")
        conn.execute("DELETE FROM fuzz_accounts")
        conn.execute("INSERT INTO fuzz_accounts VALUES (1, 1000), (2, 1000)")


def run_wire_fuzz(info: EndpointInfo, *, messages: int, threads: int = 6, seed: int = 1,
                  holders: int = 60, relay_units: int = 40,
                  progress: Callable[[Tally], None] | None = None) -> WireReport:
    """Fuzz ``info``'s endpoint until ``messages`` protocol messages were sent."""
    started_at = time.monotonic()
    prepare(info)
    ctx = Context(hosts=info.hostnames, now=datetime.now(timezone.utc),
                  plain=info.credentials, temporary=info.credentials, users=("admin",),
                  margin=120)
    backends_before = _backends(info)
    healthy = Healthy()
    stop = threading.Event()
    ready = threading.Event()
    ht = threading.Thread(target=healthy_transfers, args=(info, stop, healthy, ready),
                          name="healthy", daemon=True)
    ht.start()
    ready.wait(30)
    time.sleep(0.2)
    rss_before = info.rss()
    fds_before = info.fds()
    tally = Tally()
    names = list(SCRIPTS)
    weights = [SCRIPTS[n][0] for n in names]

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while tally.messages < messages and not stop.is_set():
            name = rng.choices(names, weights)[0]
            if name == "relay":
                s = Session(name, info, tally)
                try:
                    s_relay(rng, s, ctx, relay_units)
                except (Closed, TimeoutError, OSError) as exc:
                    s.end("violation", f"{type(exc).__name__}: {exc}")
                finally:
                    s.end("client-closed")
            else:
                run_script(name, rng, info, tally, ctx)

    workers = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(1.0)
        if progress is not None:
            progress(tally)
    held, promised = hold_hostile_lengths(info, holders)
    time.sleep(0.3)
    rss_holding = info.rss()
    for c in held:
        c.close()
    stop.set()
    ht.join(30)
    backends_after = _settle(lambda: _backends(info), backends_before)
    fds_after = _settle(info.fds, fds_before)
    rss_after = info.rss()
    with psycopg.connect(info.backend_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT sum(balance) FROM fuzz_accounts").fetchone()
    log_text = info.log_text()
    log_problems = log_records(log_text)
    warnings = Counter(line[:100] for line in log_text.splitlines()
                       if line.startswith("WARNING "))
    return WireReport(
        tally=tally, healthy=healthy, rss_before=rss_before, rss_holding=rss_holding,
        rss_after=rss_after, holders=holders, promised_bytes=promised, fds_before=fds_before,
        fds_after=fds_after, backends_before=backends_before, backends_after=backends_after,
        balance_sum=row[0] if row else None, endpoint_log_problems=log_problems,
        endpoint_warnings=warnings,
        seconds=time.monotonic() - started_at, alive=info.alive(),
    )


def fresh_login_works(info: EndpointInfo) -> bool:
    try:
        c = RawConn(info.port).tls(info.ca_path)
        c.login(info.token())
        c.send(wire.query("SELECT 1"))
        while c.read()[0] != wire.READY_FOR_QUERY:
            pass
        c.close()
        return True
    except (OSError, Closed, TimeoutError):
        return False
