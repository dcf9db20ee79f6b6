"""What happened to one transfer, as one of a handful of classes.

The classes are the ones a DSQL developer acts on differently: ``OC000`` (hot rows: retry,
or spread the writes), ``OC001`` (DDL raced the workload), a plain ``40001`` (a serialization
failure without DSQL's code: PostgreSQL, or ``dsqlkit local`` before it reports conflicts at
COMMIT), an insufficient balance (the workload's own rule, not an error of the system), and
everything else. Conflicts are classified by SQLSTATE and DSQL's code, never by which
statement failed: DSQL reports them at COMMIT, PostgreSQL at the UPDATE that waited.
"""

from __future__ import annotations

import enum

from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ import OCCType, classify_occ, sqlstate_of

from .workload import InsufficientBalance

__all__ = ["CONFLICTS", "FAILURES", "Outcome", "classify_exception", "classify_message",
           "describe"]


class Outcome(enum.Enum):
    SUCCESS = "success"
    OC000 = "OC000"
    OC001 = "OC001"
    SERIALIZATION = "40001"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    OTHER = "other"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_conflict(self) -> bool:
        return self in CONFLICTS


_LABELS = {
    Outcome.SUCCESS: "committed",
    Outcome.OC000: "OC000 data conflict",
    Outcome.OC001: "OC001 schema conflict",
    Outcome.SERIALIZATION: "40001 without DSQL code",
    Outcome.INSUFFICIENT_BALANCE: "insufficient balance",
    Outcome.OTHER: "other error",
}

CONFLICTS = (Outcome.OC000, Outcome.OC001, Outcome.SERIALIZATION)
FAILURES = (*CONFLICTS, Outcome.INSUFFICIENT_BALANCE, Outcome.OTHER)

_BY_OCC_TYPE = {
    OCCType.DATA: Outcome.OC000,
    OCCType.SCHEMA: Outcome.OC001,
    OCCType.UNKNOWN: Outcome.SERIALIZATION,
}


def from_occ_type(occ_type: OCCType) -> Outcome:
    return _BY_OCC_TYPE[occ_type]


def classify_exception(exc: BaseException) -> Outcome:
    if isinstance(exc, OCCRetryExhausted):
        return _BY_OCC_TYPE[exc.occ_type]
    if isinstance(exc, InsufficientBalance):
        return Outcome.INSUFFICIENT_BALANCE
    occ = classify_occ(exc)
    if occ is not None:
        return _BY_OCC_TYPE[occ]
    return Outcome.OTHER


def classify_message(text: str) -> Outcome:
    """Classify an error that arrived as text only: a Lambda function error's message.

    The handlers pass the driver's error text through, so DSQL's code, the SQLSTATE or
    PostgreSQL's wording is all there is to go on.
    """
    if "OC000" in text:
        return Outcome.OC000
    if "OC001" in text:
        return Outcome.OC001
    if "40001" in text or "could not serialize" in text or "serialization failure" in text:
        return Outcome.SERIALIZATION
    if "Insufficient balance" in text:
        return Outcome.INSUFFICIENT_BALANCE
    return Outcome.OTHER


def describe(exc: BaseException) -> str:
    """One line for the summary's examples: SQLSTATE (if any) and the first line of the text.

    An OCCRetryExhausted is described by the conflict that ended it: its own message repeats
    that text after a prefix that says nothing the counts do not.
    """
    inner: BaseException = exc
    if isinstance(exc, OCCRetryExhausted) and exc.__cause__ is not None:
        inner = exc.__cause__
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    code = sqlstate_of(inner)
    return f"{code}: {text}" if code and code not in text else text
