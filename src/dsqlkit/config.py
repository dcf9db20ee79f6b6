"""Connection strings → one immutable :class:`DsqlConfig`. Pure: no I/O beyond reading the
environment (and, only when nothing else names a region, the AWS config file via botocore).

Accepted inputs::

    postgres://admin@<cluster-id>.dsql.us-east-1.on.aws/postgres?token_duration_secs=900
    postgresql://app@<cluster-id>.dsql.us-east-1.on.aws:5432/postgres?profile=dev
    host=<cluster-id>.dsql.us-east-1.on.aws user=admin sslrootcert=/etc/dsql/root.pem
    <cluster-id>                  (a bare 26-character cluster id; needs a region)
    <cluster-id>.dsql.us-east-1.on.aws

Region, first match wins:

1. ``region=`` in the connection string or as a keyword argument;
2. the hostname ``<id>.dsql[-suffix].<region>.on.aws``;
3. the environment: ``AWS_REGION``, then ``AWS_DEFAULT_REGION``;
4. the ``region`` of the AWS profile (``profile=``, else ``AWS_PROFILE``, else ``default``).

If 1 and 2 disagree the token would be refused by DSQL, so that is a :class:`ConfigError`.

Defaults: user ``admin``, database ``postgres``, port 5432, token lifetime 900 s (1 to
604,800), ``sslmode=verify-full`` against the system trust store (or ``sslrootcert``, or
``PGSSLROOTCERT``), direct TLS negotiation where the driver's libpq supports it. Every other
libpq parameter passes through unchanged; ``application_name`` becomes a prefix:
``<prefix>:dsqlkit/<version>``. A password is ignored (with a warning): DSQL authenticates
with an IAM token, minted for every connection.
"""

from __future__ import annotations

import os

from dsqlkit._log import get_logger
from dsqlkit.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any

# Cold starts matter (Lambda, CLIs): this module imports neither re, urllib.parse,
# dataclasses nor typing at run time.
logger = get_logger(__name__)

DEFAULT_USER = "admin"
DEFAULT_DATABASE = "postgres"
DEFAULT_PORT = 5432
DEFAULT_TOKEN_DURATION_SECS = 900
MAX_TOKEN_DURATION_SECS = 604_800
DEFAULT_SSLMODE = "verify-full"
# The literal libpq accepts for "the system's trust store"; drivers resolve it to a file.
SYSTEM_ROOTS = "system"

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSLNEGOTIATIONS = ("postgres", "direct")
_SCHEMES = ("postgres", "postgresql")

_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_REGION_CHARS = _LOWER_ALNUM | {"-"}
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# Parameters dsqlkit consumes itself; they never reach the driver.
_DSQL_KEYS = frozenset({"region", "profile", "token_duration_secs", "credentials_provider"})
_ALIASES = {
    "tokenDurationSecs": "token_duration_secs",
    "database": "dbname",
    "credentials": "credentials_provider",
}
# libpq connection parameters (PostgreSQL 18) that pass through to the driver untouched.
_PASSTHROUGH = frozenset({
    "hostaddr", "connect_timeout", "client_encoding", "options", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "replication", "gssencmode", "sslcompression", "sslcert", "sslkey",
    "sslkeylogfile", "sslpassword", "sslcertmode", "sslcrl", "sslcrldir", "sslsni",
    "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "min_protocol_version", "max_protocol_version", "krbsrvname", "gsslib", "gssdelegation",
    "service", "target_session_attrs", "load_balance_hosts", "channel_binding",
    "require_auth", "passfile", "scram_client_key", "scram_server_key",
})
# Parameters with a meaning of their own in DsqlConfig.
_OWN = frozenset({
    "host", "port", "user", "dbname", "password", "sslmode", "sslrootcert", "sslnegotiation",
    "application_name",
})
KNOWN_PARAMETERS = _DSQL_KEYS | _PASSTHROUGH | _OWN


def _version() -> str:
    from dsqlkit import __version__

    return __version__


def _application_name(prefix: str | None) -> str:
    """``dsqlkit/<version>``, or ``<prefix>:dsqlkit/<version>`` (an ORM or app tag)."""
    base = f"dsqlkit/{_version()}"
    prefix = (prefix or "").strip()
    return f"{prefix}:{base}" if prefix else base


def is_cluster_id(host: str) -> bool:
    """A DSQL cluster identifier: exactly 26 characters of ``[a-z0-9]``."""
    return len(host) == 26 and _LOWER_ALNUM.issuperset(host)


def _is_region(value: str) -> bool:
    # [a-z0-9]+(-[a-z0-9]+)*
    return bool(value) and all(part and _LOWER_ALNUM.issuperset(part)
                               for part in value.split("-"))


def region_from_hostname(host: str) -> str | None:
    """The region in ``<id>.dsql[-suffix].<region>.on.aws``, or ``None``.

    The same rule as the regex ``\\.dsql[^.]*\\.([a-z0-9-]+)\\.on\\.aws$`` used by the
    official connectors.
    """
    labels = host.lower().rstrip(".").split(".")
    if len(labels) < 5 or labels[-2:] != ["on", "aws"]:
        return None
    region, service = labels[-3], labels[-4]
    if not service.startswith("dsql") or not region or not _REGION_CHARS.issuperset(region):
        return None
    return region


def cluster_hostname(cluster_id: str, region: str) -> str:
    return f"{cluster_id}.dsql.{region}.on.aws"


def _profile_region(profile: str | None) -> str | None:
    # Only here do we pay for botocore: nothing cheaper named a region.
    try:
        import botocore.session
        from botocore.exceptions import ProfileNotFound
    except ImportError:  # pragma: no cover - botocore is a hard dependency
        return None
    try:
        region = botocore.session.Session(profile=profile).get_config_variable("region")
    except ProfileNotFound:
        raise ConfigError(
            f"AWS profile {profile!r} not found: define it in ~/.aws/config, "
            "or pass another profile=…"
        ) from None
    return region if isinstance(region, str) and region else None


def resolve_region(
    explicit: str | None,
    host: str,
    profile: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    how: str = "pass ?region=us-east-1 (or region=… as a keyword)",
) -> str:
    """Apply the documented region order (module docstring) or raise :class:`ConfigError`.

    ``how`` tells the user how to name a region in the error message.
    """
    env = os.environ if environ is None else environ
    from_host = region_from_hostname(host)
    if explicit is not None:
        region = _check_region(explicit, "region")
        if from_host is not None and from_host != region:
            raise ConfigError(
                f"region {region} contradicts the hostname {host}, which is in {from_host}: "
                "drop the region or fix it, as DSQL refuses tokens signed for another region"
            )
        return region
    if from_host is not None:
        return from_host
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = env.get(var)
        if value:
            return _check_region(value, var)
    from_profile = _profile_region(profile)
    if from_profile is not None:
        return _check_region(from_profile, f"the region of AWS profile {profile or 'default'!r}")
    raise ConfigError(
        f"region could not be determined for host {host!r}: {how}, use the full "
        "<cluster-id>.dsql.<region>.on.aws hostname, or set AWS_REGION"
    )


def _check_region(value: str, source: str) -> str:
    if not _is_region(value):
        raise ConfigError(
            f"invalid region {value!r} (from {source}): expected a lower-case AWS region "
            "such as us-east-1"
        )
    return value


def _check_duration(value: Any) -> int:
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ConfigError(
                f"token_duration_secs must be a whole number of seconds, not {value!r}: "
                f"use a value from 1 to {MAX_TOKEN_DURATION_SECS} (default 900)"
            )
        value = int(text)
    if not isinstance(value, int):
        raise ConfigError(
            f"token_duration_secs must be an integer, not {type(value).__name__}: "
            f"use a value from 1 to {MAX_TOKEN_DURATION_SECS}"
        )
    if not 1 <= value <= MAX_TOKEN_DURATION_SECS:
        raise ConfigError(
            f"token_duration_secs={value} is out of range: DSQL accepts 1 to "
            f"{MAX_TOKEN_DURATION_SECS} seconds (one week); the default is 900"
        )
    return value


def _check_port(value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"invalid port {value!r}: use a number from 1 to 65535 (DSQL: 5432)")
    return int(text)


_FIELDS = (
    "host", "region", "port", "user", "database", "profile", "token_duration_secs",
    "sslmode", "sslrootcert", "sslnegotiation", "application_name", "params",
    "credentials_provider",
)


class DsqlConfig:
    """Everything needed to open an IAM-authenticated connection to one DSQL endpoint.

    Immutable and hashable. ``host`` is the name tokens are signed for, TLS verifies and SNI
    carries (a bare cluster id is already expanded). ``params`` holds the other libpq
    parameters, passed through. The repr never shows a secret: there is none here, tokens
    are minted per connection. (A hand-written class rather than a frozen dataclass:
    ``import dataclasses`` pulls in ``inspect``; measured in fresh processes, it took a
    token's cold start from 5.3 ms to 17.4 ms over a bare interpreter, docs/performance.md.)
    """

    __slots__ = _FIELDS

    host: str
    region: str
    port: int
    user: str
    database: str
    profile: str | None
    token_duration_secs: int
    sslmode: str
    sslrootcert: str | None
    # None: direct TLS where the driver supports it, else the SSLRequest preamble.
    sslnegotiation: str | None
    application_name: str
    params: tuple[tuple[str, str], ...]
    # A dsqlkit provider (callable returning Credentials), a botocore CredentialProvider,
    # or botocore/dsqlkit credentials; None: environment, then botocore's chain.
    credentials_provider: Any

    def __init__(
        self,
        *,
        host: str,
        region: str,
        port: int = DEFAULT_PORT,
        user: str = DEFAULT_USER,
        database: str = DEFAULT_DATABASE,
        profile: str | None = None,
        token_duration_secs: int = DEFAULT_TOKEN_DURATION_SECS,
        sslmode: str = DEFAULT_SSLMODE,
        sslrootcert: str | None = SYSTEM_ROOTS,
        sslnegotiation: str | None = None,
        application_name: str | None = None,
        params: tuple[tuple[str, str], ...] = (),
        credentials_provider: Any = None,
    ) -> None:
        init = object.__setattr__
        init(self, "host", host)
        init(self, "region", region)
        init(self, "port", port)
        init(self, "user", user)
        init(self, "database", database)
        init(self, "profile", profile)
        init(self, "token_duration_secs", token_duration_secs)
        init(self, "sslmode", sslmode)
        init(self, "sslrootcert", sslrootcert)
        init(self, "sslnegotiation", sslnegotiation)
        init(self, "application_name",
             application_name if application_name is not None else _application_name(None))
        init(self, "params", tuple((str(k), str(v)) for k, v in params))
        init(self, "credentials_provider", credentials_provider)
        self._validate()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"DsqlConfig is immutable: use config.with_params({name}=…)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("DsqlConfig is immutable")

    def _key(self) -> tuple[object, ...]:
        values = tuple(getattr(self, name) for name in _FIELDS[:-1])
        return (*values, id(self.credentials_provider))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DsqlConfig):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS[:-1])
        provider = self.credentials_provider
        extra = "" if provider is None else f", credentials_provider=<{type(provider).__name__}>"
        return f"DsqlConfig({shown}{extra})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (tuple(getattr(self, name) for name in _FIELDS),))

    def _validate(self) -> None:
        if not self.host:
            raise ConfigError(
                "host is required: use postgres://admin@<cluster-id>.dsql.<region>.on.aws/postgres"
            )
        if self.host.startswith("/"):
            raise ConfigError(
                f"host {self.host!r} is a Unix socket directory: DSQL is reached over TCP and "
                "TLS, so use the cluster endpoint (or hostaddr=… for a tunnel)"
            )
        if "," in self.host:
            raise ConfigError(
                f"host {self.host!r} lists several hosts: a DSQL endpoint is one hostname"
            )
        _check_region(self.region, "region")
        object.__setattr__(self, "port", _check_port(self.port))
        object.__setattr__(
            self, "token_duration_secs", _check_duration(self.token_duration_secs)
        )
        if not self.user:
            raise ConfigError("user must not be empty: use admin or a role WITH LOGIN")
        if not self.database:
            raise ConfigError("database must not be empty: DSQL has one database, postgres")
        if self.sslmode not in SSLMODES:
            raise ConfigError(
                f"invalid sslmode {self.sslmode!r}: use one of {', '.join(SSLMODES)} "
                "(default verify-full)"
            )
        if self.sslnegotiation is not None and self.sslnegotiation not in SSLNEGOTIATIONS:
            raise ConfigError(
                f"invalid sslnegotiation {self.sslnegotiation!r}: use direct or postgres"
            )
        if self.sslnegotiation == "direct" and SSLMODES.index(self.sslmode) < 3:
            raise ConfigError(
                f"sslnegotiation=direct needs TLS, but sslmode={self.sslmode}: use "
                "sslmode=verify-full (or drop sslnegotiation)"
            )
        for key, _ in self.params:
            if key not in _PASSTHROUGH:
                raise ConfigError(_unknown_message(key))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_connection_string(cls, conninfo: str = "", /, **overrides: Any) -> DsqlConfig:
        """Parse a URL, a libpq ``key=value`` string, a cluster id or a hostname.

        Keyword arguments override what the string says (``region=``, ``profile=``,
        ``token_duration_secs=``, ``credentials_provider=``, any libpq parameter).
        """
        if not isinstance(conninfo, str):
            raise ConfigError(
                f"the connection string must be a str, not {type(conninfo).__name__}"
            )
        raw = parse_connection_string(conninfo)
        for key, value in overrides.items():
            key = _ALIASES.get(key, key)
            if value is None:
                raw.pop(key, None)
                continue
            raw[key] = value
        return _build(raw)

    def with_params(self, **overrides: Any) -> DsqlConfig:
        """A copy with some parameters changed (same keys as :meth:`from_connection_string`)."""
        if not overrides:
            return self
        raw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "region": self.region,
            "token_duration_secs": self.token_duration_secs,
            "sslmode": self.sslmode,
            "application_name": self.application_name,
            "credentials_provider": self.credentials_provider,
            "_app_name_done": True,
        }
        if self.profile is not None:
            raw["profile"] = self.profile
        if self.sslrootcert not in (None, SYSTEM_ROOTS):
            # "system" is re-derived from the (possibly new) sslmode.
            raw["sslrootcert"] = self.sslrootcert
        if self.sslnegotiation is not None:
            raw["sslnegotiation"] = self.sslnegotiation
        raw.update(self.params)
        for key, value in overrides.items():
            key = _ALIASES.get(key, key)
            if key == "application_name":
                raw.pop("_app_name_done")
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        if "host" in overrides and "region" not in overrides:
            # A new host may carry its own region; let it.
            raw.pop("region", None)
        return _build(raw)

    # -- what drivers need --------------------------------------------------------------

    @property
    def is_admin(self) -> bool:
        return self.user == DEFAULT_USER

    @property
    def refresh_interval(self) -> float:
        """Seconds after minting at which a pool re-mints: 80 % of the token lifetime."""
        return self.token_duration_secs * 0.8

    def param(self, key: str) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return None

    def libpq_params(self, password: str | None, *, libpq_version: int) -> dict[str, Any]:
        """Keyword arguments for a libpq-based driver (psycopg, psycopg2).

        ``libpq_version`` is the driver's ``PQlibVersion()``: it decides direct TLS
        (libpq >= 17) and whether ``sslrootcert=system`` needs resolving to a file.
        """
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "sslmode": self.sslmode,
            "application_name": self.application_name,
        }
        if password is not None:
            out["password"] = password
        root = self.resolved_sslrootcert()
        if root is not None:
            out["sslrootcert"] = root
        negotiation = self.negotiation_for(libpq_version >= 170000)
        if negotiation is not None:
            out["sslnegotiation"] = negotiation
        out.update(self.params)
        return out

    def negotiation_for(self, supports_direct: bool) -> str | None:
        """The ``sslnegotiation`` to send, given whether the driver can do direct TLS."""
        if self.sslnegotiation == "direct" and not supports_direct:
            raise ConfigError(
                "sslnegotiation=direct needs libpq 17 or newer, and this driver's libpq is "
                "older: upgrade it (pip install -U 'psycopg[binary]') or drop sslnegotiation"
            )
        if self.sslnegotiation is not None:
            return self.sslnegotiation
        if supports_direct and SSLMODES.index(self.sslmode) >= 3:
            return "direct"
        return None

    def resolved_sslrootcert(self) -> str | None:
        """The CA file to verify against: ``system`` becomes a concrete bundle path.

        The binary wheels of psycopg and psycopg2 ship an OpenSSL whose built-in trust
        store location does not exist on the host, so libpq's own ``sslrootcert=system``
        finds no roots there; Python's view of the system store does.
        """
        if self.sslrootcert is None:
            return None
        if self.sslrootcert != SYSTEM_ROOTS:
            return self.sslrootcert
        return system_ca_file()


def _restore(values: tuple[Any, ...]) -> DsqlConfig:
    return DsqlConfig(**dict(zip(_FIELDS, values, strict=True)))


application_name = _application_name

_SYSTEM_CA: list[str] = []


def system_ca_file() -> str:
    """The system CA bundle as a file path (cached): ``SSL_CERT_FILE``, Python's OpenSSL
    default, else botocore's bundled ``cacert.pem`` (it carries the Amazon roots)."""
    if _SYSTEM_CA:
        return _SYSTEM_CA[0]
    candidates: list[str] = []
    env_file = os.environ.get("SSL_CERT_FILE")
    if env_file:
        candidates.append(env_file)
    import ssl

    paths = ssl.get_default_verify_paths()
    candidates += [p for p in (paths.cafile, paths.openssl_cafile) if p]
    import importlib.util

    spec = importlib.util.find_spec("botocore")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(os.path.join(location, "cacert.pem"))
    for path in candidates:
        if os.path.isfile(path):
            _SYSTEM_CA.append(path)
            return path
    raise ConfigError(
        "no system CA bundle found for sslrootcert=system: pass sslrootcert=/path/to/"
        "AmazonRootCA1.pem (https://www.amazontrust.com/repository/AmazonRootCA1.pem) "
        "or set SSL_CERT_FILE"
    )


def _unknown_message(key: str) -> str:
    return (
        f"unknown connection parameter {key!r}: dsqlkit takes region, profile, "
        "token_duration_secs and libpq parameters (host, port, user, dbname, sslmode, "
        "sslrootcert, hostaddr, connect_timeout, application_name, options, ...)"
    )


# -- parsing -------------------------------------------------------------------------------


def parse_connection_string(conninfo: str) -> dict[str, Any]:
    """Split a connection string into raw ``{libpq-or-dsql key: value}`` pairs (no defaults)."""
    if "\0" in conninfo:
        raise ConfigError("the connection string contains a NUL character")
    text = conninfo.strip("".join(_SPACE))
    if not text:
        return {}
    scheme, sep, _ = text.partition("://")
    if sep and "=" not in scheme and " " not in scheme:
        if scheme.lower() not in _SCHEMES:
            raise ConfigError(
                f"unsupported URL scheme {scheme!r}: use postgres:// or postgresql://"
            )
        return _parse_url(text)
    if "=" in text:
        # Unstripped at the end: a trailing "\\ " is an escaped space, part of the value.
        return _parse_conninfo(conninfo.lstrip("".join(_SPACE)))
    if any(c.isspace() for c in text) or "/" in text or "?" in text:
        raise ConfigError(
            f"cannot parse connection string {_redact(text)!r}: use a postgres:// URL, "
            "key=value pairs, or a cluster id / hostname"
        )
    return {"host": text}


def _redact(text: str) -> str:
    # Connection strings can carry a password; error messages must not.
    import re

    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.I)


def _unquote(text: str) -> str:
    """Percent-decode (UTF-8); ``+`` stays ``+``, as in libpq URIs."""
    if "%" not in text:
        return text
    parts = text.split("%")
    out = bytearray(parts[0].encode())
    for part in parts[1:]:
        try:
            out.append(int(part[:2], 16))
        except ValueError:
            raise ConfigError(
                f"invalid percent-escape %{part[:2]} in the connection URL: write % as %25"
            ) from None
        if len(part) < 2:
            raise ConfigError("truncated percent-escape in the connection URL")
        out += part[2:].encode()
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ConfigError("the connection URL has percent-escapes that are not UTF-8") from None


def _parse_url(text: str) -> dict[str, Any]:
    # scheme://[user[:password]@][host][:port][/dbname][?key=value&...]
    rest = text.partition("://")[2]
    if "#" in rest:
        raise ConfigError("a connection URL has no #fragment: remove it")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    raw: dict[str, Any] = {}
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            raw["user"] = _unquote(user)
        if colon:
            raw["password"] = _unquote(password)
    if "," in hostport:
        raise ConfigError(
            f"the URL lists several hosts ({hostport}): a DSQL endpoint is one hostname"
        )
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"invalid IPv6 host {hostport!r} in the connection URL")
        port = after[1:] if after else ""
    else:
        host, _, port = hostport.partition(":")
    if host:
        raw["host"] = _unquote(host)
    if port:
        raw["port"] = port
    if slash and path:
        if "/" in path:
            raise ConfigError(f"invalid database name {_unquote(path)!r} in the URL path")
        raw["dbname"] = _unquote(path)
    for item in query.split("&") if query else ():
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = _unquote(key)
        key = _ALIASES.get(key, key)
        if not eq:
            raise ConfigError(f"URL query parameter {key!r} has no value: use {key}=…")
        if key in raw:
            raise ConfigError(f"connection parameter {key!r} is given twice")
        raw[key] = _unquote(value)
    return raw


# libpq's whitespace in a conninfo string: C isspace() in the C locale, not str.isspace().
_SPACE = frozenset(" \t\n\r\x0b\x0c")


def _iter_conninfo(text: str) -> Iterator[tuple[str, str]]:
    """libpq's ``PQconninfoParse`` grammar (held equal to it by tests/test_config_conninfo.py):
    ``key = value`` pairs, a value either up to the next space or in single quotes, a
    backslash escaping the next character (a trailing one is dropped)."""
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return
        start = i
        while i < n and text[i] != "=" and text[i] not in _SPACE:
            i += 1
        key = text[start:i]
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n or text[i] != "=":
            raise ConfigError(
                f"missing '=' after {key!r} in the connection string: use key=value pairs"
            )
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError(
                        f"unterminated quoted value for {key!r} in the connection string"
                    )
                c = text[i]
                if c == "\\":
                    chars.append(text[i + 1:i + 2])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
        else:
            while i < n and text[i] not in _SPACE:
                if text[i] == "\\":
                    chars.append(text[i + 1:i + 2])
                    i += 2
                else:
                    chars.append(text[i])
                    i += 1
        if not key or key[0].isdigit() or not _KEY_CHARS.issuperset(key):
            raise ConfigError(f"invalid parameter name {key!r} in the connection string")
        yield key, "".join(chars)


def _parse_conninfo(text: str) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, value in _iter_conninfo(text):
        key = _ALIASES.get(key, key)
        if key in raw:
            raise ConfigError(f"connection parameter {key!r} is given twice")
        raw[key] = value
    return raw


def _text(raw: dict[str, Any], key: str) -> str | None:
    value = raw.pop(key, None)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a string, not {type(value).__name__}")
    return str(value)


def _build(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> DsqlConfig:
    env = os.environ if environ is None else environ
    raw = dict(raw)
    for key in raw:
        if key not in KNOWN_PARAMETERS and key != "_app_name_done":
            raise ConfigError(_unknown_message(key))
    if raw.pop("password", None) is not None:
        logger.warning(
            "ignoring the password in the connection string: dsqlkit authenticates with an "
            "IAM token minted for each connection"
        )
    app_done = raw.pop("_app_name_done", False)
    provider: Any = raw.pop("credentials_provider", None)
    host = (_text(raw, "host") or "").strip()
    if not host:
        raise ConfigError(
            "host is required: use postgres://admin@<cluster-id>.dsql.<region>.on.aws/postgres "
            "or host=<cluster-id>"
        )
    profile = _text(raw, "profile") or None
    region = resolve_region(_text(raw, "region"), host, profile, environ=env)
    if is_cluster_id(host):
        host = cluster_hostname(host, region)
    port = _check_port(raw.pop("port", DEFAULT_PORT))
    duration = _check_duration(raw.pop("token_duration_secs", DEFAULT_TOKEN_DURATION_SECS))
    user = _text(raw, "user")
    user = DEFAULT_USER if user is None else user
    database = _text(raw, "dbname") or DEFAULT_DATABASE

    explicit_mode = _text(raw, "sslmode")
    sslmode = DEFAULT_SSLMODE if explicit_mode is None else explicit_mode.strip().lower()
    if sslmode not in SSLMODES:
        raise ConfigError(
            f"invalid sslmode {explicit_mode!r}: use one of {', '.join(SSLMODES)} "
            "(default verify-full)"
        )
    if sslmode != DEFAULT_SSLMODE:
        logger.warning(
            "sslmode=%s weakens TLS: the server's %s is not verified; DSQL needs only the "
            "default verify-full with the Amazon root CAs",
            sslmode,
            "hostname" if sslmode == "verify-ca" else "certificate",
        )
    root = _text(raw, "sslrootcert")
    if root is None:
        env_root = env.get("PGSSLROOTCERT")
        if env_root:
            root = env_root
        elif SSLMODES.index(sslmode) >= 4:
            root = SYSTEM_ROOTS
    if root is not None and root != SYSTEM_ROOTS and not os.path.isfile(root):
        raise ConfigError(
            f"sslrootcert file {root!r} does not exist: pass the path of a PEM CA bundle "
            "(e.g. AmazonRootCA1.pem) or sslrootcert=system"
        )
    negotiation = _text(raw, "sslnegotiation")
    if negotiation is not None:
        negotiation = negotiation.strip().lower()

    app = _text(raw, "application_name")
    if not app_done:
        app = _application_name(app)
    elif app is None:
        app = _application_name(None)

    params: list[tuple[str, str]] = []
    for key in sorted(raw):
        value = raw[key]
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (str, int, float)):
            raise ConfigError(
                f"connection parameter {key} must be a string or number, "
                f"not {type(value).__name__}"
            )
        params.append((key, str(value)))
    return DsqlConfig(
        host=host,
        region=region,
        port=port,
        user=user,
        database=database,
        profile=profile,
        token_duration_secs=duration,
        sslmode=sslmode,
        sslrootcert=root,
        sslnegotiation=negotiation,
        application_name=app,
        params=tuple(params),
        credentials_provider=provider,
    )


def split_kwargs(
    kwargs: Mapping[str, Any], driver_keys: frozenset[str] | Callable[[str], bool]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into (connection parameters, driver keyword arguments)."""
    is_driver = driver_keys.__contains__ if isinstance(driver_keys, frozenset) else driver_keys
    params: dict[str, Any] = {}
    driver: dict[str, Any] = {}
    for key, value in kwargs.items():
        if _ALIASES.get(key, key) in KNOWN_PARAMETERS:
            params[key] = value
        elif is_driver(key):
            driver[key] = value
        else:
            raise ConfigError(_unknown_message(key))
    return params, driver


def resolve_config(conninfo: str | DsqlConfig, params: Mapping[str, Any]) -> DsqlConfig:
    """The config a driver shell connects with: a string is parsed, a config is reused."""
    if isinstance(conninfo, DsqlConfig):
        return conninfo.with_params(**params)
    return DsqlConfig.from_connection_string(conninfo, **params)


__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_PORT",
    "DEFAULT_TOKEN_DURATION_SECS",
    "DEFAULT_USER",
    "MAX_TOKEN_DURATION_SECS",
    "DsqlConfig",
    "application_name",
    "cluster_hostname",
    "is_cluster_id",
    "parse_connection_string",
    "region_from_hostname",
    "resolve_config",
    "resolve_region",
    "system_ca_file",
]
