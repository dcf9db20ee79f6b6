"""Deciding whether an exception is an OCC conflict, and which kind.

Aurora DSQL reports every optimistic-concurrency conflict as SQLSTATE ``40001`` and puts its own
code in the message text: ``change conflicts with another transaction (OC000)`` for a data
conflict, ``schema has been updated by another transaction (OC001)`` for a catalog change
(older servers add ``, please retry:`` before the code). Plain PostgreSQL, which sits behind
``dsqlkit local``, sends ``40001`` too (``could not serialize access ...``), without a code.

Drivers expose the SQLSTATE differently (psycopg 3 and asyncpg: ``exc.sqlstate``; psycopg2:
``exc.pgcode``), and ORMs and applications wrap driver errors (SQLAlchemy's ``DBAPIError.orig``,
``raise AppError(...) from exc``), so classification walks the whole chain. The rule is: the
first exception in the chain that carries a SQLSTATE decides. Only when no exception carries one
do we fall back to looking for ``(OC000)``/``(OC001)`` in the messages, because a wrapper that
flattened the error into text (some ORMs do) would otherwise hide a retryable conflict.

Nothing but ``40001`` (or the bare codes ``OC000``/``OC001`` some drivers surface) is retryable:
``54000`` (a DSQL limit), ``0A000`` (unsupported feature), ``23xxx`` (constraint), ``42xxx``
(syntax, undefined objects) and even ``40P01`` (a PostgreSQL deadlock, which DSQL cannot
produce) fail the same way on every attempt or need a human.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator

__all__ = ["OCCType", "classify_occ", "is_occ_error", "sqlstate_of"]

# Chains are short in practice (driver error, ORM wrapper, application wrapper); the limit only
# keeps a pathological or self-referencing chain from costing more than a few microseconds.
_MAX_CHAIN_DEPTH = 32

_SERIALIZATION_FAILURE = "40001"


class OCCType(enum.Enum):
    """The kind of optimistic-concurrency conflict, from DSQL's code in the error message.

    The distinction matters for operations, not for the retry decision: data conflicts
    (``OC000``) point at hot rows, schema conflicts (``OC001``) at concurrent DDL/GRANT, and
    ``UNKNOWN`` is a ``40001`` without a DSQL code (plain PostgreSQL, or a proxy that rewrote
    the text).
    """

    DATA = "OC000"
    SCHEMA = "OC001"
    UNKNOWN = "40001"


_BY_CODE = {"OC000": OCCType.DATA, "OC001": OCCType.SCHEMA}

# psycopg2 only fills ``pgcode`` on errors it received from a server; an instance built in
# Python (``psycopg2.errors.lookup("40001")("...")``, as ORMs and tests do) has ``pgcode=None``.
# The class still says which SQLSTATE it stands for, through psycopg2's own table.
_psycopg2_codes: dict[type, str] | None = None


def _psycopg2_code_of(cls: type) -> str | None:
    global _psycopg2_codes
    if _psycopg2_codes is None:
        module = sys.modules.get("psycopg2._psycopg")
        table = getattr(module, "sqlstate_errors", None)
        if not isinstance(table, dict):
            return None
        _psycopg2_codes = {c: code for code, c in table.items() if isinstance(c, type)}
    return _psycopg2_codes.get(cls)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE carried by this one exception (no chain walking), or None.

    psycopg 3 and asyncpg expose ``sqlstate`` (asyncpg as a class attribute, ``None`` on its
    non-server errors); psycopg2 exposes ``pgcode``.
    """
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value:
            return value
    if type(exc).__module__ == "psycopg2.errors":
        return _psycopg2_code_of(type(exc))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Depth-first walk: the exception, SQLAlchemy's ``orig``, then cause and context.

    ``orig`` comes before ``__cause__`` because SQLAlchemy sets both to the same driver error in
    most paths, and the driver error is the one that knows its SQLSTATE.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack and len(seen) < _MAX_CHAIN_DEPTH:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # Pushed in reverse so that ``orig`` is visited first.
        for nxt in (current.__context__, current.__cause__, getattr(current, "orig", None)):
            if isinstance(nxt, BaseException) and id(nxt) not in seen:
                stack.append(nxt)


def _code_in_message(exc: BaseException) -> OCCType | None:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not turn classification into a crash
        return None
    if "(OC000)" in text:
        return OCCType.DATA
    if "(OC001)" in text:
        return OCCType.SCHEMA
    return None


def classify_occ(exc: BaseException) -> OCCType | None:
    """The OCC conflict type of ``exc`` (or of an error it wraps), or None if not retryable."""
    for node in _chain(exc):
        code = sqlstate_of(node)
        if code is None:
            continue
        if code == _SERIALIZATION_FAILURE:
            return _code_in_message(node) or OCCType.UNKNOWN
        # Some drivers surface DSQL's own code as the SQLSTATE (the AWS connectors accept it).
        return _BY_CODE.get(code)
    for node in _chain(exc):
        found = _code_in_message(node)
        if found is not None:
            return found
    return None


def is_occ_error(exc: BaseException) -> bool:
    """True if re-running the whole transaction may succeed (see :func:`classify_occ`)."""
    return classify_occ(exc) is not None
