"""DSQL's transaction rules for one session, as a state machine without I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from dsqlkit.local.dialect.model import (
    ABORTED,
    AGE_LIMIT_EXCEEDED,
    DDL_AND_DML,
    MULTIPLE_DDL,
    PROGRAM_LIMIT_EXCEEDED,
    ROW_LIMIT,
    ROW_LIMIT_EXCEEDED,
    TRANSACTION_AGE_LIMIT,
    Refusal,
    Statement,
    _f,
)

_IDLE, _IMPLICIT, _BLOCK, _FAILED = range(4)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`TransactionRules.check` decided for a statement about to run.

    ``refusal``: answer this error instead of running the statement (the rules have already
    recorded the failure). ``commit_as_rollback``: the statement is COMMIT/END of a failed block;
    roll the backend back and answer the command tag ROLLBACK, as DSQL does. ``detail`` is the
    error's DETAIL field where DSQL sends one.
    """

    refusal: Refusal | None = None
    commit_as_rollback: bool = False
    detail: str | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


ALLOW: Final = Verdict()
_COMMIT_AS_ROLLBACK = Verdict(commit_as_rollback=True)


class TransactionRules:
    """DSQL's transaction rules for one session, as a state machine without I/O.

    Drive it with analyzed statements and their outcomes::

        rules.begin_batch()                 # a simple Query, or extended messages up to Sync
        for stmt in analysis.statements:
            verdict = rules.check(stmt)     # before running it
            if verdict.refusal:             # send the error; PostgreSQL skips the rest too
                break
            ...run it on the backend...
            error = rules.completed(stmt, rows=rows_from_command_tag)   # or rules.errored(stmt)
            if error:                       # 54000: the statement crossed the row cap
                break
        rules.end_batch()

    Outside a batch every statement is its own autocommit unit. The statements of one batch
    share PostgreSQL's implicit transaction, so DSQL's one-DDL and no-DDL-with-DML rules apply
    across them, as recorded for multi-statement queries. ``transaction_status`` is the
    ReadyForQuery byte the proxy should report, since refused statements never reach PostgreSQL.
    """

    __slots__ = ("_batch", "_batch_failed", "_began_at", "_clock", "_mode", "age_limit",
                 "ddl_count", "dml_seen", "row_limit", "rows")

    def __init__(self, *, row_limit: int | None = ROW_LIMIT,
                 age_limit: float | None = TRANSACTION_AGE_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.row_limit = row_limit
        self.age_limit = age_limit
        self._clock = clock
        self._mode = _IDLE
        self._batch = False
        self._batch_failed = False
        self._began_at = 0.0
        self.ddl_count = 0
        self.dml_seen = False
        self.rows = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def in_block(self) -> bool:
        """Inside an explicit BEGIN ... COMMIT block (healthy or failed)."""
        return self._mode in (_BLOCK, _FAILED)

    @property
    def failed(self) -> bool:
        """The explicit block failed: everything but COMMIT/ROLLBACK gets 25P02."""
        return self._mode == _FAILED

    @property
    def transaction_status(self) -> Literal["I", "T", "E"]:
        return "E" if self._mode == _FAILED else "T" if self._mode == _BLOCK else "I"

    # -- batches -------------------------------------------------------------------------------

    def begin_batch(self) -> None:
        self._batch = True
        self._batch_failed = False
        if self._mode == _IDLE:
            self._mode = _IMPLICIT
            self._reset()

    def end_batch(self) -> None:
        self._batch = False
        self._batch_failed = False
        if self._mode == _IMPLICIT:
            self._mode = _IDLE
            self._reset()

    # -- statements ----------------------------------------------------------------------------

    def check(self, stmt: Statement, *, waive: bool = False) -> Verdict:
        """Decide whether ``stmt`` may run now. ``waive`` lifts ``stmt.waiver``'s refusal."""
        if self._batch_failed:
            raise RuntimeError("a statement failed earlier in this batch; PostgreSQL skips the "
                               "rest of a batch after an error, so call end_batch() first")
        action = stmt.tcl_action
        if self._mode == _FAILED:
            # 25P02 takes precedence over every other refusal; only statements that end the
            # block get through, as in PostgreSQL.
            if action == "commit":
                return _COMMIT_AS_ROLLBACK
            if action == "rollback":
                return ALLOW
            if action in ("rollback_to", "prepare") and stmt.refusal is not None:
                return self._fail(stmt.refusal)
            return self._fail(ABORTED)
        if (self._mode == _BLOCK and self.age_limit is not None and action != "rollback"
                and self._clock() - self._began_at > self.age_limit):
            age = int(self._clock() - self._began_at)
            limit = int(self.age_limit)
            detail = f"Current transaction age {age}s exceeds {limit}s"
            too_old = AGE_LIMIT_EXCEEDED if limit == TRANSACTION_AGE_LIMIT else Refusal(
                PROGRAM_LIMIT_EXCEEDED, f"transaction age limit of {limit}s exceeded")
            if action == "commit":
                self._end_block()
                return Verdict(too_old, detail=detail)
            return self._fail(too_old, detail)
        refusal = stmt.refusal
        if waive and stmt.waiver is not None:
            refusal = stmt.refusal_if_waived
        if refusal is not None:
            return self._fail(refusal)
        if stmt.set_param == "role" and stmt.is_local and self._mode != _BLOCK:
            # DSQL only accepts SET LOCAL role inside a transaction block.
            return self._fail(_f('setting configuration parameter "role" not supported'))
        if stmt.is_ddl:
            if self.ddl_count:
                return self._fail(MULTIPLE_DDL)
            if self.dml_seen:
                return self._fail(DDL_AND_DML)
        elif stmt.is_dml and self.ddl_count:
            return self._fail(DDL_AND_DML)
        return ALLOW

    def completed(self, stmt: Statement, rows: int = 0) -> Refusal | None:
        """Record that ``stmt`` succeeded, having written ``rows`` rows (from its command tag).

        Returns 54000 ``transaction row limit exceeded`` when this statement takes the
        transaction past the cap: answer that instead of the statement's result and roll the
        statement back (the rules record the failure).
        """
        action = stmt.tcl_action
        if action == "begin":
            if self._mode in (_IDLE, _IMPLICIT):
                if self._mode == _IDLE:
                    self._reset()
                self._mode = _BLOCK
                self._began_at = self._clock()
            return None
        if action in ("commit", "rollback"):
            if self._mode in (_BLOCK, _FAILED):
                self._end_block()
            elif self._mode == _IMPLICIT:
                self._reset()
            return None
        if stmt.is_ddl:
            self.ddl_count += 1
        elif stmt.is_dml:
            self.dml_seen = True
        error: Refusal | None = None
        if rows:
            self.rows += rows
            if self.row_limit is not None and self.rows > self.row_limit:
                error = self._fail(ROW_LIMIT_EXCEEDED).refusal
        if self._mode == _IDLE:
            self._reset()
        return error

    def errored(self, stmt: Statement) -> None:
        """Record that PostgreSQL (or the proxy, e.g. OCC at COMMIT) failed ``stmt``."""
        if stmt.tcl_action in ("commit", "rollback") and self._mode in (_BLOCK, _FAILED):
            self._end_block()
            if self._batch:
                self._batch_failed = True
            return
        self._fail(None)

    # -- internals -----------------------------------------------------------------------------

    def _fail(self, refusal: Refusal | None, detail: str | None = None) -> Verdict:
        if self._mode == _BLOCK:
            self._mode = _FAILED
        elif self._mode in (_IMPLICIT, _IDLE):
            self._reset()
        if self._batch:
            self._batch_failed = True
        return Verdict(refusal, detail=detail) if refusal is not None else ALLOW

    def _end_block(self) -> None:
        self._mode = _IMPLICIT if self._batch else _IDLE
        self._reset()

    def _reset(self) -> None:
        self.ddl_count = 0
        self.dml_seen = False
        self.rows = 0

