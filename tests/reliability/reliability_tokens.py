"""Mutations of valid DSQL auth tokens, and the oracle that says which ones must be accepted.

Shared by the property tests (``test_reliability_tokens.py``, driven by hypothesis) and the full
fuzz run (``bench/fuzz.py``, driven by a seeded ``random.Random``): every mutation draws its
choices through a :class:`Draw`, so the same code runs under both, and hypothesis can shrink.

The oracle is independent of the verifier's parser: a token is decoded as a presigned URL is
(``https://`` prefix optional, host compared without case and without the default port 443,
query parameters percent-decoded strictly as UTF-8, no duplicates) and a mutated token must be
accepted exactly when that decoded form equals the original's -- that is, when the mutation is
semantically neutral (parameter order, equivalent percent-encoding, host case). Every other
token must be refused with :class:`~dsqlkit.errors.TokenRejected` carrying one of DSQL's hints,
and the hint must not echo secret material.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote_to_bytes

from dsqlkit.auth import sigv4
from dsqlkit.errors import TokenRejected

T = TypeVar("T")

REGION = "us-east-1"
CLUSTER = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)

# The trusted key pairs: one long-term (no session token), one temporary (with a session
# token that is long and full of characters that need percent-encoding, as STS tokens are).
PLAIN = sigv4.Credentials("AKIAFUZZPLAIN0000001", "plainSecretKey/fuzz+0123456789abcdefABCDEF")
TEMPORARY = sigv4.Credentials(
    "ASIAFUZZTEMPORARY001",
    "tempSecretKey/fuzz+9876543210zyxwvuZYXWVU",
    "IQoJb3JpZ2luX2VjEFuzzSessionToken//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/="
    + "Fz9" * 200,
)


@dataclass(frozen=True)
class Context:
    """Where tokens are verified: the endpoint's region, names, clock and trusted keys.

    ``margin`` keeps generated tokens that far from their validity limits, for a verifier
    whose clock is not ``now`` (a running endpoint, a few milliseconds later).
    """

    region: str = REGION
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", CLUSTER)
    now: datetime = NOW
    plain: sigv4.Credentials = PLAIN
    temporary: sigv4.Credentials = TEMPORARY
    users: tuple[str, ...] = ("admin", "admin", "alice")
    margin: int = 0

    @property
    def trusted(self) -> dict[str, sigv4.Credentials]:
        return {c.access_key: c for c in (self.plain, self.temporary)}

    @property
    def impostor(self) -> sigv4.Credentials:
        """Signs as a trusted key id, with the wrong secret."""
        return sigv4.Credentials(self.plain.access_key, "not-the-secret/" + "x" * 25)

    @property
    def stranger(self) -> sigv4.Credentials:
        """A key id the verifier does not know."""
        return sigv4.Credentials("AKIAUNKNOWNKEY000000", self.plain.secret_key)

    @property
    def secrets(self) -> tuple[str, ...]:
        values = (self.plain.secret_key, self.temporary.secret_key,
                  self.temporary.session_token or "")
        return tuple(v for v in values + tuple(quote(v) for v in values) if v)


DEFAULT = Context()

# Every hint the verifier may give, as DSQL words them (docs/local.md).
HINTS = tuple(re.compile(p, re.DOTALL) for p in (
    r"malformed token: .+",
    r"unsupported signing algorithm; expected AWS4-HMAC-SHA256",
    r"the token must sign exactly the host header",
    r"Credential should be scoped to correct service: 'dsql', not '.*'",
    r"Credential should be scoped to a valid region: 'us-east-1', not '.*'",
    r"X-Amz-Expires must be less than a week \(in seconds\) that is 604800",
    r"X-Amz-Expires must be at least 1 second",
    r"the token was signed for another host: .*",
    r"Wrong user to action mapping\. user: .*, action: .*",
    r"Signature expired: .+",
    r"Signature not yet current: .+",
    r"The security token included in the request is invalid\.",
    r"The request signature we calculated does not match the signature you provided\.",
))


def dsql_hint(hint: str) -> bool:
    return any(p.fullmatch(hint) for p in HINTS)


class Draw(Protocol):
    """The source of every choice a mutation makes."""

    def integer(self, lo: int, hi: int) -> int: ...


def choice(draw: Draw, options: Sequence[T]) -> T:
    return options[draw.integer(0, len(options) - 1)]


def boolean(draw: Draw) -> bool:
    return draw.integer(0, 1) == 1


class RandomDraw:
    """Choices from a seeded ``random.Random`` (the full fuzz run, the wire fuzzer)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.randint(lo, hi))


class HypothesisDraw:
    """Choices from hypothesis' ``st.data()``, so that failures shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return int(self.data.draw(self.st.integers(lo, hi)))


# Characters a mutation inserts: URL syntax, percent signs, controls, non-ASCII letters and
# digits (including digits that are not decimal), a NUL, a lone surrogate is left out (a token
# is text a driver has to encode).
_ODD = "&=%?/#@+ ;:,.\\\"'<>[]{}|^`~!$()*\t\r\n\x00\x7f\x1b\u00e9\u00df\u0663\uff19\u00b2\u2460" \
       "\u202e\ufeff\U0001f600"
ALPHABET = string.ascii_letters + string.digits + "-_." + _ODD


def text(draw: Draw, max_size: int, alphabet: str = ALPHABET) -> str:
    return "".join(alphabet[draw.integer(0, len(alphabet) - 1)]
                   for _ in range(draw.integer(0, max_size)))


# ---------------------------------------------------------------------------------------------
# the oracle


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _decode(raw: str) -> str | None:
    if _BAD_ESCAPE.search(raw):
        return None
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def meaning(token: str) -> tuple[str, frozenset[tuple[str, str]]] | None:
    """What a token says, independent of spelling: (host, {(name, value)}), or None when it
    cannot be read as a presigned URL at all."""
    if token.startswith("https://"):
        token = token[len("https://"):]
    host, sep, query = token.partition("/?")
    if not sep:
        return None
    host = host.lower()
    if host.endswith(":443"):
        host = host[:-4]
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        k, eq, v = part.partition("=")
        name, value = _decode(k), _decode(v)
        if not eq or name is None or value is None:
            return None
        pairs.append((name, value))
    if len({k for k, _ in pairs}) != len(pairs):
        return None
    return host, frozenset(pairs)


# ---------------------------------------------------------------------------------------------
# valid tokens and their pieces


@dataclass(frozen=True)
class Base:
    """A valid token and what it was made from."""

    token: str
    user: str
    creds: sigv4.Credentials
    host: str
    expires_in: int
    issued: datetime
    ctx: Context = DEFAULT

    @property
    def signature(self) -> str:
        return self.token.rsplit("X-Amz-Signature=", 1)[1]


def base_token(draw: Draw, ctx: Context = DEFAULT) -> Base:
    user = choice(draw, ctx.users)
    creds = choice(draw, (ctx.plain, ctx.temporary))
    host = choice(draw, ctx.hosts)
    shortest = 1 + 2 * ctx.margin
    lifetimes = [e for e in (1, 60, 900, 3600, 86_400) if e >= shortest]
    expires_in = choice(draw, (*lifetimes, sigv4.MAX_EXPIRES_IN,
                               draw.integer(shortest, sigv4.MAX_EXPIRES_IN)))
    # Issued at any moment that leaves it valid now, up to the 15 minutes of allowed skew.
    age = draw.integer(-15 * 60 + ctx.margin, expires_in - ctx.margin)
    issued = ctx.now.replace(microsecond=0) - timedelta(seconds=age)
    token = sigv4.presign_token(host, ctx.region, creds, action=sigv4.action_for_user(user),
                                expires_in=expires_in, now=issued)
    return Base(token, user, creds, host, expires_in, issued, ctx)


def split(token: str) -> tuple[str, list[tuple[str, str]]]:
    host, _, query = token.partition("/?")
    return host, [(p.partition("=")[0], p.partition("=")[2]) for p in query.split("&")]


def join(host: str, pairs: Sequence[tuple[str, str]]) -> str:
    return host + "/?" + "&".join(f"{k}={v}" for k, v in pairs)


def quote(value: str) -> str:
    return "".join(c if c in sigv4._UNRESERVED else "".join(f"%{b:02X}" for b in c.encode())
                   for c in value)


def sign(host: str, params: Sequence[tuple[str, str]], secret: str, *, day: str,
         region: str, service: str = "dsql") -> str:
    """A token whose signature is valid for exactly these (decoded) parameters: a SigV4
    presigner written apart from dsqlkit's, so that checks other than the signature can be
    reached with anything in the other parameters."""
    encoded = [(quote(k), quote(v)) for k, v in params]
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(encoded))
    canonical_host = host.lower().removesuffix(":443")
    request = f"GET\n/\n{canonical_query}\nhost:{canonical_host}\n\nhost\n{sigv4.EMPTY_SHA256}"
    amz_date = dict(params).get("X-Amz-Date", "")
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()))

    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    key = mac(mac(mac(mac(f"AWS4{secret}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return join(host, [*encoded, ("X-Amz-Signature", signature)])


# ---------------------------------------------------------------------------------------------
# mutations


@dataclass(frozen=True)
class Case:
    """One token to verify, and what must happen to it."""

    mutation: str
    token: str
    user: str
    base: Base
    # None: decide by the oracle (accept exactly the neutral spellings of the base token).
    accept: bool | None = None

    def expected(self) -> bool:
        if self.accept is not None:
            return self.accept
        return meaning(self.token) == meaning(self.base.token)


Mutation = Callable[[Draw, Base], Case]


def _at(draw: Draw, s: str) -> int:
    return draw.integer(0, max(0, len(s) - 1))


def m_reorder(draw: Draw, b: Base) -> Case:
    host, pairs = split(b.token)
    order = list(range(len(pairs)))
    for i in range(len(order) - 1, 0, -1):
        j = draw.integer(0, i)
        order[i], order[j] = order[j], order[i]
    return Case("reorder", join(host, [pairs[i] for i in order]), b.user, b)


def m_percent_encode(draw: Draw, b: Base) -> Case:
    """Spell characters of one name or value as %XX (either hex case): neutral."""
    host, pairs = split(b.token)
    i = draw.integer(0, len(pairs) - 1)
    k, v = pairs[i]
    in_name = draw.integer(0, 3) == 0
    raw = k if in_name else v
    out = []
    j = 0
    while j < len(raw):
        if raw[j] == "%":
            out.append(raw[j:j + 3])
            j += 3
            continue
        c = raw[j]
        if draw.integer(0, 2) == 0:
            h = f"%{ord(c):02X}"
            out.append(h.lower() if boolean(draw) else h)
        else:
            out.append(c)
        j += 1
    pairs[i] = ("".join(out), v) if in_name else (k, "".join(out))
    return Case("percent-encode", join(host, pairs), b.user, b)


def m_percent_decode(draw: Draw, b: Base) -> Case:
    """Write one escape (%2F, %3D, %2B...) as the character itself: neutral unless the
    character is URL syntax."""
    escapes = [m.start() for m in re.finditer(r"%[0-9A-Fa-f]{2}", b.token)]
    if not escapes:
        return m_substitute(draw, b)
    at = choice(draw, escapes)
    char = chr(int(b.token[at + 1:at + 3], 16))
    return Case("percent-decode", b.token[:at] + char + b.token[at + 3:], b.user, b)


def m_hex_case(draw: Draw, b: Base) -> Case:
    token = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower() if boolean(draw)
                   else m.group(0), b.token)
    return Case("hex-case", token, b.user, b)


def m_substitute(draw: Draw, b: Base) -> Case:
    at = _at(draw, b.token)
    c = choice(draw, ALPHABET)
    return Case("substitute", b.token[:at] + c + b.token[at + 1:], b.user, b)


def m_insert(draw: Draw, b: Base) -> Case:
    at = draw.integer(0, len(b.token))
    return Case("insert", b.token[:at] + text(draw, 8) + b.token[at:], b.user, b)


def m_delete(draw: Draw, b: Base) -> Case:
    at = _at(draw, b.token)
    n = draw.integer(1, 40)
    return Case("delete", b.token[:at] + b.token[at + n:], b.user, b)


def m_truncate(draw: Draw, b: Base) -> Case:
    return Case("truncate", b.token[:draw.integer(0, max(0, len(b.token) - 1))], b.user, b)


def m_append(draw: Draw, b: Base) -> Case:
    tail = choice(draw, ("&", "=", "&&", "&=", "&X-Amz-Signature=", "#", "?", "/",
                         "&x=" + text(draw, 6), text(draw, 12)))
    return Case("append", b.token + tail, b.user, b)


def m_duplicate(draw: Draw, b: Base) -> Case:
    host, pairs = split(b.token)
    k, v = choice(draw, pairs)
    if boolean(draw):
        v = v[:-1] + ("0" if v[-1:] != "0" else "1") if v else "x"
    # The duplicate may spell its name differently (X-Amz-Date vs X%2DAmz%2DDate).
    if boolean(draw):
        k = k.replace("-", "%2D")
    pairs.insert(draw.integer(0, len(pairs)), (k, v))
    return Case("duplicate", join(host, pairs), b.user, b)


def m_drop(draw: Draw, b: Base) -> Case:
    host, pairs = split(b.token)
    pairs.pop(draw.integer(0, len(pairs) - 1))
    return Case("drop", join(host, pairs), b.user, b)


def m_unknown(draw: Draw, b: Base) -> Case:
    host, pairs = split(b.token)
    name = choice(draw, ("X-Amz-Content-Sha256", "x-amz-date", "action", "Version",
                         "X-Amz-Signature ", "X-Amz-Security-Token2", text(draw, 10) or "n"))
    pairs.insert(draw.integer(0, len(pairs)), (quote(name), quote(text(draw, 10))))
    return Case("unknown-parameter", join(host, pairs), b.user, b)


_VALUES: dict[str, tuple[str, ...]] = {
    "Action": ("DbConnect", "DbConnectAdmin", "dbconnectadmin", "DbConnectAdmin ", "",
               "Connect", "DbConnect,DbConnectAdmin"),
    "X-Amz-Algorithm": ("AWS4-HMAC-SHA1", "aws4-hmac-sha256", "AWS4-HMAC-SHA256 ", "",
                        "AWS4-ECDSA-P256-SHA256"),
    "X-Amz-Expires": ("0", "-1", "1", "604800", "604801", "0900", " 900", "900 ", "+900",
                      "9e2", "1e3", "", "99999999999999999999", "\uff19\uff10\uff10",
                      "\u0669\u0660\u0660", "900.0", "0x384", "\u00b2", "9\u00b9"),
    "X-Amz-SignedHeaders": ("host;x-amz-date", "HOST", "", "host;", ";host", "x-amz-date"),
    "X-Amz-Date": ("20261123T120000", "2026-11-23T12:00:00Z", "20261123T250000Z",
                   "20261323T120000Z", "00000000T000000Z", "", "20261123t120000z"),
    "X-Amz-Signature": ("", "0" * 64, "g" * 64),
    "X-Amz-Security-Token": ("", "x", "AKIA"),
}


def m_set_value(draw: Draw, b: Base) -> Case:
    """Replace one parameter's value with a value that is wrong in an interesting way."""
    host, pairs = split(b.token)
    i = draw.integer(0, len(pairs) - 1)
    k, v = pairs[i]
    decoded = _decode(v) or ""
    if k == "X-Amz-Credential":
        parts = decoded.split("/")
        j = draw.integer(0, len(parts) - 1)
        parts[j] = choice(draw, ("", "rds-db", "us-west-2", "aws4", parts[j].upper(),
                                 parts[j] + "/x", b.ctx.stranger.access_key, "20261124"))
        new = "/".join(parts)
    elif k == "X-Amz-Signature" and v:
        flip = _at(draw, v)
        new = choice(draw, (*_VALUES[k], v.upper(), v[:-1], v + "0",
                            v[:flip] + ("0" if v[flip] != "0" else "1") + v[flip + 1:]))
    elif k == "X-Amz-Security-Token":
        new = choice(draw, (*_VALUES[k], decoded[:-1], decoded + "=", decoded.swapcase()))
    else:
        new = choice(draw, _VALUES.get(k, ("",)))
    if new == decoded:
        new += "0"
    pairs[i] = (k, quote(new) if boolean(draw) else new.replace("&", "%26"))
    return Case(f"value:{k}", join(host, pairs), b.user, b)


def m_oversize(draw: Draw, b: Base) -> Case:
    host, pairs = split(b.token)
    i = draw.integer(0, len(pairs) - 1)
    size = choice(draw, (1_000, 8_000, sigv4.MAX_TOKEN_LENGTH - len(b.token),
                         sigv4.MAX_TOKEN_LENGTH, 20_000, 100_000))
    pairs[i] = (pairs[i][0], pairs[i][1] + choice(draw, ("a", "%41", "0")) * max(size, 1))
    return Case("oversize", join(host, pairs), b.user, b)


def m_host(draw: Draw, b: Base) -> Case:
    """Another host, or the same one spelled differently (case, :443, https://)."""
    _, _, rest = b.token.partition("/?")
    host = choice(draw, (b.host.upper(), b.host + ":443", "https://" + b.host,
                         "HTTPS://" + b.host, "http://" + b.host, b.host + ":5432",
                         b.host + ".", "user@" + b.host, "", "[::1]", "::1", "evil.example",
                         b.host.replace(".", "%2E"), b.host + "%00",
                         *[h for h in b.ctx.hosts if h != b.host]))
    return Case("host", host + "/?" + rest, b.user, b)


def m_other_user(draw: Draw, b: Base) -> Case:
    """The same token presented for another role: only a role with the same action may
    use it (the endpoint cannot know which principal signed it, docs/local.md)."""
    user = choice(draw, ("admin", "alice", "bob", "Admin", "admin ", ""))
    same_action = sigv4.action_for_user(user) == sigv4.action_for_user(b.user)
    return Case("other-user", b.token, user, b, accept=same_action)


def m_resign(draw: Draw, b: Base) -> Case:
    """A correctly signed token whose parameters are wrong: every check besides the
    signature must hold on its own."""
    host, pairs = split(b.token)
    params = [(_decode(k) or k, _decode(v) or v) for k, v in pairs if k != "X-Amz-Signature"]
    day = b.issued.strftime("%Y%m%d")
    ctx = b.ctx
    region, service, secret = ctx.region, "dsql", b.creds.secret_key
    what = choice(draw, ("extra-parameter", "signed-headers", "algorithm", "action",
                         "expires", "service", "region", "impostor", "stranger",
                         "host", "session-token", "no-session-token", "expired",
                         "future", "identical"))
    p = dict(params)
    accept = False
    if what == "extra-parameter":
        params.append((choice(draw, ("X-Amz-Content-Sha256", "Version", "foo")), "1"))
    elif what == "signed-headers":
        p["X-Amz-SignedHeaders"] = choice(draw, ("host;x-amz-date", "", "HOST"))
    elif what == "algorithm":
        p["X-Amz-Algorithm"] = choice(draw, ("AWS4-HMAC-SHA1", "AWS4-ECDSA-P256-SHA256"))
    elif what == "action":
        p["Action"] = choice(draw, ("DbConnect", "DbConnectAdmin", "Connect", ""))
        accept = p["Action"] == sigv4.action_for_user(b.user)
    elif what == "expires":
        p["X-Amz-Expires"] = str(choice(draw, (0, sigv4.MAX_EXPIRES_IN + 1, 10**7)))
    elif what == "service":
        service = choice(draw, ("rds-db", "s3", "DSQL"))
        p["X-Amz-Credential"] = p["X-Amz-Credential"].replace("/dsql/", f"/{service}/")
    elif what == "region":
        region = choice(draw, ("us-west-2", "US-EAST-1", "us-east-1 "))
        p["X-Amz-Credential"] = p["X-Amz-Credential"].replace(f"/{ctx.region}/", f"/{region}/")
    elif what == "impostor":
        secret = ctx.impostor.secret_key
    elif what == "stranger":
        p["X-Amz-Credential"] = p["X-Amz-Credential"].replace(
            b.creds.access_key, ctx.stranger.access_key)
    elif what == "host":
        host = choice(draw, ("evil.example", "localhost.",
                             *[h for h in ctx.hosts if h != host]))
        accept = host in ctx.hosts
    elif what == "session-token":
        p["X-Amz-Security-Token"] = (ctx.temporary.session_token or "") + choice(
            draw, ("x", "="))
    elif what == "no-session-token":
        accept = "X-Amz-Security-Token" not in p
        p.pop("X-Amz-Security-Token", None)
    elif what in ("expired", "future"):
        # Re-issued at another moment: accepted exactly inside [issued - 15 min, expiry].
        shift = draw.integer(-2 * sigv4.MAX_EXPIRES_IN, 2 * 3600)
        now = ctx.now.replace(microsecond=0)
        issued = now - timedelta(seconds=shift) if what == "expired" else now + timedelta(
            seconds=draw.integer(0, 3600))
        expires = int(p["X-Amz-Expires"])
        p["X-Amz-Date"] = issued.strftime("%Y%m%dT%H%M%SZ")
        day = issued.strftime("%Y%m%d")
        p["X-Amz-Credential"] = re.sub(r"/\d{8}/", f"/{day}/", p["X-Amz-Credential"])
        accept = issued - sigv4.MAX_CLOCK_SKEW <= now <= issued + timedelta(seconds=expires)
        if min(abs(now - (issued - sigv4.MAX_CLOCK_SKEW)),
               abs(now - (issued + timedelta(seconds=expires)))) < timedelta(
                   seconds=ctx.margin):
            what = "identical"  # too close to a limit for a verifier with another clock
            p = dict(params)
            day = b.issued.strftime("%Y%m%d")
            accept = True
    else:
        accept = True
    if what not in ("extra-parameter",):
        params = list(p.items())
    token = sign(host, params, secret, day=day, region=region, service=service)
    return Case(f"resign:{what}", token, b.user, b, accept=accept)


def m_date(draw: Draw, b: Base) -> Case:
    """Change X-Amz-Date and the credential's day together (unsigned): reaches the date,
    expiry and skew checks, which must all answer before the signature is computed."""
    host, pairs = split(b.token)
    year = choice(draw, (1, 1970, 2026, 2038, 9998, 9999, draw.integer(1, 9999)))
    stamp = choice(draw, (
        f"{year:04d}{draw.integer(0, 13):02d}{draw.integer(0, 32):02d}T"
        f"{draw.integer(0, 25):02d}{draw.integer(0, 61):02d}{draw.integer(0, 61):02d}Z",
        f"{year:04d}1231T235959Z",
        b.ctx.now.strftime("%Y%m%dT%H%M%SZ"),
    ))
    out = []
    for k, v in pairs:
        if k == "X-Amz-Date":
            v = stamp
        elif k == "X-Amz-Credential":
            v = re.sub(r"%2F\d{8}%2F", f"%2F{stamp[:8]}%2F", v)
        out.append((k, v))
    return Case("date", join(host, out), b.user, b)


MUTATIONS: dict[str, Mutation] = {
    "reorder": m_reorder,
    "percent-encode": m_percent_encode,
    "percent-decode": m_percent_decode,
    "hex-case": m_hex_case,
    "substitute": m_substitute,
    "insert": m_insert,
    "delete": m_delete,
    "truncate": m_truncate,
    "append": m_append,
    "duplicate": m_duplicate,
    "drop": m_drop,
    "unknown-parameter": m_unknown,
    "set-value": m_set_value,
    "oversize": m_oversize,
    "host": m_host,
    "other-user": m_other_user,
    "resign": m_resign,
    "date": m_date,
}
_NAMES = tuple(MUTATIONS)


def mutate(draw: Draw, ctx: Context = DEFAULT, rounds: int = 2) -> Case:
    """A valid token with one to ``rounds`` mutations applied (their names joined by +)."""
    base = base_token(draw, ctx)
    case = MUTATIONS[choice(draw, _NAMES)](draw, base)
    for _ in range(draw.integer(0, rounds - 1)):
        if case.accept is not None:
            break  # the expectation of a semantic case holds for that token only
        step = MUTATIONS[choice(draw, _NAMES)]
        if step in (m_other_user, m_resign):
            break
        again = step(draw, Base(case.token, base.user, base.creds, base.host,
                                base.expires_in, base.issued, ctx))
        case = Case(f"{case.mutation}+{again.mutation}", again.token, case.user, base)
    return case


# ---------------------------------------------------------------------------------------------
# running one case


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    hint: str | None = None
    crash: BaseException | None = None


def verify(case: Case) -> Outcome:
    ctx = case.base.ctx
    try:
        sigv4.verify_token(case.token, user=case.user, region=ctx.region, hosts=ctx.hosts,
                           lookup=ctx.trusted.get, now=ctx.now)
    except TokenRejected as exc:
        return Outcome(False, hint=exc.hint)
    except Exception as exc:  # a crash: anything but a rejection
        return Outcome(False, crash=exc)
    return Outcome(True)


def problems(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with how the verifier treated ``case`` (empty: nothing)."""
    out: list[str] = []
    if outcome.crash is not None:
        return [f"crashed with {type(outcome.crash).__name__}: {outcome.crash}"]
    expected = case.expected()
    if outcome.accepted and not expected:
        out.append("accepted a token that is not a neutral spelling of a valid one")
    if not outcome.accepted and expected:
        out.append(f"refused a neutral spelling of a valid token: {outcome.hint}")
    if outcome.hint is not None:
        if not dsql_hint(outcome.hint):
            out.append(f"rejection hint is not one of DSQL's: {outcome.hint!r}")
        if leaks(outcome.hint, case):
            out.append("rejection hint echoes secret material")
    return out


def leaks(message: str, case: Case) -> bool:
    """Whether ``message`` contains a secret key, the session token or the token's signature."""
    return any(s in message for s in (*case.base.ctx.secrets, case.base.signature))
