"""``dsqlkit check``: report, offline, the statements Aurora DSQL would refuse.

The checker runs a SQL file the way ``psql -f`` sends it to DSQL, statement by statement in
autocommit mode unless the file opens a transaction block, through the same rules the local
endpoint applies (:func:`dsqlkit.local.dialect.analyze` and
:class:`~dsqlkit.local.dialect.TransactionRules`). It needs no database, so it cannot see what
depends on the catalog or on data (a dropped primary-key column, an index on a jsonb column, the
rows an ``INSERT ... SELECT`` writes); it reports what the statements alone decide.

>>> [f.message for f in check_sql("TRUNCATE accounts;")]
['unsupported statement: Truncate']
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dsqlkit.local.dialect import (
    ABORTED,
    Refusal,
    Statement,
    TransactionRules,
    analyze_uncached,
)

_EXCERPT_WIDTH = 80


@dataclass(frozen=True, slots=True)
class Finding:
    """One statement DSQL would refuse, with DSQL's SQLSTATE and message."""

    filename: str | None
    line: int
    column: int
    statement: str
    sqlstate: str
    message: str
    rule: str

    def format(self) -> str:
        where = f"{self.filename or '<sql>'}:{self.line}:{self.column}"
        return f"{where}: {self.sqlstate} {self.message} [{self.rule}]\n    {self.statement}"


def check_sql(text: str, *, filename: str | None = None) -> list[Finding]:
    """The findings for ``text``, a SQL script as psql would run it."""
    script = _without_psql_input(text)
    lines = _LineIndex(text)
    rules = TransactionRules(age_limit=None)
    findings: list[Finding] = []

    def report(stmt: Statement, refusal: Refusal, rule: str, position: int | None = None) -> None:
        line, column = lines.position(stmt.start if position is None else position)
        findings.append(Finding(filename, line, column, _excerpt(stmt.text), refusal.sqlstate,
                                refusal.message, rule))

    for stmt in script.statements:
        if stmt.kind == "empty":
            continue
        if stmt.unparsed:
            report(stmt, Refusal("42601", stmt.parse_error or "syntax error"), "syntax-error",
                   stmt.error_position)
            rules.errored(stmt)
            continue
        verdict = rules.check(stmt)
        if verdict.refusal is not None:
            if verdict.refusal == ABORTED:
                # Everything after a failure in a block is refused with 25P02 until ROLLBACK; that
                # is a consequence of the finding already reported, so only this statement's own
                # problem (if any) is worth a line.
                if stmt.refusal is not None:
                    report(stmt, stmt.refusal, stmt.rule or "unsupported")
                continue
            report(stmt, verdict.refusal, _rule_for(stmt, verdict.refusal))
            continue
        # Offline, only INSERT ... VALUES says how many rows it writes.
        error = rules.completed(stmt, rows=stmt.values_rows or 0)
        if error is not None:
            report(stmt, error, "row-limit")
    return findings


def _rule_for(stmt: Statement, refusal: Refusal) -> str:
    if refusal == stmt.refusal and stmt.rule:
        return stmt.rule
    if refusal == stmt.refusal_if_waived and stmt.waiver_rule:
        return stmt.waiver_rule
    return _TRANSACTION_RULES.get(refusal.message, "transaction")


_TRANSACTION_RULES = {
    "multiple ddl statements not supported in a transaction": "multiple-ddl",
    "ddl and dml are not supported in the same transaction": "ddl-dml-mix",
    "transaction row limit exceeded": "row-limit",
    'setting configuration parameter "role" not supported': "set-role",
}


class _Script:
    def __init__(self, statements: Sequence[Statement]) -> None:
        self.statements = statements


def _without_psql_input(text: str) -> _Script:
    """Analyze ``text`` with what psql consumes itself blanked out (offsets unchanged).

    psql executes backslash meta-commands (``\\set``, ``\\connect``, ...) and reads the data of
    ``COPY ... FROM STDIN`` up to a ``\\.`` line; neither reaches the server.
    """
    blanked = _blank_meta_commands(text)
    handled: set[int] = set()
    while True:
        analysis = analyze_uncached(blanked)
        copy = next((s for s in analysis.statements
                     if s.copy_from_stdin and s.start not in handled), None)
        if copy is None:
            return _Script(analysis.statements)
        handled.add(copy.start)
        data_start = blanked.find("\n", copy.end)
        if data_start < 0:
            return _Script(analysis.statements)
        data_start += 1
        data_end = len(blanked)
        pos = data_start
        while pos < len(blanked):
            eol = blanked.find("\n", pos)
            line_end = len(blanked) if eol < 0 else eol
            if blanked[pos:line_end].strip() == "\\.":
                data_end = line_end
                break
            pos = line_end + 1
        blanked = blanked[:data_start] + _spaces(blanked[data_start:data_end]) + \
            blanked[data_end:]


def _blank_meta_commands(text: str) -> str:
    # "\." ends COPY data and is left for the COPY pass.
    starts = [i for i in _line_starts(text) if text[i:].lstrip(" \t").startswith("\\")
              and _line_at(text, i).strip() != "\\."]
    if not starts:
        return text
    candidate = _blank_lines(text, starts)
    # A line starting with a backslash inside a multi-line string or comment is data, not a
    # meta-command: keep those.
    from pglast import parser

    try:
        spans = [(t.start, t.end) for t in parser.scan(candidate)
                 if t.name in ("SCONST", "C_COMMENT", "IDENT", "BCONST", "XCONST")
                 and "\n" in candidate[t.start:t.end + 1]]
    except parser.ParseError:
        spans = []
    keep = {i for i in starts for lo, hi in spans if lo < i <= hi}
    return _blank_lines(text, [i for i in starts if i not in keep])


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _blank_lines(text: str, starts: list[int]) -> str:
    parts: list[str] = []
    last = 0
    for start in starts:
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        parts.append(text[last:start])
        parts.append(" " * (end - start))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _spaces(chunk: str) -> str:
    return "".join(c if c == "\n" else " " for c in chunk)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    pos = text.find("\n")
    while pos >= 0:
        starts.append(pos + 1)
        pos = text.find("\n", pos + 1)
    return starts


class _LineIndex:
    def __init__(self, text: str) -> None:
        self._starts = _line_starts(text)

    def position(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = bisect.bisect_right(self._starts, offset) - 1
        return line + 1, offset - self._starts[line] + 1


def _excerpt(text: str) -> str:
    first = " ".join(text.split())
    return first if len(first) <= _EXCERPT_WIDTH else first[:_EXCERPT_WIDTH - 1] + "…"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="SQL files to check ('-' reads standard input)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 clean, 1 findings, 2 a file could not be read."""
    findings: list[Finding] = []
    unreadable = False
    for name in args.files:
        try:
            text = _read(name)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"dsqlkit check: cannot read {name}: {reason}", file=sys.stderr)
            unreadable = True
            continue
        findings.extend(check_sql(text, filename=name))
    if args.format == "json":
        json.dump([asdict(f) for f in findings], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for finding in findings:
            print(finding.format())
        count = len(findings)
        files = len(args.files)
        print(f"{count} statement{'s' if count != 1 else ''} Aurora DSQL would refuse "
              f"({files} file{'s' if files != 1 else ''} checked)", file=sys.stderr)
    if unreadable:
        return 2
    return 1 if findings else 0


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.buffer.read().decode("utf-8-sig")
    with open(name, "rb") as fh:
        return fh.read().decode("utf-8-sig")


__all__ = ["Finding", "check_sql", "configure", "run"]
