"""PostgreSQL v3 wire protocol: framing, parsing and encoding. Pure code, no I/O.

The endpoint never trusts a length field: a frame is only ever buffered up to the limit
given to :class:`FrameReader`, so a hostile length cannot make the server allocate.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

# Special request codes sent in place of a protocol version in the first packet.
PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Frontend message types.
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
SYNC = ord("S")
FLUSH = ord("H")
CLOSE = ord("C")
TERMINATE = ord("X")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
PASSWORD = ord("p")
FUNCTION_CALL = ord("F")

# Backend message types.
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
COMMAND_COMPLETE = ord("C")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
EMPTY_QUERY = ord("I")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
PARAMETER_DESCRIPTION = ord("t")
NO_DATA = ord("n")
PORTAL_SUSPENDED = ord("s")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
FUNCTION_CALL_RESPONSE = ord("V")
NEGOTIATE_PROTOCOL_VERSION = ord("v")

FRONTEND_TYPES = frozenset(
    [QUERY, PARSE, BIND, DESCRIBE, EXECUTE, SYNC, FLUSH, CLOSE, TERMINATE,
     COPY_DATA, COPY_DONE, COPY_FAIL, PASSWORD, FUNCTION_CALL]
)

# DSQL refuses protocol messages above 10 MiB.
MAX_MESSAGE = 10 * 1024 * 1024
# A startup packet holds a few short parameters; PostgreSQL itself caps it at 10,000 bytes.
MAX_STARTUP = 10_000

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")
_I16 = struct.Struct("!h")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol message (SQLSTATE 08P01)."""

    sqlstate = "08P01"


class FrameReader:
    """Splits a byte stream into complete messages.

    Two ways to read: :meth:`next_frame` returns one frame at a time (startup, where a
    coroutine waits for each message), and :meth:`scan` returns a whole chunk with the
    offsets of its complete frames, so that the relay can forward bytes without copying
    them frame by frame. ``typed=False`` reads the untyped first packet (length + body).
    """

    __slots__ = ("_buf", "_need", "_pos", "max_length", "typed")

    def __init__(self, *, typed: bool = True, max_length: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._need = 0
        self.typed = typed
        self.max_length = max_length

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame as ``(type, frame)``; type is 0 for untyped packets."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if self.typed:
            if avail < 5:
                return None
            mtype = buf[pos]
            length = _I32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > self.max_length:
                raise ProtocolViolation("invalid message length")
            end = pos + 1 + length
        else:
            if avail < 4:
                return None
            mtype = 0
            length = _I32.unpack_from(buf, pos)[0]
            if length < 8 or length > self.max_length:
                raise ProtocolViolation("invalid length of startup packet")
            end = pos + length
        if end > len(buf):
            return None
        frame = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return mtype, frame

    def scan(self, chunk: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Add ``chunk``; return the data and ``(type, start, end)`` of each complete frame.

        Only ``data[:frames[-1][2]]`` is meant for the caller; an incomplete tail stays
        buffered. A frame still arriving is not rescanned until all its bytes are here,
        so a large message costs linear time however it is split.
        """
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        if self._buf:
            self._buf += chunk
            if len(self._buf) < self._need:
                return b"", []
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = chunk
        frames: list[tuple[int, int, int]] = []
        pos = 0
        n = len(data)
        limit = self.max_length
        unpack = _I32.unpack_from
        need = 0
        while n - pos >= 5:
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > limit:
                raise ProtocolViolation("invalid message length")
            end = pos + 1 + length
            if end > n:
                need = end - pos
                break
            frames.append((data[pos], pos, end))
            pos = end
        if pos < n:
            self._buf += memoryview(data)[pos:]
            self._need = need or 5
        else:
            self._need = 0
        return data, frames


# ---------------------------------------------------------------- parsing helpers


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("unterminated string in message")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid byte sequence for encoding \"UTF8\"") from None

    def int32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolViolation("insufficient data left in message")
        v: int = _I32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return v

    def int16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolViolation("insufficient data left in message")
        v: int = _I16.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return v

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolViolation("insufficient data left in message")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation("invalid message format")


def startup_code(frame: bytes) -> int:
    """The protocol version or request code of an untyped first packet."""
    code: int = _I32.unpack_from(frame, 4)[0]
    return code


def parse_startup(frame: bytes, *, max_params: int = 64) -> dict[str, str]:
    """Parameters of a StartupMessage (``user``, ``database``, ``options``…)."""
    cur = _Cursor(frame, 8)
    params: dict[str, str] = {}
    while True:
        key = cur.cstring()
        if key == "":
            break
        value = cur.cstring()
        if key in params:
            raise ProtocolViolation(f"duplicate startup parameter \"{key}\"")
        if len(params) >= max_params:
            raise ProtocolViolation("too many startup parameters")
        params[key] = value
    cur.end()
    return params


def parse_cancel(frame: bytes) -> tuple[int, int]:
    if len(frame) != 16:
        raise ProtocolViolation("invalid length of cancel request packet")
    pid, secret = struct.unpack_from("!ii", frame, 8)
    return pid, secret


def parse_password(frame: bytes) -> str:
    cur = _Cursor(frame, 5)
    pw = cur.cstring()
    cur.end()
    return pw


def parse_query(frame: bytes) -> str:
    cur = _Cursor(frame, 5)
    sql = cur.cstring()
    cur.end()
    return sql


def parse_parse(frame: bytes) -> tuple[str, str, list[int]]:
    """Statement name, query text and parameter type oids of a Parse message."""
    cur = _Cursor(frame, 5)
    name = cur.cstring()
    sql = cur.cstring()
    n = cur.int16()
    if n < 0:
        raise ProtocolViolation("invalid number of parameter types")
    oids = [cur.int32() for _ in range(n)]
    cur.end()
    return name, sql, oids


def parse_bind_names(frame: bytes) -> tuple[str, str]:
    """Portal and statement names of a Bind message (the rest is forwarded untouched)."""
    cur = _Cursor(frame, 5)
    return cur.cstring(), cur.cstring()


def parse_describe_or_close(frame: bytes) -> tuple[str, str]:
    cur = _Cursor(frame, 5)
    kind = cur.byte()
    if kind not in (ord("S"), ord("P")):
        raise ProtocolViolation(f"invalid DESCRIBE/CLOSE message subtype {kind}")
    name = cur.cstring()
    cur.end()
    return chr(kind), name


def parse_execute(frame: bytes) -> tuple[str, int]:
    cur = _Cursor(frame, 5)
    portal = cur.cstring()
    max_rows = cur.int32()
    cur.end()
    return portal, max_rows


def parse_fields(frame: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse, keyed by their one-letter code."""
    fields: dict[str, str] = {}
    data = frame
    pos = 5
    while pos < len(data) and data[pos] != 0:
        code = chr(data[pos])
        end = data.find(b"\0", pos + 1)
        if end < 0:
            raise ProtocolViolation("unterminated error field")
        fields[code] = data[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def parse_command_tag(frame: bytes) -> str:
    return frame[5:-1].decode("ascii", "replace")


def rows_in_select_tag(frame: bytes) -> int:
    """The row count of a ``SELECT n`` CommandComplete frame."""
    tag = parse_command_tag(frame)
    _, _, count = tag.rpartition(" ")
    return int(count) if count.isdigit() else 0


def parse_parameter_status(frame: bytes) -> tuple[str, str]:
    cur = _Cursor(frame, 5)
    return cur.cstring(), cur.cstring()


def parse_backend_key(frame: bytes) -> tuple[int, int]:
    pid, secret = struct.unpack_from("!ii", frame, 5)
    return pid, secret


def parse_auth_code(frame: bytes) -> int:
    code: int = _I32.unpack_from(frame, 5)[0]
    return code


# ---------------------------------------------------------------- encoding


def int32(value: int) -> bytes:
    return _I32.pack(value)


def message(mtype: int, body: bytes = b"") -> bytes:
    return _HDR.pack(bytes((mtype,)), len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode("utf-8").replace(b"\0", b"") + b"\0"


def error_response(
    sqlstate: str,
    msg: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    parts = [b"S", _cstr(severity), b"V", _cstr(severity), b"C", _cstr(sqlstate),
             b"M", _cstr(msg)]
    if detail is not None:
        parts += [b"D", _cstr(detail)]
    if hint is not None:
        parts += [b"H", _cstr(hint)]
    for code, value in (extra or {}).items():
        parts += [code.encode("ascii"), _cstr(value)]
    parts.append(b"\0")
    return message(ERROR_RESPONSE, b"".join(parts))


def encode_fields(mtype: int, fields: Mapping[str, str]) -> bytes:
    body = b"".join(code.encode("ascii") + _cstr(v) for code, v in fields.items()) + b"\0"
    return message(mtype, body)


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return message(AUTHENTICATION, _I32.pack(code) + extra)


AUTH_OK = auth_request(0)
AUTH_CLEARTEXT = auth_request(3)
SSL_ACCEPT = b"S"
SSL_REFUSE = b"N"


def parameter_status(name: str, value: str) -> bytes:
    return message(PARAMETER_STATUS, _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(BACKEND_KEY_DATA, struct.pack("!ii", pid, secret))


def ready_for_query(status: int = ord("I")) -> bytes:
    return message(READY_FOR_QUERY, bytes((status,)))


def command_complete(tag: str) -> bytes:
    return message(COMMAND_COMPLETE, _cstr(tag))


def parse_message(name: str, sql: str, oids: Sequence[int]) -> bytes:
    # Type oids were read as signed int32 (parse_parse); write them back the same way.
    body = _cstr(name) + _cstr(sql) + struct.pack(f"!h{len(oids)}i", len(oids), *oids)
    return message(PARSE, body)


def rebind(frame: bytes, statement: str, portal: str | None = None) -> bytes:
    """The Bind message ``frame`` with its prepared statement name (and, if given, its
    portal name) replaced."""
    cur = _Cursor(frame, 5)
    own_portal = cur.cstring()
    cur.cstring()
    return message(BIND, _cstr(own_portal if portal is None else portal) + _cstr(statement)
                   + frame[cur.pos :])


def execute_message(portal: str = "", max_rows: int = 0) -> bytes:
    return message(EXECUTE, _cstr(portal) + _I32.pack(max_rows))


def close_statement(name: str | bytes) -> bytes:
    return message(CLOSE, b"S" + (_cstr(name) if isinstance(name, str) else name + b"\0"))


def parse_bind_parameter(frame: bytes, number: int) -> tuple[int, bytes | None]:
    """Parameter ``$number`` of a Bind message: its format code (0 text, 1 binary) and its
    value (None for NULL). (Runs for every point write the endpoint relays: no cursor.)"""
    size = len(frame)
    pos = frame.find(b"\0", 5)
    pos = frame.find(b"\0", pos + 1) if pos >= 0 else -1
    if pos < 0 or pos + 3 > size:
        raise ProtocolViolation("invalid bind message")
    nformats = _I16.unpack_from(frame, pos + 1)[0]
    first = pos + 3
    pos = first + 2 * nformats
    if nformats < 0 or pos + 2 > size:
        raise ProtocolViolation("insufficient data left in message")
    count = _I16.unpack_from(frame, pos)[0]
    pos += 2
    if nformats not in (0, 1, count):
        raise ProtocolViolation(
            f"bind message has {nformats} parameter formats but {count} parameters")
    if not 1 <= number <= count:
        raise ProtocolViolation(f"bind message has no parameter ${number}")
    unpack = _I32.unpack_from
    for index in range(number):
        if pos + 4 > size:
            raise ProtocolViolation("insufficient data left in message")
        length = unpack(frame, pos)[0]
        pos += 4
        if length < -1 or pos + max(length, 0) > size:
            raise ProtocolViolation("insufficient data left in message")
        if index == number - 1:
            fmt = 0
            if nformats:
                fmt = _I16.unpack_from(frame, first + 2 * (index if nformats > 1 else 0))[0]
            return fmt, None if length < 0 else frame[pos : pos + length]
        pos += max(length, 0)
    raise AssertionError("unreachable")


def startup_message(params: Mapping[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_V3) + b"".join(
        _cstr(k) + _cstr(v) for k, v in params.items()
    ) + b"\0"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret)


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def query(sql: str) -> bytes:
    return message(QUERY, _cstr(sql))


def password(pw: str) -> bytes:
    return message(PASSWORD, _cstr(pw))


TERMINATE_MSG = message(TERMINATE)
NO_DATA_MSG = message(NO_DATA)
SYNC_MSG = message(SYNC)


def parse_data_row(frame: bytes) -> list[bytes | None]:
    cur = _Cursor(frame, 5)
    n = cur.int16()
    out: list[bytes | None] = []
    for _ in range(n):
        ln = cur.int32()
        if ln < 0:
            out.append(None)
        else:
            out.append(frame[cur.pos : cur.pos + ln])
            cur.pos += ln
    return out
