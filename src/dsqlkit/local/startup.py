"""A session's startup: the startup packet, DSQL's parameter rules, IAM token authentication,
and the backend session it will relay to. Errors end the session with DSQL's FATAL answers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsqlkit.errors import TokenRejected
from dsqlkit.local import dialect, wire
from dsqlkit.local.backend import BackendRefused, BackendSession, open_session
from dsqlkit.local.link import Link, LinkClosed

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)

# Parameters DSQL knows that PostgreSQL does not: kept by the endpoint, never sent on.
# (dsql.enable_batched_nestloop has a dot, so PostgreSQL keeps it as a placeholder.)
ENDPOINT_PARAMETERS = dialect.DSQL_ONLY_SETTINGS
REPORTED_VERSION = dialect.SERVER_VERSION


@dataclass(frozen=True, slots=True)
class Started:
    """An authenticated client: its role, the DSQL-only settings it asked for at startup,
    and its backend session."""

    user: str
    settings: dict[str, str]
    backend: BackendSession


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


def _role_refusal(user: str, exc: BackendRefused) -> Exception:
    """DSQL's answer when the backend refuses a role: it does not exist or cannot log in."""
    message = exc.fields.get("M", "")
    if exc.fields.get("C") == "28000" and "does not exist" in message:
        # 08P01, not 08006: the official connector's suite (green on DSQL) expects asyncpg's
        # ProtocolViolationError for an unknown role.
        return Refusal("08P01", "unable to accept connection, access denied",
                       hint=f"Role {user} does not exist")
    if exc.fields.get("C") == "28000" and "not permitted to log in" in message:
        return access_denied(f"role {user} must have the LOGIN attribute")
    return exc


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


async def startup(server: Server, client: Link, sni: str | None) -> Started:
    """Read the startup packet, check the token, open the backend session.

    Raises :class:`Refusal` (or the backend's own refusal) to end the session with a
    FATAL error."""
    frame = b""
    while True:
        _, frame = await client.read_frame()
        code = wire.startup_code(frame)
        if code == wire.CANCEL_REQUEST_CODE:
            pid, secret = wire.parse_cancel(frame)
            await server.cancel(pid, secret)
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
    if not sni:
        raise Refusal("08006", "unable to accept connection, sni was not received")
    user = params.pop("user", "")
    if not user:
        raise Refusal("28000", "no PostgreSQL user name specified in startup packet")
    database = params.pop("database", user)
    backend_params: dict[str, str] = {}
    settings: dict[str, str] = {}
    options: list[tuple[str, str]] = parse_options(params.pop("options", ""))
    for name, value in [*params.items(), *options]:
        lname = name.lower()
        refused = dialect.setting_refusal(name)
        if refused is not None:
            raise Refusal(refused.sqlstate, refused.message)
        if lname in ENDPOINT_PARAMETERS:
            settings[lname] = value
        else:
            backend_params[name] = value
    if database != "postgres":
        raise Refusal("3D000", f'database "{database}" does not exist')

    client.write(wire.AUTH_CLEARTEXT)
    mtype, frame = await client.read_frame()
    if mtype != wire.PASSWORD:
        raise wire.ProtocolViolation(
            f"expected password response, got message type {mtype}"
        )
    token = wire.parse_password(frame)
    try:
        server.verify_token(token, user)
    except TokenRejected as exc:
        log.info("rejected a token for user %r: %s", user, exc.hint)
        raise access_denied(exc.hint) from None
    except Exception as exc:  # a verifier bug must still answer as DSQL does
        log.warning("token verification failed unexpectedly (%s)", type(exc).__name__)
        raise access_denied("malformed token") from None
    await server.authorize(user)
    if server.faults.roll("auth-outage"):
        raise Refusal("08006", "unable to accept connection, waking up cluster, "
                      "please retry later")

    try:
        backend = await open_session(
            server.backend_address(),
            server.backend_startup(user, backend_params),
        )
    except BackendRefused as exc:
        raise _role_refusal(user, exc) from None
    if user != "admin":
        await _check_iam_mapping(backend, user)
    return Started(user, settings, backend)


def greeting(backend: BackendSession, key: tuple[int, int]) -> bytes:
    """AuthenticationOk, the backend's parameters (DSQL's server_version), our key data."""
    out = [wire.AUTH_OK]
    for k, v in backend.parameters.items():
        out.append(wire.parameter_status(k, REPORTED_VERSION if k == "server_version" else v))
    out.append(wire.backend_key_data(*key))
    out.append(wire.ready_for_query())
    return b"".join(out)

async def _check_iam_mapping(backend: BackendSession, user: str) -> None:
    """A role other than admin may log in only through an IAM mapping (AWS IAM GRANT), and
    never as a role with powers DSQL gives no role (superuser, replication, bypassing row
    security): the endpoint never maps one, but the backend may have been changed directly.

    The local endpoint cannot know which IAM principal signed the token, so any mapping
    of the role admits it (see docs/local.md)."""
    link = backend.link
    link.write(wire.query(
        # Qualified: the role's own search_path (ALTER ROLE ... SET) is in force already.
        "SELECT EXISTS (SELECT FROM sys.iam_pg_role_mappings WHERE pg_role_name = "
        "current_user), rolsuper OR rolreplication OR rolbypassrls FROM pg_catalog.pg_roles "
        "WHERE rolname = current_user"))
    values: list[bytes | None] = []
    while True:
        mtype, frame = await link.read_frame()
        if mtype == wire.DATA_ROW:
            values = wire.parse_data_row(frame)
        elif mtype == wire.READY_FOR_QUERY:
            break
    mapped = len(values) == 2 and values[0] == b"t"
    if not mapped:
        raise access_denied(
            f"role {user} has no IAM mapping; run AWS IAM GRANT {user} TO '<role arn>' "
            "as admin")
    if values[1] != b"f":
        raise access_denied(f"role {user} has powers DSQL gives no role (superuser, "
                            "replication or bypassrls) and may not log in")
