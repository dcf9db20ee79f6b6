"""``dsqlkit check --verify``: run a script on an ephemeral ``dsqlkit local`` as a migration runner
would, and report what DSQL refuses at run time.

Statements go as simple-protocol Queries (what psql and most runners send), one per statement,
the whole file in one (``query`` mode), or inside one BEGIN ... COMMIT (``file`` mode, ``psql -1``).
COPY ... FROM STDIN gets its data; every ``CREATE INDEX ASYNC`` and ``ALTER TABLE ASYNC ...
VALIDATE`` job is waited for with ``CALL sys.wait_for_job``, and a failed job is reported
with its ``sys.jobs`` details, so an index that would never become valid is not missed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from dsqlkit.check.engine import Mode, excerpt
from dsqlkit.check.script import LineIndex, ScriptStatement, split_script


@dataclass(frozen=True, slots=True)
class RunError:
    """A statement the endpoint refused (or a background job that failed)."""

    line: int
    column: int
    statement: str
    sqlstate: str
    message: str
    job: str | None = None


@contextmanager
def local_endpoint() -> Iterator[str]:
    """A fresh ephemeral ``dsqlkit local`` for one verification; yields a libpq DSN."""
    from dsqlkit.local import LocalDSQL

    with LocalDSQL(ephemeral=True, port=0) as ep:
        yield ep.dsn()


def verify_text(text: str, dsn: str, mode: Mode = "statement") -> list[RunError]:
    """Run ``text`` against the endpoint at ``dsn``; the refusals, in order."""
    statements = split_script(text)
    lines = LineIndex(text)
    errors: list[RunError] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        if mode == "query":
            _run_batches(cur, statements, text, lines, errors)
            return errors
        if mode == "file":
            cur.execute("BEGIN")
        failed_block = False
        # A job submitted inside a transaction starts when it commits, and sys.wait_for_job
        # cannot run inside a block (2D000): wait once the transaction is over.
        pending: list[tuple[str, ScriptStatement]] = []
        for item in statements:
            if item.stmt.kind == "empty":
                continue
            if failed_block and item.stmt.tcl_action not in ("commit", "rollback"):
                continue  # 25P02 until the block ends: a consequence, not a finding
            error = _run_one(cur, item, lines, pending)
            if error is not None:
                errors.append(error)
                failed_block = conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            elif item.stmt.tcl_action in ("commit", "rollback"):
                failed_block = False
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                errors.extend(_wait(cur, pending, lines))
        if mode == "file" and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                cur.execute("COMMIT")
            except psycopg.Error as exc:
                errors.append(_error(lines, len(text), "COMMIT", exc))
        errors.extend(_wait(cur, pending, lines))
    return errors


def _run_one(cur: psycopg.ClientCursor[tuple[object, ...]], item: ScriptStatement,
             lines: LineIndex, pending: list[tuple[str, ScriptStatement]]) -> RunError | None:
    try:
        if item.copy_data is not None:
            with cur.copy(item.text) as copy:
                copy.write(item.copy_data.encode("utf-8"))
            return None
        cur.execute(item.text)
    except psycopg.Error as exc:
        return _error(lines, item.start, item.text, exc)
    if cur.description is not None and [c.name for c in cur.description] == ["job_id"]:
        row = cur.fetchone()
        if row is not None:
            pending.append((str(row[0]), item))
    return None


def _wait(cur: psycopg.ClientCursor[tuple[object, ...]], pending: list[tuple[str, ScriptStatement]],
          lines: LineIndex) -> list[RunError]:
    """Wait for the jobs submitted so far; the failed ones, with their sys.jobs details."""
    failed: list[RunError] = []
    for job, item in pending:
        cur.execute("CALL sys.wait_for_job(%s)", (job,))
        done = cur.fetchone()
        if done is not None and done[0] in (True, "t"):
            continue
        cur.execute("SELECT status, details FROM sys.jobs WHERE job_id = %s", (job,))
        status = cur.fetchone()
        details = f"{status[0]}: {status[1]}" if status else "failed"
        line, column = lines.position(item.start)
        failed.append(RunError(line, column, excerpt(item.text), "job", f"job {job} {details}",
                               job))
    pending.clear()
    return failed


def _run_batches(cur: psycopg.ClientCursor[tuple[object, ...]],
                 statements: list[ScriptStatement], text: str, lines: LineIndex,
                 errors: list[RunError]) -> None:
    """``query`` mode: the SQL between COPY statements goes as one Query each."""
    batch: list[ScriptStatement] = []
    pending: list[tuple[str, ScriptStatement]] = []

    def flush() -> None:
        if not batch:
            return
        sql = text[batch[0].start:batch[-1].end]
        try:
            cur.execute(sql)
            while True:
                if cur.description is not None and [c.name for c in cur.description] == [
                        "job_id"]:
                    row = cur.fetchone()
                    if row is not None:
                        pending.append((str(row[0]), batch[0]))
                if not cur.nextset():
                    break
        except psycopg.Error as exc:
            errors.append(_error(lines, _failed_at(batch, exc), sql, exc))
        batch.clear()
        errors.extend(_wait(cur, pending, lines))

    for item in statements:
        if item.copy_data is not None:
            flush()
            error = _run_one(cur, item, lines, pending)
            if error is not None:
                errors.append(error)
        elif item.stmt.kind != "empty":
            batch.append(item)
    flush()


def _failed_at(batch: list[ScriptStatement], exc: psycopg.Error) -> int:
    position = getattr(exc.diag, "statement_position", None)
    if position:
        return batch[0].start + int(position) - 1
    return batch[0].start


def _error(lines: LineIndex, offset: int, sql: str, exc: psycopg.Error) -> RunError:
    line, column = lines.position(offset)
    return RunError(line, column, excerpt(sql), exc.sqlstate or "?",
                    exc.diag.message_primary or str(exc))
