"""A SQL file as psql sends it: statements, COPY data and meta-commands, in one linear pass.

psql executes backslash meta-commands (``\\set``, ``\\connect``, ...) itself and sends the lines
after ``COPY ... FROM STDIN`` up to a ``\\.`` line as COPY data; neither is SQL. The file is cut at
each COPY statement: the text before it is analyzed as one piece, the COPY statement on its own,
and its data is set aside, so every character is analyzed once (a 3.6 MB pg_dump used to be
re-analyzed once per COPY and copied once per line).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pglast import parser

from dsqlkit.local.dialect import Statement, analyze_uncached

# A COPY statement psql would follow with data: it ends its line (pg_dump writes it on one).
_COPY_CANDIDATE = re.compile(r"^[ \t]*copy\b[^\n]*\bstdin\b[^\n]*;[ \t]*(?:--[^\n]*)?$",
                             re.IGNORECASE | re.MULTILINE)
_META_LINE = re.compile(r"^[ \t]*\\", re.MULTILINE)
_LITERAL_TOKENS = frozenset({"SCONST", "C_COMMENT", "IDENT", "BCONST", "XCONST", "USCONST",
                             "UIDENT"})


@dataclass(frozen=True, slots=True)
class ScriptStatement:
    """One statement of a script; ``start``/``end`` index the file's text.

    ``copy_data`` is the text psql sends as COPY data after a ``COPY ... FROM STDIN`` (the lines
    up to, not including, the ``\\.`` line); None for other statements.
    """

    stmt: Statement
    start: int
    end: int
    copy_data: str | None = None
    copy_data_start: int = 0

    @property
    def text(self) -> str:
        return self.stmt.text

    @property
    def error_position(self) -> int | None:
        pos = self.stmt.error_position
        return None if pos is None else pos - self.stmt.start + self.start


def split_script(text: str) -> list[ScriptStatement]:
    """The statements of ``text`` in order, psql's own input left out (offsets unchanged)."""
    found: list[ScriptStatement] = []
    pos = 0
    for match in _COPY_CANDIDATE.finditer(text):
        if match.start() < pos:
            continue
        head = _analyze_chunk(text, pos, match.start())
        if head and head[-1].stmt.unparsed and _open_literal(text, pos, match.start()):
            # The candidate sits inside a string, comment or function body: not a statement.
            continue
        copy = _analyze_chunk(text, match.start(), match.end())
        if len(copy) != 1 or not copy[0].stmt.copy_from_stdin:
            continue
        found.extend(head)
        data_start = match.end() + 1 if match.end() < len(text) else match.end()
        data_end, resume = _copy_data_end(text, data_start)
        found.append(ScriptStatement(copy[0].stmt, copy[0].start, copy[0].end,
                                     text[data_start:data_end], data_start))
        pos = resume
    found.extend(_analyze_chunk(text, pos, len(text)))
    return found


def _copy_data_end(text: str, start: int) -> tuple[int, int]:
    """Where COPY data ends (the ``\\.`` line) and where the SQL resumes after it."""
    pos = start
    while pos < len(text):
        eol = text.find("\n", pos)
        line_end = len(text) if eol < 0 else eol
        if text[pos:line_end].strip() == "\\.":
            return pos, line_end
        pos = line_end + 1
    return len(text), len(text)


def _open_literal(text: str, start: int, end: int) -> bool:
    try:
        parser.scan(text[start:end])
    except parser.ParseError:
        return True
    return False


def _analyze_chunk(text: str, start: int, end: int) -> list[ScriptStatement]:
    chunk = _blank_meta_commands(text[start:end])
    if not chunk.strip():
        return []
    return [ScriptStatement(s, s.start + start, s.end + start)
            for s in analyze_uncached(chunk).statements if s.kind != "empty"]


def _blank_meta_commands(chunk: str) -> str:
    """Meta-command lines replaced by spaces, except where they lie inside a multi-line literal
    or comment (a line starting with a backslash there is data)."""
    starts = [m.start() for m in _META_LINE.finditer(chunk)]
    if not starts:
        return chunk
    candidate = _blank_lines(chunk, starts)
    try:
        spans = sorted((t.start, t.end) for t in parser.scan(candidate)
                       if t.name in _LITERAL_TOKENS and "\n" in candidate[t.start:t.end + 1])
    except parser.ParseError:
        spans = []
    span_starts = [lo for lo, _ in spans]

    def inside(offset: int) -> bool:
        i = bisect.bisect_left(span_starts, offset) - 1
        return i >= 0 and spans[i][0] < offset <= spans[i][1]

    return _blank_lines(chunk, [i for i in starts if not inside(i)])


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


def line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


class LineIndex:
    """1-based line and column of character offsets."""

    def __init__(self, text: str) -> None:
        self._starts = line_starts(text)

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, offset) - 1
        return line + 1, offset - self._starts[line] + 1


def copy_rows(data: str) -> Iterator[str]:
    """The rows of COPY text-format data (one per line)."""
    for line in data.split("\n"):
        if line:
            yield line
