"""The hand-written libpq ``key=value`` parser (``dsqlkit.config``) against libpq's own.

libpq's ``PQconninfoParse`` is reached through ``psycopg.conninfo.conninfo_to_dict``. dsqlkit
keeps its own parser so that parsing a connection string needs neither psycopg nor a libpq
(asyncpg users, the token path); this differential test holds the two equal. Where they differ
on purpose: a parameter given twice is an error in dsqlkit (libpq keeps the last), and a
string without ``=`` is a host name or cluster id in dsqlkit (an error in libpq).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsqlkit.config import parse_connection_string
from dsqlkit.errors import ConfigError

psycopg = pytest.importorskip("psycopg")
from psycopg import pq  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

LIBPQ_KEYWORDS = frozenset(
    d.keyword.decode() for d in pq.Conninfo.get_defaults() if d.keyword is not None
)
KEYWORDS = ("host", "port", "dbname", "user", "options", "application_name", "sslmode",
            "connect_timeout", "hostaddr", "sslrootcert")
# Spaces libpq skips (C isspace in the C locale) and some it does not.
SPACES = (" ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\x1c", "\u2003")
PIECES = st.one_of(
    st.sampled_from(KEYWORDS),
    st.sampled_from(("=", "'", "\\", "\\'", "\\\\", *SPACES)),
    st.text(alphabet="ab0/.,:-_é\u00e9\U0001f600", max_size=3),
)
CONNINFO = st.lists(PIECES, max_size=14).map("".join)


def libpq(text: str) -> dict[str, str] | None:
    try:
        return conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        return None


def ours(text: str) -> dict[str, str] | None:
    try:
        raw = parse_connection_string(text)
    except ConfigError as exc:
        if "given twice" in str(exc):
            return {"given twice": ""}
        return None
    if not set(raw) <= LIBPQ_KEYWORDS:
        return None  # dsqlkit refuses unknown parameters when it builds the config
    return {k: str(v) for k, v in raw.items()}


@settings(max_examples=3000, deadline=None)
@given(CONNINFO)
@example("host=a port=5432")
@example("host='a b' options='-c x=\\'y\\''")
@example("host=a\\")
@example("host = a")
@example("host=\u00a0a")
@example("host=a\x1cport=1")
@example("host='unterminated")
@example("host=a host=b")
@example("host=\\ ")  # an escaped space at the very end is the value
def test_conninfo_parses_as_libpq_does(text: str) -> None:
    if "=" not in text or "\0" in text:
        return  # a host name or cluster id, not a key=value string (see the docstring)
    mine, theirs = ours(text), libpq(text)
    if mine == {"given twice": ""}:
        assert theirs is not None, f"libpq refuses {text!r} for another reason"
        return
    assert mine == theirs, f"{text!r}: dsqlkit {mine!r}, libpq {theirs!r}"
