"""SigV4 query presigning and verification of Aurora DSQL auth tokens. Pure functions, no I/O.

A DSQL auth token is a presigned URL without its scheme::

    <host>/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...
      &X-Amz-Date=...&X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]
      &X-Amz-Signature=<hex>

:func:`presign_token` produces exactly the bytes botocore's
``generate_db_connect_auth_token`` / ``generate_db_connect_admin_auth_token`` produce for the
same inputs (proven by a differential test). :func:`verify_token` is what the local endpoint
runs on every password it receives.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

from dsqlkit.errors import TokenRejected

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# Minting a token sits on cold-start paths (a Lambda init, a CLI run): this module imports
# neither re, urllib.parse nor dataclasses at run time; the verifier imports what it needs.

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "dsql"
ADMIN_ACTION = "DbConnectAdmin"
CONNECT_ACTION = "DbConnect"
ACTIONS = (CONNECT_ACTION, ADMIN_ACTION)
# DSQL refuses tokens that live longer than one week.
MAX_EXPIRES_IN = 604_800
DEFAULT_EXPIRES_IN = 900
# Longest token the verifier looks at. A token with a long STS session token is ~2 KiB.
MAX_TOKEN_LENGTH = 16_384
# How far in the future an X-Amz-Date may lie (AWS tolerates 15 minutes of clock skew).
MAX_CLOCK_SKEW = timedelta(minutes=15)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SAFE = "-_.~"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_REQUIRED = (
    "Action",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


class Credentials:
    """AWS credentials (immutable). ``repr`` never shows the secret or the session token."""

    __slots__ = ("access_key", "secret_key", "session_token")

    access_key: str
    secret_key: str
    session_token: str | None

    def __init__(self, access_key: str, secret_key: str, session_token: str | None = None,
                 ) -> None:
        object.__setattr__(self, "access_key", access_key)
        object.__setattr__(self, "secret_key", secret_key)
        object.__setattr__(self, "session_token", session_token)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Credentials are immutable")

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.access_key, self.secret_key, self.session_token) == (
            other.access_key, other.secret_key, other.session_token)

    def __hash__(self) -> int:
        return hash((self.access_key, self.secret_key, self.session_token))

    def __reduce__(self) -> tuple[object, ...]:
        return (Credentials, (self.access_key, self.secret_key, self.session_token))


def action_for_user(user: str) -> str:
    """DSQL maps the built-in ``admin`` role to DbConnectAdmin and every other role to DbConnect."""
    return ADMIN_ACTION if user == "admin" else CONNECT_ACTION


# RFC 3986 percent-encoding of everything but unreserved characters, as
# urllib.parse.quote(value, safe="-_.~") does, via str.translate for ASCII.
_UNRESERVED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + _SAFE
)
_ASCII_TABLE = {i: f"%{i:02X}" for i in range(128) if chr(i) not in _UNRESERVED}
_QUOTED: dict[str, str] = {}


def _quote(value: str) -> str:
    # Cached: a pool re-mints with the same (up to 2 KiB) session token every few minutes.
    quoted = _QUOTED.get(value)
    if quoted is None:
        if value.isascii():
            quoted = value.translate(_ASCII_TABLE)
        else:
            quoted = "".join(
                chr(b) if chr(b) in _UNRESERVED else f"%{b:02X}" for b in value.encode()
            )
        if len(_QUOTED) >= 256:
            _QUOTED.clear()
        _QUOTED[value] = quoted
    return quoted


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The SigV4 signing key for one day (``YYYYMMDD``), region and service."""
    k_date = _hmac(f"AWS4{secret_key}".encode(), date)
    return _hmac(_hmac(_hmac(k_date, region), service), "aws4_request")


def canonical_host(host: str) -> str:
    """The ``host`` header value SigV4 signs: lower case, without the default https port."""
    h = host.lower()
    if h.endswith(":443"):
        h = h[:-4]
    return h


def _signature(
    key: bytes, amz_date: str, scope: str, canonical_query: str, host: str
) -> str:
    canonical_request = (
        f"GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{EMPTY_SHA256}"
    )
    string_to_sign = (
        f"{ALGORITHM}\n{amz_date}\n{scope}\n"
        f"{hashlib.sha256(canonical_request.encode('utf-8')).hexdigest()}"
    )
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def presign_token(
    hostname: str,
    region: str,
    credentials: Credentials,
    *,
    action: str = CONNECT_ACTION,
    expires_in: int = DEFAULT_EXPIRES_IN,
    now: datetime | None = None,
    key: bytes | None = None,
) -> str:
    """Mint a DSQL auth token for ``hostname`` (byte-identical to botocore's).

    ``key`` may pass a precomputed :func:`signing_key` for the token's day and region;
    :class:`dsqlkit.auth.tokens.TokenProvider` uses that to keep minting in microseconds.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    moment = now if now is not None else datetime.now(timezone.utc)
    amz_date = moment.strftime(_DATE_FORMAT)
    day = amz_date[:8]
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    # Order as botocore writes it: the operation parameter, then the auth parameters.
    pairs = [
        ("Action", action),
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires_in)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.session_token is not None:
        pairs.append(("X-Amz-Security-Token", credentials.session_token))
    encoded = [(_quote(k), _quote(v)) for k, v in pairs]
    query = "&".join(f"{k}={v}" for k, v in encoded)
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(encoded))
    if key is None:
        key = signing_key(credentials.secret_key, day, region)
    sig = _signature(key, amz_date, scope, canonical_query, canonical_host(hostname))
    return f"{hostname}/?{query}&X-Amz-Signature={sig}"


class ParsedToken:
    """A token split into its parts; values are percent-decoded."""

    __slots__ = ("host", "params")

    def __init__(self, host: str, params: dict[str, str]) -> None:
        self.host = host
        self.params = params


def parse_token(token: str) -> ParsedToken:
    """Split a token into host and decoded query parameters, or raise :class:`TokenRejected`.

    Accepts an optional ``https://`` prefix. Rejects duplicate parameters, malformed
    percent-escapes and anything oversized, without ever allocating more than the token.
    """
    import re
    from urllib.parse import unquote

    percent_re = re.compile(r"%(?![0-9A-Fa-f]{2})")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected(f"malformed token: longer than {MAX_TOKEN_LENGTH} characters")
    if token.startswith("https://"):
        token = token[len("https://") :]
    host, sep, query = token.partition("/?")
    if not sep or not host or not query:
        raise TokenRejected("malformed token: expected <host>/?<signed query>")
    if any(c in host for c in "/?#@ \t\r\n"):
        raise TokenRejected("malformed token: invalid host")
    params: dict[str, str] = {}
    for part in query.split("&"):
        k, eq, v = part.partition("=")
        if not eq or not k:
            raise TokenRejected("malformed token: query parameter without a value")
        if percent_re.search(k) or percent_re.search(v):
            raise TokenRejected("malformed token: invalid percent-encoding")
        try:
            name = unquote(k, errors="strict")
            value = unquote(v, errors="strict")
        except UnicodeDecodeError:
            raise TokenRejected("malformed token: parameters are not UTF-8") from None
        if name in params:
            raise TokenRejected(f"malformed token: duplicate parameter {name}")
        if len(params) >= 16:
            raise TokenRejected("malformed token: too many parameters")
        params[name] = value
    return ParsedToken(host=host, params=params)


class VerifiedToken:
    """What a valid token proves."""

    __slots__ = ("access_key", "action", "expires_at", "host", "issued_at")

    def __init__(self, access_key: str, action: str, host: str, issued_at: datetime,
                 expires_at: datetime) -> None:
        self.access_key = access_key
        self.action = action
        self.host = host
        self.issued_at = issued_at
        self.expires_at = expires_at


if TYPE_CHECKING:
    SecretLookup = Callable[[str], Credentials | None]


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def _name_shown(name: str) -> str:
    """A parameter name as a hint may show it: a long or odd one may be a value run into
    its name (a lost ``=``), such as the session token, and is not echoed."""
    if 0 < len(name) <= 40 and name[0].isalpha() and _NAME_CHARS.issuperset(name):
        return name
    return f"(a name of {len(name)} characters)"


def _fmt(moment: datetime) -> str:
    return moment.strftime(_DATE_FORMAT)


def verify_token(
    token: str,
    *,
    user: str,
    region: str,
    hosts: Iterable[str],
    lookup: SecretLookup,
    now: datetime | None = None,
) -> VerifiedToken:
    """Check a token as DSQL does, or raise :class:`TokenRejected` with DSQL-style hint.

    ``hosts`` are the names the endpoint answers to (compared without case, with or
    without a port); ``lookup`` maps an access key id to the trusted credentials.
    """
    parsed = parse_token(token)
    p = parsed.params
    missing = [name for name in _REQUIRED if name not in p]
    if missing:
        raise TokenRejected(f"malformed token: missing parameter {missing[0]}")
    unknown = sorted(set(p) - set(_REQUIRED) - {"X-Amz-Security-Token"})
    if unknown:
        raise TokenRejected(f"malformed token: unexpected parameter {_name_shown(unknown[0])}")
    if p["X-Amz-Algorithm"] != ALGORITHM:
        raise TokenRejected(f"unsupported signing algorithm; expected {ALGORITHM}")
    if p["X-Amz-SignedHeaders"] != "host":
        raise TokenRejected("the token must sign exactly the host header")
    cred = p["X-Amz-Credential"].split("/")
    if len(cred) != 5 or not cred[0] or cred[4] != "aws4_request":
        raise TokenRejected(
            "malformed token: X-Amz-Credential is not <key>/<date>/<region>/dsql/aws4_request"
        )
    access_key, scope_day, scope_region, scope_service, _ = cred
    if scope_service != SERVICE:
        raise TokenRejected(
            f"Credential should be scoped to correct service: '{SERVICE}', not '{scope_service}'"
        )
    if scope_region != region:
        raise TokenRejected(
            f"Credential should be scoped to a valid region: '{region}', not '{scope_region}'"
        )
    amz_date = p["X-Amz-Date"]
    if not (len(amz_date) == 16 and amz_date[8] == "T" and amz_date[15] == "Z"
            and amz_date[:8].isdigit() and amz_date[9:15].isdigit()) or scope_day != amz_date[:8]:
        raise TokenRejected("malformed token: X-Amz-Date does not match the credential scope")
    try:
        issued = datetime.strptime(amz_date, _DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise TokenRejected("malformed token: invalid X-Amz-Date") from None
    expires_raw = p["X-Amz-Expires"]
    # isascii: str.isdigit() also accepts digits int() refuses (superscripts, circled...).
    if not (expires_raw.isascii() and expires_raw.isdigit()):
        raise TokenRejected("malformed token: X-Amz-Expires must be a whole number of seconds")
    # DSQL's own words (its connector's suite expects them), as AWS's SigV4 says them.
    if len(expires_raw) > 7 or int(expires_raw) > MAX_EXPIRES_IN:
        raise TokenRejected(
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_EXPIRES_IN}")
    expires_in = int(expires_raw)
    if expires_in < 1:
        raise TokenRejected("X-Amz-Expires must be at least 1 second")
    host = canonical_host(parsed.host)
    allowed = {canonical_host(h) for h in hosts}
    if host not in allowed and host.rsplit(":", 1)[0] not in allowed:
        raise TokenRejected(f"the token was signed for another host: {parsed.host}")
    action = p["Action"]
    if action not in ACTIONS or action != action_for_user(user):
        raise TokenRejected(f"Wrong user to action mapping. user: {user}, action: {action}")
    moment = now if now is not None else datetime.now(timezone.utc)
    # The future check comes first: near year 9999, issued + expires would overflow.
    if issued - moment > MAX_CLOCK_SKEW:
        raise TokenRejected(
            f"Signature not yet current: {amz_date} is still later than "
            f"{_fmt(moment + MAX_CLOCK_SKEW)} ({_fmt(moment)} + 15 min.)"
        )
    expires_at = issued + timedelta(seconds=expires_in)
    if moment > expires_at:
        raise TokenRejected(
            f"Signature expired: {amz_date} is now earlier than {_fmt(moment)} "
            f"({amz_date} + {expires_in} s)"
        )
    trusted = lookup(access_key)
    if trusted is None:
        raise TokenRejected("The security token included in the request is invalid.")
    presented = p.get("X-Amz-Security-Token")
    if (presented is not None or trusted.session_token is not None) and (
        presented is None
        or trusted.session_token is None
        or not hmac.compare_digest(presented.encode(), trusted.session_token.encode())
    ):
        raise TokenRejected("The security token included in the request is invalid.")
    encoded = sorted(
        (_quote(k), _quote(v)) for k, v in p.items() if k != "X-Amz-Signature"
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in encoded)
    scope = f"{scope_day}/{scope_region}/{SERVICE}/aws4_request"
    expected = _signature(
        signing_key(trusted.secret_key, scope_day, scope_region),
        amz_date,
        scope,
        canonical_query,
        host,
    )
    if not hmac.compare_digest(expected.encode(), p["X-Amz-Signature"].encode()):
        raise TokenRejected(
            "The request signature we calculated does not match the signature you provided."
        )
    return VerifiedToken(
        access_key=access_key,
        action=action,
        host=parsed.host,
        issued_at=issued,
        expires_at=expires_at,
    )
