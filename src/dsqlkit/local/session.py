"""One client session: startup, IAM authentication, a backend session, then the relay.

The relay keeps at most one client *unit* (the messages up to a Sync, a simple Query or a
Flush) in flight at the backend, and tracks which backend response completes which client
message. That bookkeeping is what lets the endpoint rewrite, refuse or answer statements
itself without ever reordering responses, and it costs nothing to clients that wait for
their answers, which is what all drivers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dsqlkit.errors import LocalEndpointError, TokenRejected
from dsqlkit.local import wire
from dsqlkit.local.backend import BackendRefused, BackendSession, open_session
from dsqlkit.local.link import Link, LinkClosed

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)

# DSQL accepts only these session parameters (SET, startup packet or options); every other
# one is refused with 0A000.
ALLOWED_PARAMETERS = frozenset({
    "application_name", "client_encoding", "datestyle", "extra_float_digits",
    "intervalstyle", "timezone", "search_path", "enable_bitmapscan", "enable_hashjoin",
    "enable_indexonlyscan", "enable_indexscan", "enable_material", "enable_mergejoin",
    "enable_nestloop", "dsql.enable_batched_nestloop", "enable_seqscan",
    "disable_sync_create_index",
})
# Parameters DSQL knows that PostgreSQL does not: kept by the endpoint, never sent on.
ENDPOINT_PARAMETERS = frozenset({"disable_sync_create_index", "dsql.enable_batched_nestloop"})
REPORTED_VERSION = "16.15"

_EXTENDED = frozenset({wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE, wire.CLOSE})
_ENDS_AT_READY = frozenset({wire.QUERY, wire.SYNC, wire.FUNCTION_CALL})
_COMPLETES = {
    wire.PARSE: frozenset({wire.PARSE_COMPLETE}),
    wire.BIND: frozenset({wire.BIND_COMPLETE}),
    wire.CLOSE: frozenset({wire.CLOSE_COMPLETE}),
    wire.DESCRIBE: frozenset({wire.ROW_DESCRIPTION, wire.NO_DATA}),
    wire.EXECUTE: frozenset({wire.COMMAND_COMPLETE, wire.EMPTY_QUERY, wire.PORTAL_SUSPENDED}),
}
_COPY_IN_MESSAGES = frozenset({wire.COPY_DATA, wire.COPY_DONE, wire.COPY_FAIL})
_IDLE = ord("I")


def _slice(data: bytes, start: int, end: int) -> bytes:
    return data if start == 0 and end == len(data) else data[start:end]


class Refusal(Exception):
    """Ends a session during startup with a FATAL error sent to the client."""

    def __init__(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint

    def frame(self) -> bytes:
        return wire.error_response(self.sqlstate, self.message, severity="FATAL", hint=self.hint)


def access_denied(hint: str) -> Refusal:
    return Refusal("08006", "unable to accept connection, access denied", hint=hint)


def parse_options(options: str) -> list[tuple[str, str]]:
    """``-c name=value`` / ``--name=value`` pairs of the ``options`` startup parameter.

    Follows PostgreSQL: arguments are separated by unescaped white space, and a backslash
    escapes the next character.
    """
    args: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        args.append("".join(cur))
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-c" and i + 1 < len(args):
            setting = args[i + 1]
            i += 2
        elif a.startswith("--") or a.startswith("-c"):
            setting = a[2:]
            i += 1
        else:
            raise Refusal("42601", f"invalid command-line argument for server process: {a}",
                          hint="Try \"postgres --help\" for more information.")
        name, eq, value = setting.partition("=")
        if not eq:
            raise Refusal("42601", f"--{name} requires a value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def _escape_option(value: str) -> str:
    return "".join("\\" + c if c.isspace() or c == "\\" else c for c in value)


class Session:
    """A client connection from the startup packet to its end."""

    def __init__(self, server: Server, client: Link, *, sni: str | None) -> None:
        self.server = server
        self.client = client
        self.sni = sni
        self.backend: BackendSession | None = None
        self.user = ""
        self.key = (0, 0)
        self.started = time.monotonic()
        self.settings: dict[str, str] = {}
        # relay state
        # Client messages not yet forwarded: [data, frames, index of the next frame].
        self.held: deque[list[Any]] = deque()
        self.expect: deque[int] = deque()
        self.unit_closed = True
        self.backend_skipping = False
        self.copy_in = False
        self.txn_status = _IDLE
        self.expired = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_client: list[bytes] = []
        self._to_backend: list[bytes] = []
        self._age_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------ startup

    async def run(self) -> None:
        """Serve the session until either side closes."""
        try:
            await asyncio.wait_for(self._startup(), self.server.config.startup_timeout)
        except Refusal as r:
            self._fatal(r.frame())
            return
        except BackendRefused as exc:
            self._fatal(exc.frame)
            return
        except wire.ProtocolViolation as exc:
            self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))
            return
        except (LinkClosed, ConnectionError):
            self.close()
            return
        except asyncio.TimeoutError:
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "timed out during startup", severity="FATAL"))
            return
        except LocalEndpointError as exc:
            log.warning("session startup failed: %s", exc)
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "server unavailable", severity="FATAL"))
            return
        self._start_relay()
        await self.done

    async def _startup(self) -> None:
        client = self.client
        frame = b""
        while True:
            _, frame = await client.read_frame()
            code = wire.startup_code(frame)
            if code == wire.CANCEL_REQUEST_CODE:
                pid, secret = wire.parse_cancel(frame)
                await self.server.cancel(pid, secret)
                raise LinkClosed("cancel request served")
            if code in (wire.SSL_REQUEST_CODE, wire.GSSENC_REQUEST_CODE):
                raise wire.ProtocolViolation("unexpected encryption request inside TLS")
            break
        client.reader.typed = True
        client.reader.max_length = wire.MAX_MESSAGE
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            raise Refusal("0A000", f"unsupported frontend protocol {major}.{minor}: server "
                                   "supports 3.0 to 3.0")
        params = wire.parse_startup(frame)
        protocol_opts = sorted(k for k in params if k.startswith("_pq_."))
        if minor > 0 or protocol_opts:
            client.write(wire.message(
                wire.NEGOTIATE_PROTOCOL_VERSION,
                wire.int32(wire.PROTOCOL_V3) + wire.int32(len(protocol_opts))
                + b"".join(o.encode() + b"\0" for o in protocol_opts),
            ))
            for o in protocol_opts:
                params.pop(o)
        if not self.sni:
            raise Refusal("08006", "unable to accept connection, sni was not received")
        user = params.pop("user", "")
        if not user:
            raise Refusal("28000", "no PostgreSQL user name specified in startup packet")
        database = params.pop("database", user)
        backend_params: dict[str, str] = {}
        options: list[tuple[str, str]] = parse_options(params.pop("options", ""))
        for name, value in [*params.items(), *options]:
            lname = name.lower()
            if lname not in ALLOWED_PARAMETERS:
                raise Refusal("0A000", f'setting configuration parameter "{name}" not supported')
            if lname in ENDPOINT_PARAMETERS:
                self.settings[lname] = value
            else:
                backend_params[name] = value
        if database != "postgres":
            raise Refusal("3D000", f'database "{database}" does not exist')
        self.user = user

        client.write(wire.AUTH_CLEARTEXT)
        mtype, frame = await client.read_frame()
        if mtype != wire.PASSWORD:
            raise wire.ProtocolViolation(
                f"expected password response, got message type {mtype}"
            )
        token = wire.parse_password(frame)
        try:
            self.server.verify_token(token, user)
        except TokenRejected as exc:
            log.info("rejected a token for user %r: %s", user, exc.hint)
            raise access_denied(exc.hint) from None
        await self.server.authorize(user)

        self.backend = await open_session(
            self.server.backend_address(),
            self.server.backend_startup(user, backend_params),
        )
        out = [wire.AUTH_OK]
        for k, v in self.backend.parameters.items():
            out.append(wire.parameter_status(k, REPORTED_VERSION if k == "server_version" else v))
        self.key = self.server.register(self)
        out.append(wire.backend_key_data(*self.key))
        out.append(wire.ready_for_query())
        client.write(b"".join(out))

    # ------------------------------------------------------------ relay

    def _start_relay(self) -> None:
        assert self.backend is not None
        b = self.backend.link
        c = self.client
        c.peer, b.peer = b, c
        c.on_lost = self.close
        b.on_lost = self._backend_lost
        c.on_violation = self._client_violation
        b.on_violation = lambda exc: self.close()
        c.on_frames = self._on_client_frames
        b.on_frames = self._on_backend_frames
        age = self.server.config.max_connection_age
        if age > 0:
            remaining = age - (time.monotonic() - self.started)
            self._age_timer = asyncio.get_running_loop().call_later(
                max(remaining, 0.0), self._age_reached
            )
        # Bytes that arrived together with the password message are already buffered.
        c.data_received(b"")
        b.data_received(b"")

    def _on_client_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        self.held.append([data, frames, 0])
        self._pump()

    def _pump(self) -> None:
        """Forward held client messages, in order, in as few writes as possible.

        Stops at a unit boundary (Sync, Query, Flush) while the backend still owes
        responses; :meth:`_on_backend_frames` calls it again when they have arrived.
        """
        held = self.held
        expect = self.expect
        out = self._to_backend
        while held:
            batch = held[0]
            data: bytes = batch[0]
            frames: list[tuple[int, int, int]] = batch[1]
            i: int = batch[2]
            n = len(frames)
            first = i
            while i < n:
                mtype, start, end = frames[i]
                if self.unit_closed and expect and not (
                    self.copy_in and mtype in _COPY_IN_MESSAGES
                ):
                    break
                if mtype in _EXTENDED:
                    if mtype == wire.PARSE and not self._valid(wire.parse_parse, data, start, end):
                        return
                    if not self.backend_skipping:
                        expect.append(mtype)
                    self.unit_closed = False
                elif mtype in _ENDS_AT_READY:
                    if mtype == wire.QUERY and not self._valid(wire.parse_query, data, start, end):
                        return
                    if not self.copy_in:  # the backend ignores Sync during COPY FROM STDIN
                        expect.append(mtype)
                        self.unit_closed = True
                        if mtype == wire.SYNC:
                            self.backend_skipping = False
                elif mtype == wire.FLUSH:
                    self.unit_closed = True
                elif mtype in _COPY_IN_MESSAGES:
                    if mtype != wire.COPY_DATA:
                        self.copy_in = False
                elif mtype == wire.TERMINATE:
                    out.append(_slice(data, frames[first][1], start))
                    self._flush()
                    self.close()
                    return
                elif mtype not in wire.FRONTEND_TYPES:
                    out.append(_slice(data, frames[first][1], start))
                    self._flush()
                    self._client_violation(
                        wire.ProtocolViolation(f"invalid frontend message type {mtype}"))
                    return
                i += 1
            if i > first:
                out.append(_slice(data, frames[first][1], frames[i - 1][2]))
            if i < n:
                batch[2] = i
                break
            held.popleft()
        self._flush()

    def _valid(self, parse: Callable[[bytes], object], data: bytes, start: int, end: int) -> bool:
        """Check a message the backend would otherwise half-accept; end the session if bad."""
        try:
            parse(data[start:end])
        except wire.ProtocolViolation as exc:
            self._to_backend.clear()
            self._client_violation(exc)
            return False
        return True

    def _flush(self) -> None:
        if self._to_backend:
            assert self.backend is not None
            out = self._to_backend
            self.backend.link.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self._to_client:
            out = self._to_client
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _on_backend_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        expect = self.expect
        close_after = False
        for mtype, start, end in frames:
            if mtype == wire.ERROR_RESPONSE:
                fields = wire.parse_fields(data[start:end])
                # A protocol violation or a FATAL error ends the session, as it does for
                # PostgreSQL itself (some violations are only ERRORs there).
                if fields.get("S") == "FATAL" or fields.get("C") == "08P01":
                    close_after = True
            if not expect:
                continue
            kind = expect[0]
            if mtype == wire.READY_FOR_QUERY:
                if kind in _ENDS_AT_READY:
                    expect.popleft()
                self.txn_status = data[start + 5]
            elif mtype == wire.ERROR_RESPONSE:
                if kind in _EXTENDED:
                    # The backend now skips every extended message up to the next Sync.
                    while expect and expect[0] in _EXTENDED:
                        expect.popleft()
                    if not expect:
                        self.backend_skipping = True
            elif kind in _EXTENDED:
                if mtype in _COMPLETES[kind]:
                    expect.popleft()
                elif mtype == wire.COPY_IN_RESPONSE:
                    self.copy_in = True
            elif mtype == wire.COPY_IN_RESPONSE:
                self.copy_in = True
        self._to_client.append(_slice(data, 0, frames[-1][2]))
        if close_after:
            self._flush()
            self.close()
            return
        if not expect:
            if self.expired and self.txn_status == _IDLE and not self.held:
                self._flush()
                self._end_for_age()
                return
            self._pump()
        else:
            self._flush()

    # ------------------------------------------------------------ ending

    def _age_reached(self) -> None:
        self.expired = True
        if not self.expect and not self.held and self.txn_status == _IDLE:
            self._end_for_age()

    def _end_for_age(self) -> None:
        limit = self.server.config.max_connection_age
        log.info("closing a session at the connection age limit (%ss)", limit)
        self._fatal(wire.error_response(
            "08006", f"connection age limit of {limit:g}s exceeded", severity="FATAL"))

    def _client_violation(self, exc: wire.ProtocolViolation) -> None:
        self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))

    def _backend_lost(self) -> None:
        if not self._closed:
            log.warning("backend session lost; closing the client session")
        self.close()

    def _fatal(self, frame: bytes) -> None:
        self._to_client.clear()
        self.client.write(frame)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._age_timer is not None:
            self._age_timer.cancel()
        self.server.unregister(self)
        if self.backend is not None:
            self.backend.link.write(wire.TERMINATE_MSG)
            self.backend.link.close()
        self.client.close()
        if not self.done.done():
            self.done.set_result(None)
