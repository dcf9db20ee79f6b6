"""Aurora DSQL's SQL dialect: what it refuses, what it rewrites, and its transaction rules.

One rule set, two front ends. The local endpoint calls :func:`analyze` for every statement text a
client sends and drives one :class:`TransactionRules` per session; ``dsqlkit check``
(:mod:`dsqlkit.checker`) runs the same two over SQL files.

:func:`analyze` parses with libpg_query (pglast), never with regular expressions, and caches its
answer by statement text: the transfer workload sends three texts millions of times, so the hot
path is one dict lookup. The answer is immutable. For each statement it says

* what DSQL refuses regardless of session state (``refusal``: DSQL's SQLSTATE and exact message),
* what the transaction rules need (``kind``, ``writes_rows``, ``tcl_action``, ``isolation``, ...),
* what PostgreSQL must run instead (``rewritten``) or what the proxy answers itself
  (``local_answer``, ``job``, ``iam``, ``wait_for_job``),
* what only the catalog can decide (``drop_columns``, ``adopt_indexes``, ``index_columns``,
  ``waiver``), which the proxy checks against its backend.

Messages come from a live cluster (../shared/conformance, recorded 2026-09) wherever one was
recorded; the few that were not are marked "inferred" next to the rule, with the documented style
they follow. Syntax errors are never invented: such statements are ``unparsed`` and PostgreSQL
reports its own error.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, NamedTuple

from pglast import ast, parser
from pglast.enums import (
    AlterTableType,
    ConstrType,
    LockClauseStrength,
    ObjectType,
    OnConflictAction,
    SortByDir,
    TransactionStmtKind,
    VariableSetKind,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------

Kind = Literal["select", "dml", "ddl", "tcl", "set", "show", "utility", "empty"]
TclAction = Literal[
    "begin", "commit", "rollback", "savepoint", "release", "rollback_to",
    "prepare", "commit_prepared", "rollback_prepared",
]
Locking = Literal["for_update", "for_key_share"]
JobKind = Literal["index_build", "validate_constraint"]
Waiver = Literal["sync_index_on_empty_table"]


class Refusal(NamedTuple):
    """An error DSQL answers: SQLSTATE and primary message, exactly as the cluster sends them."""

    sqlstate: str
    message: str


class Relation(NamedTuple):
    """A table as the statement names it (``schema`` is None when unqualified)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A result the proxy sends itself: one row of text columns (or none) and a command tag."""

    tag: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str | None, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class AsyncJob:
    """A DSQL background job (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC ... VALIDATE``).

    DSQL answers the statement at once with a one-row result, column ``job_id`` (26 lowercase
    base32 characters), under the command tag ``CREATE INDEX`` or ``ALTER TABLE``; the work runs
    in the background and shows in ``sys.jobs`` (job_type ``INDEX_BUILD`` or
    ``VALIDATE_CONSTRAINT``). ``sql`` is the statement without ``ASYNC`` for PostgreSQL;
    ``concurrent_sql`` is the ``CREATE INDEX CONCURRENTLY`` form for index builds, which leaves
    ``pg_index.indisvalid`` false while it runs, as DSQL does.
    """

    kind: JobKind
    sql: str
    concurrent_sql: str | None
    relation: Relation
    object_name: str | None
    tag: str
    unique: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True, slots=True)
class IamMapping:
    """``AWS IAM GRANT role TO 'arn'`` / ``AWS IAM REVOKE role FROM 'arn'``."""

    action: Literal["grant", "revoke"]
    role: str
    arn: str


@dataclass(frozen=True, slots=True)
class WaitForJob:
    """``CALL sys.wait_for_job(...)``: the job id literal, or the ``$n`` parameter carrying it.

    Both are None when the argument is some other expression, which the proxy has to evaluate.
    DSQL answers with one row, boolean column ``succeeded`` (false when the job failed), tag CALL.
    """

    job_id: str | None
    param: int | None


@dataclass(frozen=True, slots=True)
class Statement:
    """What :func:`analyze` knows about one statement. Offsets index the analyzed text."""

    text: str
    start: int
    end: int
    kind: Kind
    node: str
    refusal: Refusal | None = None
    rule: str | None = None
    unparsed: bool = False
    parse_error: str | None = None
    error_position: int | None = None
    rewritten: str | None = None
    writes_rows: bool = False
    values_rows: int | None = None
    locking: Locking | None = None
    tcl_action: TclAction | None = None
    isolation: str | None = None
    read_only: bool | None = None
    set_param: str | None = None
    set_value: str | None = None
    is_local: bool = False
    show_param: str | None = None
    local_answer: LocalAnswer | None = None
    job: AsyncJob | None = None
    iam: IamMapping | None = None
    wait_for_job: WaitForJob | None = None
    waiver: Waiver | None = None
    refusal_if_waived: Refusal | None = None
    waiver_rule: str | None = None
    drop_columns: tuple[tuple[Relation, str], ...] = ()
    adopt_indexes: tuple[tuple[Relation, str], ...] = ()
    index_columns: tuple[Relation, tuple[str, ...]] | None = None
    prepared_name: str | None = None
    execute_name: str | None = None
    copy_from_stdin: bool = False

    @property
    def backend_sql(self) -> str:
        """The text PostgreSQL should run for this statement."""
        return self.text if self.rewritten is None else self.rewritten

    @property
    def is_ddl(self) -> bool:
        return self.kind == "ddl"

    @property
    def is_dml(self) -> bool:
        """Counts as DML for DSQL's "no DDL with DML" rule (reads do not)."""
        return self.kind == "dml" or self.writes_rows


@dataclass(frozen=True, slots=True)
class Analysis:
    """The statements of one text (a simple Query may hold several; a Parse holds one)."""

    text: str
    statements: tuple[Statement, ...]
    masked_text: str
    passthrough: bool

    @property
    def unparsed(self) -> bool:
        """libpg_query could not parse some statement.

        PostgreSQL rejects the whole Query then and runs none of it, so the proxy should send
        :attr:`masked_text` (DSQL-only keywords blanked, offsets unchanged) as one Query and relay
        PostgreSQL's own syntax error.
        """
        return any(s.unparsed for s in self.statements)

    @property
    def refusal(self) -> Refusal | None:
        """The first static refusal, if any statement has one."""
        for s in self.statements:
            if s.refusal is not None:
                return s.refusal
        return None


# ---------------------------------------------------------------------------------------------
# DSQL facts
# ---------------------------------------------------------------------------------------------

SERVER_VERSION: Final = "16.15"
SERVER_VERSION_NUM: Final = "160015"
VERSION_STRING: Final = "PostgreSQL 16"

#: DSQL caps the rows an INSERT/UPDATE/DELETE transaction mutates at 3,000; exactly 3,000 pass.
ROW_LIMIT: Final = 3000
#: DSQL aborts a transaction older than 5 minutes at its next statement or at COMMIT.
TRANSACTION_AGE_LIMIT: Final = 300.0

#: The only parameters DSQL lets a session set (SET, SET SESSION, SET LOCAL, RESET, startup).
ALLOWED_SETTINGS: Final = frozenset({
    "application_name", "client_encoding", "datestyle", "extra_float_digits", "intervalstyle",
    "timezone", "search_path", "enable_bitmapscan", "enable_hashjoin", "enable_indexonlyscan",
    "enable_indexscan", "enable_material", "enable_mergejoin", "enable_nestloop",
    "dsql.enable_batched_nestloop", "enable_seqscan", "disable_sync_create_index", "role",
})
#: Parameters PostgreSQL does not know, so the proxy keeps and answers them itself.
DSQL_ONLY_SETTINGS: Final = frozenset({"disable_sync_create_index"})

FEATURE_NOT_SUPPORTED: Final = "0A000"
UNDEFINED_OBJECT: Final = "42704"
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
TOO_MANY_COLUMNS: Final = "54011"

ABORTED: Final = Refusal(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block")
MULTIPLE_DDL: Final = Refusal(
    FEATURE_NOT_SUPPORTED, "multiple ddl statements not supported in a transaction")
DDL_AND_DML: Final = Refusal(
    FEATURE_NOT_SUPPORTED, "ddl and dml are not supported in the same transaction")
ROW_LIMIT_EXCEEDED: Final = Refusal(PROGRAM_LIMIT_EXCEEDED, "transaction row limit exceeded")
AGE_LIMIT_EXCEEDED: Final = Refusal(
    PROGRAM_LIMIT_EXCEEDED, "transaction age limit of 300s exceeded")

_SEQUENCE_CACHE = Refusal(
    FEATURE_NOT_SUPPORTED,
    "CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE "
    "greater than or equal to 65536 or equal to 1")
_IDENTITY_CACHE = Refusal(
    FEATURE_NOT_SUPPORTED,
    "identity column is not supported without an explicit cache size. please define CACHE "
    "greater than or equal to 65536 or equal to 1")
_SYNC_INDEX = Refusal(FEATURE_NOT_SUPPORTED, "unsupported mode. please use CREATE INDEX ASYNC.")
_ADD_COLUMN_CONSTRAINT = Refusal(
    FEATURE_NOT_SUPPORTED, "ALTER TABLE ADD COLUMN with constraint not supported")
_LOCKING = Refusal(
    FEATURE_NOT_SUPPORTED,
    "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")


def _f(message: str) -> Refusal:
    return Refusal(FEATURE_NOT_SUPPORTED, message)


def setting_refusal(name: str, *, is_local: bool = False) -> Refusal | None:
    """DSQL's answer to setting ``name`` (also for startup parameters), or None if allowed.

    ``role`` is only accepted through ``SET LOCAL`` inside a transaction block.
    """
    lowered = name.lower()
    if lowered not in ALLOWED_SETTINGS or (lowered == "role" and not is_local):
        return _f(f'setting configuration parameter "{name}" not supported')
    return None


# ---------------------------------------------------------------------------------------------
# analyze()
# ---------------------------------------------------------------------------------------------


# Texts are cached by size tier so the cache cannot grow to gigabytes: a bulk loader sending
# distinct 300 KB INSERT texts would otherwise fill 4,096 slots with them. Typical statements fit
# the first tier; the few large repeated ones (generated reports, big IN lists) the second.
_SMALL_TEXT = 8 * 1024
_LARGE_TEXT = 1024 * 1024


def analyze(sql: str) -> Analysis:
    """Analyze a statement text, cached by text (a repeated text costs one dict lookup).

    Never raises. Texts over 1 MiB are analyzed afresh each time. A text of ~100 KB takes tens
    of milliseconds to analyze the first time (pglast builds a Python object per tree node), so
    a proxy may prefer to call this from a worker thread for large texts.
    """
    if len(sql) <= _SMALL_TEXT:
        return _cached_small(sql)
    if len(sql) <= _LARGE_TEXT:
        return _cached_large(sql)
    return analyze_uncached(sql)


class CacheStats(NamedTuple):
    hits: int
    misses: int
    entries: int


def cache_stats() -> CacheStats:
    """Hits, misses and entries of :func:`analyze`'s cache (both size tiers)."""
    small, large = _cached_small.cache_info(), _cached_large.cache_info()
    return CacheStats(small.hits + large.hits, small.misses + large.misses,
                      small.currsize + large.currsize)


def cache_clear() -> None:
    _cached_small.cache_clear()
    _cached_large.cache_clear()


def analyze_uncached(sql: str) -> Analysis:
    """:func:`analyze` without the cache (the checker uses it for whole files)."""
    try:
        return _analyze(sql)
    except Exception as exc:  # the proxy must never crash on a client's text
        log.exception("dialect analysis failed; treating the text as unparsed")
        stmt = Statement(text=sql, start=0, end=len(sql), kind="utility", node="Unparsed",
                         unparsed=True, parse_error=f"analysis failed: {exc!r}")
        return Analysis(text=sql, statements=(stmt,), masked_text=sql, passthrough=False)


_cached_small = functools.lru_cache(maxsize=4096)(analyze_uncached)
_cached_large = functools.lru_cache(maxsize=16)(analyze_uncached)

_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})


def _analyze(sql: str) -> Analysis:
    if "\x00" in sql:
        # A protocol string cannot carry NUL and libpg_query would stop reading at it.
        return _whole_unparsed(sql, "text contains a NUL character", None)
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        return _whole_unparsed(sql, f"text is not valid UTF-8: {exc.reason}", exc.start)

    tokens, scan_error = _scan(sql)
    pieces = _split(tokens)
    tail: tuple[int, str, int | None] | None = None
    if scan_error is not None:
        message, position = scan_error
        # The statement holding the lexical error runs from the last statement boundary before
        # it to the end of the text; everything before it scanned cleanly.
        if pieces and tokens and tokens[-1].name != "ASCII_59":
            tail_start = pieces.pop()[0].start
        else:
            tail_start = _skip_space(sql, tokens[-1].end + 1 if tokens else 0)
        tail = (tail_start, message, position)

    statements: list[Statement] = []
    async_spans: list[tuple[int, int]] = []
    index = 0
    while index < len(pieces):
        async_tok, _ = _dsql_async(sql, pieces[index])
        if async_tok is not None:
            async_spans.append((async_tok.start, async_tok.end + 1))
        stmt, consumed = _analyze_piece(sql, pieces, index)
        index += consumed
        statements.append(stmt)
    if tail is not None:
        tail_start, message, position = tail
        statements.append(Statement(
            text=sql[tail_start:].rstrip(), start=tail_start, end=len(sql.rstrip()),
            kind="utility", node="Unparsed", unparsed=True, parse_error=message,
            error_position=position))
    if not statements:
        statements.append(Statement(text="", start=0, end=0, kind="empty", node="Empty"))
    masked_text = sql
    for begin, stop in async_spans:
        masked_text = masked_text[:begin] + " " * (stop - begin) + masked_text[stop:]
    passthrough = all(_is_passthrough(s) for s in statements)
    return Analysis(text=sql, statements=tuple(statements), masked_text=masked_text,
                    passthrough=passthrough)


def _whole_unparsed(sql: str, message: str, position: int | None) -> Analysis:
    stmt = Statement(text=sql, start=0, end=len(sql), kind="utility", node="Unparsed",
                     unparsed=True, parse_error=message, error_position=position)
    return Analysis(text=sql, statements=(stmt,), masked_text=sql, passthrough=False)


def _is_passthrough(s: Statement) -> bool:
    return (s.refusal is None and s.rewritten is None and s.local_answer is None
            and s.job is None and s.iam is None and s.wait_for_job is None and not s.unparsed
            and s.kind != "empty" and s.waiver is None and not s.drop_columns
            and not s.adopt_indexes and s.index_columns is None
            and s.set_param not in DSQL_ONLY_SETTINGS and s.show_param not in DSQL_ONLY_SETTINGS)


def _skip_space(sql: str, pos: int) -> int:
    while pos < len(sql) and sql[pos].isspace():
        pos += 1
    return pos


# ---------------------------------------------------------------------------------------------
# Scanning and splitting
# ---------------------------------------------------------------------------------------------

Token = parser.Token


def _scan(sql: str) -> tuple[list[Token], tuple[str, int | None] | None]:
    """Tokens without comments; on a lexical error, the tokens before it and the error."""
    try:
        return [t for t in parser.scan(sql) if t.name not in _COMMENT_TOKENS], None
    except parser.ParseError as exc:
        message, position = _parse_error_parts(exc)
        if position is None or position <= 0:
            return [], (message, position)
        try:
            head = [t for t in parser.scan(sql[:position]) if t.name not in _COMMENT_TOKENS]
        except parser.ParseError:
            head = []
        return head, (message, position)


def _parse_error_parts(exc: parser.ParseError) -> tuple[str, int | None]:
    args = exc.args
    message = str(args[0]) if args else str(exc)
    position = args[1] if len(args) > 1 and isinstance(args[1], int) else None
    return message, position


def _split(tokens: list[Token]) -> list[list[Token]]:
    """Statements are separated by ';' outside parentheses (CREATE RULE actions nest them)."""
    pieces: list[list[Token]] = []
    current: list[Token] = []
    depth = 0
    for tok in tokens:
        name = tok.name
        if name == "ASCII_40":
            depth += 1
        elif name == "ASCII_41":
            depth = max(0, depth - 1)
        elif name == "ASCII_59" and depth == 0:
            if current:
                pieces.append(current)
                current = []
            continue
        current.append(tok)
    if current:
        pieces.append(current)
    return pieces


def _tok_text(sql: str, tok: Token) -> str:
    return sql[tok.start:tok.end + 1]


def _is_word(sql: str, tok: Token, word: str) -> bool:
    """An unquoted identifier spelled ``word`` (DSQL keywords PostgreSQL does not have)."""
    return tok.name == "IDENT" and _tok_text(sql, tok).lower() == word


def _has_begin_atomic(pieces_tokens: list[Token]) -> bool:
    return any(a.name == "BEGIN_P" and b.name == "ATOMIC"
               for a, b in itertools.pairwise(pieces_tokens))


# ---------------------------------------------------------------------------------------------
# One statement
# ---------------------------------------------------------------------------------------------

# libpg_query's tree is converted to Python recursively; a long left-associative chain
# (1+1+...+1) overflows an 8 MiB C stack somewhere past 20,000 levels and kills the process.
# A statement shorter than this cannot nest deeper than half its length, so it parses inline.
_INLINE_PARSE_LIMIT = 4000
_WORKER_STACK_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class _Piece:
    sql: str
    start: int
    end: int
    text: str
    parse_text: str
    async_token: Token | None
    dsql_syntax: str | None
    tokens: list[Token]


def _analyze_piece(sql: str, pieces: list[list[Token]], index: int) -> tuple[Statement, int]:
    """Analyze ``pieces[index]``; returns the statement and how many pieces it consumed."""
    toks = pieces[index]
    iam = _aws_iam(sql, toks)
    if iam is not None:
        return iam, 1
    piece = _make_piece(sql, toks)
    stmt = _analyze_text(piece)
    if stmt.unparsed and _has_begin_atomic(toks):
        # A SQL-standard function body (BEGIN ATOMIC ... END) holds ';' at the top level: grow
        # the statement until it parses.
        merged = list(toks)
        for extra in range(index + 1, len(pieces)):
            merged.extend(pieces[extra])
            candidate = _analyze_text(_make_piece(sql, merged))
            if not candidate.unparsed:
                return candidate, extra - index + 1
    return stmt, 1


def _make_piece(sql: str, toks: list[Token]) -> _Piece:
    start, end = toks[0].start, toks[-1].end + 1
    text = sql[start:end]
    async_tok, syntax = _dsql_async(sql, toks)
    parse_text = text
    if async_tok is not None:
        rel = async_tok.start - start
        parse_text = text[:rel] + " " * (async_tok.end + 1 - async_tok.start) + \
            text[async_tok.end + 1 - start:]
    return _Piece(sql=sql, start=start, end=end, text=text, parse_text=parse_text,
                  async_token=async_tok, dsql_syntax=syntax, tokens=toks)


def _dsql_async(sql: str, toks: list[Token]) -> tuple[Token | None, str | None]:
    """Find DSQL's ASYNC keyword: ``CREATE [UNIQUE] INDEX ASYNC`` or ``ALTER TABLE ASYNC``."""
    if len(toks) < 3:
        return None, None
    if toks[0].name == "CREATE":
        pos = 2 if toks[1].name == "UNIQUE" else 1
        if pos + 1 < len(toks) and toks[pos].name == "INDEX" and _is_word(sql, toks[pos + 1],
                                                                          "async"):
            return toks[pos + 1], "index"
    elif toks[0].name == "ALTER" and toks[1].name == "TABLE" and _is_word(sql, toks[2], "async"):
        return toks[2], "alter"
    return None, None


_QUALIFIED_INDEX_NAME = Refusal("42601", 'syntax error at or near "."')


def _analyze_text(piece: _Piece) -> Statement:
    if piece.dsql_syntax == "index" and _qualified_async_index_name(piece):
        # DSQL's grammar takes an unqualified name after ASYNC and stops at the dot.
        return Statement(text=piece.text, start=piece.start, end=piece.end, kind="ddl",
                         node="IndexStmt", refusal=_QUALIFIED_INDEX_NAME, rule="index-name")
    if len(piece.parse_text) <= _INLINE_PARSE_LIMIT:
        return _parse_and_describe(piece)
    return _run_with_big_stack(_describe_large, piece)


def _describe_large(piece: _Piece) -> Statement:
    # libpg_query's JSON serializer refuses trees deeper than its stack check allows ("stack
    # depth limit exceeded", some 25,000 levels) instead of crashing, which bounds the depth the
    # Python conversion sees to a fraction of the worker's stack. (Its protobuf serializer stops
    # at a fixed, much lower depth that real statements can reach.)
    try:
        parser.parse_sql_json(piece.parse_text)
    except parser.ParseError as exc:
        message, position = _parse_error_parts(exc)
        return _unparsed(piece, message, position)
    return _parse_and_describe(piece)


def _parse_and_describe(piece: _Piece) -> Statement:
    try:
        raw = parser.parse_sql(piece.parse_text)
    except parser.ParseError as exc:
        message, position = _parse_error_parts(exc)
        if piece.dsql_syntax == "alter":
            # "ALTER TABLE async ..." may be a table named async rather than DSQL's keyword.
            plain = _Piece(piece.sql, piece.start, piece.end, piece.text, piece.text, None, None,
                           piece.tokens)
            if len(plain.text) <= _INLINE_PARSE_LIMIT:
                try:
                    if len(parser.parse_sql(plain.text)) == 1:
                        return _parse_and_describe(plain)
                except parser.ParseError:
                    pass
        return _unparsed(piece, message, position)
    except RecursionError:
        return _unparsed(piece, "statement nests too deeply to analyze", None)
    if len(raw) != 1 or raw[0].stmt is None:
        return _unparsed(piece, "expected exactly one statement", None)
    try:
        return _describe(piece, raw[0].stmt)
    except RecursionError:
        return _unparsed(piece, "statement nests too deeply to analyze", None)


def _unparsed(piece: _Piece, message: str, position: int | None) -> Statement:
    return Statement(
        text=piece.text, start=piece.start, end=piece.end, kind="utility", node="Unparsed",
        unparsed=True, parse_error=message,
        error_position=None if position is None else piece.start + position,
        rewritten=piece.parse_text if piece.async_token is not None else None)


class _BigStackWorker:
    """One long-lived thread with a large stack for parsing very long statements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Future[Any]]] | None = None

    def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        with self._lock:
            if self._queue is None:
                q: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Future[Any]]] = (
                    queue.SimpleQueue())
                previous = threading.stack_size(_WORKER_STACK_BYTES)
                try:
                    threading.Thread(target=self._loop, args=(q,), name="dsqlkit-dialect-parse",
                                     daemon=True).start()
                finally:
                    threading.stack_size(previous)
                self._queue = q
        future: Future[Any] = Future()
        self._queue.put((fn, arg, future))
        return future.result()

    @staticmethod
    def _loop(q: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Future[Any]]]) -> None:
        while True:
            fn, arg, future = q.get()
            try:
                future.set_result(fn(arg))
            except BaseException as exc:
                future.set_exception(exc)
            del fn, arg, future


    def forget(self) -> None:
        """After fork() the child has the queue but not the thread; start afresh on demand."""
        self._lock = threading.Lock()
        self._queue = None


_worker = _BigStackWorker()
os.register_at_fork(after_in_child=_worker.forget)


def _run_with_big_stack(fn: Callable[[_Piece], Statement], piece: _Piece) -> Statement:
    try:
        result: Statement = _worker.run(fn, piece)
    except (RuntimeError, MemoryError) as exc:
        log.warning("cannot analyze a %d-character statement: %s", len(piece.text), exc)
        return _unparsed(piece, f"statement too large to analyze: {exc}", None)
    return result


# ---------------------------------------------------------------------------------------------
# AWS IAM GRANT / REVOKE (DSQL only; libpg_query cannot parse it)
# ---------------------------------------------------------------------------------------------

_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::[0-9]{12}:(?:role|user)/[A-Za-z0-9+=,.@_/-]+")
# Inferred SQLSTATE: DSQL's message is documented, its code is not; an ill-formed argument value
# is invalid_parameter_value in PostgreSQL's scheme.
_IAM_ARN = Refusal("22023", "IAM role must look like an IAM ARN")


def _aws_iam(sql: str, toks: list[Token]) -> Statement | None:
    if len(toks) < 2 or not (_is_word(sql, toks[0], "aws") and _is_word(sql, toks[1], "iam")):
        return None
    start, end = toks[0].start, toks[-1].end + 1
    text = sql[start:end]
    grant = len(toks) > 2 and toks[2].name == "GRANT"
    revoke = len(toks) > 2 and toks[2].name == "REVOKE"
    role = _identifier(sql, toks[3]) if len(toks) == 6 else None
    arn = _string_constant(sql, toks[5]) if len(toks) == 6 else None
    linker_ok = len(toks) == 6 and toks[4].name == ("TO" if grant else "FROM")
    if not (grant or revoke) or role is None or arn is None or not linker_ok:
        return Statement(text=text, start=start, end=end, kind="ddl", node="Unparsed",
                         unparsed=True, parse_error="malformed AWS IAM statement: expected "
                         "AWS IAM GRANT role TO 'arn' or AWS IAM REVOKE role FROM 'arn'")
    mapping = IamMapping(action="grant" if grant else "revoke", role=role, arn=arn)
    refusal = None if _ARN.fullmatch(arn) else _IAM_ARN
    return Statement(text=text, start=start, end=end, kind="ddl",
                     node="AwsIamGrant" if grant else "AwsIamRevoke", iam=mapping,
                     refusal=refusal, rule="iam-arn" if refusal else None)


def _identifier(sql: str, tok: Token) -> str | None:
    raw = _tok_text(sql, tok)
    if tok.name == "IDENT":
        if raw.startswith('"'):
            return raw[1:-1].replace('""', '"')
        return _downcase(raw)
    if tok.kind in ("UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD"):
        return _downcase(raw)
    return None


def _downcase(name: str) -> str:
    # PostgreSQL folds only ASCII letters of unquoted identifiers in a UTF-8 database.
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


def _string_constant(sql: str, tok: Token) -> str | None:
    if tok.name != "SCONST":
        return None
    raw = _tok_text(sql, tok)
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw.startswith("$"):
        tag_end = raw.index("$", 1) + 1
        return raw[tag_end:len(raw) - tag_end]
    return None


# ---------------------------------------------------------------------------------------------
# Statement analysis over the parse tree
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Facts:
    kind: Kind = "utility"
    refusal: Refusal | None = None
    rule: str | None = None
    writes_rows: bool = False
    values_rows: int | None = None
    locking: Locking | None = None
    tcl_action: TclAction | None = None
    isolation: str | None = None
    read_only: bool | None = None
    set_param: str | None = None
    set_value: str | None = None
    is_local: bool = False
    show_param: str | None = None
    local_answer: LocalAnswer | None = None
    job: AsyncJob | None = None
    wait_for_job: WaitForJob | None = None
    waiver: Waiver | None = None
    refusal_if_waived: Refusal | None = None
    waiver_rule: str | None = None
    drop_columns: list[tuple[Relation, str]] = field(default_factory=list)
    adopt_indexes: list[tuple[Relation, str]] = field(default_factory=list)
    index_columns: tuple[Relation, tuple[str, ...]] | None = None
    prepared_name: str | None = None
    execute_name: str | None = None
    copy_from_stdin: bool = False
    dml_cte: bool = False
    explain_analyze: bool = False

    def refuse(self, rule: str, refusal: Refusal) -> None:
        if self.refusal is None:
            self.refusal = refusal
            self.rule = rule


def _describe(piece: _Piece, node: ast.Node) -> Statement:
    facts = _Facts()
    handler = _HANDLERS.get(type(node))
    if handler is not None:
        handler(node, facts, piece)
    else:
        facts.kind = _DEFAULT_KINDS.get(type(node).__name__, "ddl")
        generic = _UNSUPPORTED_STATEMENTS.get(type(node).__name__)
        if generic is not None:
            facts.refuse(generic[0], _f(f"unsupported statement: {generic[1]}"))
    rewritten: str | None = None
    if facts.refusal is None:
        rewrites = _scan_tree(node, facts)
        if rewrites:
            rewritten = _apply_rewrites(node, rewrites)
    if facts.job is not None:
        rewritten = facts.job.sql
    found = {name: getattr(facts, name) for name in _STATEMENT_FACTS}
    found["drop_columns"] = tuple(facts.drop_columns)
    found["adopt_indexes"] = tuple(facts.adopt_indexes)
    return Statement(text=piece.text, start=piece.start, end=piece.end,
                     node=type(node).__name__, rewritten=rewritten, **found)


# What a Statement takes over from the _Facts gathered for it: every field both declare.
_STATEMENT_FACTS = tuple(f.name for f in fields(_Facts)
                         if f.name in {g.name for g in fields(Statement)})


# Statements DSQL refuses by node type, answering "unsupported statement: <node tag>" (the
# PostgreSQL node tag without "Stmt", e.g. Truncate, Createdb, CreateTableAs). Recorded for
# Truncate, CreateExtension, Createdb, CreateTableAs, CompositeType, CreateRange,
# CreateTableSpace, CreateForeignTable, Listen, Notify, Unlisten, AlterSystem; the rest are
# inferred from that pattern for statements DSQL documents as unsupported (extensions, other
# databases, tablespaces, foreign data, triggers, rules, row-level security, procedural code,
# replication, maintenance commands).
_UNSUPPORTED_STATEMENTS: dict[str, tuple[str, str]] = {
    name: (rule, name.removesuffix("Stmt")) for rule, names in {
        "truncate": ["TruncateStmt"],
        "extension": ["CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt"],
        "database": ["CreatedbStmt", "DropdbStmt", "AlterDatabaseStmt", "AlterDatabaseSetStmt",
                     "AlterDatabaseRefreshCollStmt"],
        "create-table-as": ["CreateTableAsStmt", "RefreshMatViewStmt"],
        "create-type": ["CompositeTypeStmt", "CreateRangeStmt"],
        "tablespace": ["CreateTableSpaceStmt", "DropTableSpaceStmt", "AlterTableSpaceOptionsStmt",
                       "AlterTableMoveAllStmt"],
        "foreign-data": ["CreateForeignTableStmt", "CreateForeignServerStmt",
                         "AlterForeignServerStmt", "CreateFdwStmt", "AlterFdwStmt",
                         "CreateUserMappingStmt", "AlterUserMappingStmt", "DropUserMappingStmt",
                         "ImportForeignSchemaStmt"],
        "listen-notify": ["ListenStmt", "NotifyStmt", "UnlistenStmt"],
        "alter-system": ["AlterSystemStmt"],
        "trigger": ["CreateEventTrigStmt", "AlterEventTrigStmt"],
        "unsupported-statement": [
            "CreatePLangStmt", "CreateConversionStmt", "CreateCastStmt", "CreateOpClassStmt",
            "CreateOpFamilyStmt", "AlterOpFamilyStmt", "AlterOperatorStmt", "CreateTransformStmt",
            "CreateAmStmt", "CreatePublicationStmt", "AlterPublicationStmt",
            "CreateSubscriptionStmt", "AlterSubscriptionStmt", "DropSubscriptionStmt",
            "CreatePolicyStmt", "AlterPolicyStmt", "RuleStmt", "ClusterStmt", "ReindexStmt",
            "CheckPointStmt", "LoadStmt", "SecLabelStmt", "AlterCollationStmt",
            "AlterTSDictionaryStmt", "AlterTSConfigurationStmt", "DoStmt",
            "AlterObjectDependsStmt"],
    }.items() for name in names
}

_DEFAULT_KINDS: dict[str, Kind] = {
    "TruncateStmt": "dml", "ListenStmt": "utility", "NotifyStmt": "utility",
    "UnlistenStmt": "utility", "AlterSystemStmt": "utility", "ClusterStmt": "utility",
    "ReindexStmt": "utility", "CheckPointStmt": "utility", "LoadStmt": "utility",
    "DoStmt": "utility", "DiscardStmt": "utility", "DeallocateStmt": "utility",
    "LockStmt": "utility", "FetchStmt": "utility", "ClosePortalStmt": "utility",
    "ConstraintsSetStmt": "set", "DeclareCursorStmt": "utility",
}

_Handler = Callable[[Any, _Facts, _Piece], None]
_HANDLERS: dict[type[ast.Node], _Handler] = {}


def _handles(*classes: type[ast.Node]) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for cls in classes:
            _HANDLERS[cls] = fn
        return fn
    return register


def _relation(rv: ast.RangeVar | None) -> Relation:
    if rv is None:
        return Relation(None, "")
    return Relation(rv.schemaname, rv.relname or "")


def _defelems(options: Iterable[Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for opt in options or ():
        if isinstance(opt, ast.DefElem) and opt.defname is not None:
            found.setdefault(opt.defname, opt)
    return found


def _const_value(node: Any) -> Any:
    """The Python value of a literal (A_Const, Integer, Float, String, Boolean)."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        node = node.val
    if isinstance(node, ast.Integer):
        return node.ival
    if isinstance(node, ast.Float):
        return float(node.fval) if node.fval is not None else None
    if isinstance(node, ast.String):
        return node.sval
    if isinstance(node, ast.Boolean):
        return node.boolval
    return None


def _string_names(names: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(n.sval for n in names or () if isinstance(n, ast.String) and n.sval is not None)


# --- queries and DML -------------------------------------------------------------------------


@_handles(ast.SelectStmt)
def _select(node: ast.SelectStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "select"
    if node.intoClause is not None:
        # SELECT ... INTO reaches the executor as CREATE TABLE AS.
        f.kind = "ddl"
        f.refuse("create-table-as", _f("unsupported statement: CreateTableAs"))


@_handles(ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)
def _dml(node: ast.Node, f: _Facts, piece: _Piece) -> None:
    f.kind = "dml"
    f.writes_rows = True
    if isinstance(node, ast.InsertStmt):
        select = node.selectStmt
        conflict = node.onConflictClause
        skips = conflict is not None and conflict.action == OnConflictAction.ONCONFLICT_NOTHING
        if select is None:
            f.values_rows = None if skips else 1
        elif (isinstance(select, ast.SelectStmt) and select.valuesLists and not skips
              and select.larg is None):
            f.values_rows = len(select.valuesLists)


@_handles(ast.MergeStmt)
def _merge(node: ast.MergeStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "dml"
    f.writes_rows = True
    # Inferred: not in the recorded corpus; the wording follows DSQL's documented emulator rule.
    f.refuse("merge", _f("unsupported statement type: MERGE"))


@_handles(ast.CopyStmt)
def _copy(node: ast.CopyStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    f.writes_rows = bool(node.is_from)
    f.copy_from_stdin = bool(node.is_from) and node.filename is None and not node.is_program


@_handles(ast.ExplainStmt)
def _explain(node: ast.ExplainStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    analyze_opt = _defelems(node.options).get("analyze")
    f.explain_analyze = analyze_opt is not None and _const_value(analyze_opt.arg) not in (
        False, "false", "off", 0)
    inner = _inner_facts(node.query, piece)
    if inner.refusal is not None:
        f.refuse(inner.rule or "unsupported-statement", inner.refusal)
    if f.explain_analyze and inner.kind == "dml":
        f.writes_rows = True


@_handles(ast.PrepareStmt)
def _prepare(node: ast.PrepareStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    f.prepared_name = node.name
    inner = _inner_facts(node.query, piece)
    if inner.refusal is not None:
        f.refuse(inner.rule or "unsupported-statement", inner.refusal)


@_handles(ast.ExecuteStmt)
def _execute(node: ast.ExecuteStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    f.execute_name = node.name


def _inner_facts(node: Any, piece: _Piece) -> _Facts:
    inner = _Facts()
    if isinstance(node, ast.Node):
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            handler(node, inner, piece)
        else:
            generic = _UNSUPPORTED_STATEMENTS.get(type(node).__name__)
            if generic is not None:
                inner.refuse(generic[0], _f(f"unsupported statement: {generic[1]}"))
    return inner


@_handles(ast.CallStmt)
def _call(node: ast.CallStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    call = node.funccall
    if call is None:
        return
    names = _string_names(call.funcname)
    if names == ("sys", "wait_for_job") and call.args and len(call.args) == 1:
        arg = call.args[0]
        if isinstance(arg, ast.NamedArgExpr):
            arg = arg.arg
        while isinstance(arg, ast.TypeCast):
            arg = arg.arg
        job_id = _const_value(arg) if isinstance(arg, ast.A_Const) else None
        param = arg.number if isinstance(arg, ast.ParamRef) else None
        f.wait_for_job = WaitForJob(job_id=job_id if isinstance(job_id, str) else None,
                                    param=param)


# --- transactions and settings ---------------------------------------------------------------

_TCL_ACTIONS: dict[TransactionStmtKind, TclAction] = {
    TransactionStmtKind.TRANS_STMT_BEGIN: "begin",
    TransactionStmtKind.TRANS_STMT_START: "begin",
    TransactionStmtKind.TRANS_STMT_COMMIT: "commit",
    TransactionStmtKind.TRANS_STMT_ROLLBACK: "rollback",
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: "savepoint",
    TransactionStmtKind.TRANS_STMT_RELEASE: "release",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "rollback_to",
    TransactionStmtKind.TRANS_STMT_PREPARE: "prepare",
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "commit_prepared",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "rollback_prepared",
}
# SAVEPOINT and ROLLBACK TO are recorded; RELEASE and two-phase commit follow the same wording.
_TCL_REFUSED: dict[TclAction, str] = {
    "savepoint": "SAVEPOINT", "release": "RELEASE", "rollback_to": "ROLLBACK TO",
    "prepare": "PREPARE TRANSACTION", "commit_prepared": "COMMIT PREPARED",
    "rollback_prepared": "ROLLBACK PREPARED",
}


def _transaction_options(options: Iterable[Any] | None, f: _Facts) -> None:
    opts = _defelems(options)
    level = opts.get("transaction_isolation")
    if level is not None:
        value = _const_value(level.arg)
        if isinstance(value, str):
            f.isolation = value.lower()
    read_only = opts.get("transaction_read_only")
    if read_only is not None:
        f.read_only = bool(_const_value(read_only.arg))


def _isolation_refusal(f: _Facts) -> bool:
    # DSQL runs every transaction at REPEATABLE READ and names any other level it is asked for
    # (recorded for SERIALIZABLE).
    if f.isolation is not None and f.isolation != "repeatable read":
        f.refuse("isolation-level", _f(f"Unsupported isolation level: {f.isolation.upper()}"))
        return True
    return False


@_handles(ast.TransactionStmt)
def _transaction(node: ast.TransactionStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "tcl"
    action = _TCL_ACTIONS.get(node.kind) if node.kind is not None else None
    if action is None:
        return
    f.tcl_action = action
    if action == "begin":
        _transaction_options(node.options, f)
        _isolation_refusal(f)
    elif action in _TCL_REFUSED:
        f.refuse("savepoint" if action in ("savepoint", "release", "rollback_to")
                 else "two-phase-commit",
                 _f(f"unsupported transaction statement: {_TCL_REFUSED[action]}"))


@_handles(ast.VariableSetStmt)
def _set(node: ast.VariableSetStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "set"
    f.is_local = bool(node.is_local)
    kind = node.kind
    name = node.name or ""
    if kind == VariableSetKind.VAR_RESET_ALL:
        return
    if kind == VariableSetKind.VAR_SET_MULTI:
        # SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION / SET TRANSACTION
        # SNAPSHOT: DSQL names a non-RR isolation level, and refuses the rest as a parameter
        # called by the statement's own name (recorded: "TRANSACTION").
        _transaction_options(node.args, f)
        if not _isolation_refusal(f):
            f.refuse("set-transaction",
                     _f(f'setting configuration parameter "{name}" not supported'))
        return
    param = name.lower()
    f.set_param = param
    if kind == VariableSetKind.VAR_SET_VALUE and node.args:
        value = _const_value(node.args[0])
        f.set_value = None if value is None else str(value)
    refusal = setting_refusal(param, is_local=f.is_local)
    if refusal is not None:
        f.refuse("set-parameter", refusal)
    elif param in DSQL_ONLY_SETTINGS:
        f.local_answer = LocalAnswer(tag="RESET" if kind == VariableSetKind.VAR_RESET else "SET")


# PostgreSQL 16 removed lc_collate and lc_ctype as settings; DSQL reports 16.15 and answers so.
_REMOVED_SETTINGS = frozenset({"lc_collate", "lc_ctype"})


@_handles(ast.VariableShowStmt)
def _show(node: ast.VariableShowStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "show"
    name = (node.name or "").lower()
    f.show_param = name
    if name == "server_version":
        f.local_answer = LocalAnswer("SHOW", ("server_version",), ((SERVER_VERSION,),))
    elif name == "server_version_num":
        f.local_answer = LocalAnswer("SHOW", ("server_version_num",), ((SERVER_VERSION_NUM,),))
    elif name in _REMOVED_SETTINGS:
        f.refuse("show-parameter",
                 Refusal(UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"'))


# --- tables and types ------------------------------------------------------------------------

# DSQL's stored column types (PostgreSQL's internal names) and the names PostgreSQL displays for
# them (format_type), which is how DSQL names a type in its messages ("datatype integer[] ...").
_SUPPORTED_TYPES: dict[str, str] = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
    "float8": "double precision", "numeric": "numeric", "bpchar": "character",
    "varchar": "character varying", "text": "text", "date": "date",
    "time": "time without time zone", "timetz": "time with time zone",
    "timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone",
    "interval": "interval", "bool": "boolean", "bytea": "bytea", "uuid": "uuid", "json": "json",
    "jsonb": "jsonb",
}
# Built-in types DSQL refuses as columns: "datatype <name> not supported". Recorded for money,
# xml, inet, cidr, macaddr, point, line, lseg, box, path, polygon, circle, tsvector, tsquery,
# int4range, tsrange, bit, text[]; the documentation's allow-list above implies the rest.
_REFUSED_TYPES: dict[str, str] = {
    name: name for name in (
        "money", "xml", "inet", "cidr", "macaddr", "macaddr8", "point", "line", "lseg", "box",
        "path", "polygon", "circle", "tsvector", "tsquery", "int4range", "int8range", "numrange",
        "tsrange", "tstzrange", "daterange", "int4multirange", "int8multirange",
        "nummultirange", "tsmultirange", "tstzmultirange", "datemultirange", "bit", "pg_lsn",
        "txid_snapshot", "pg_snapshot", "jsonpath", "name", "oid", "xid", "xid8", "cid", "tid",
        "regclass", "regproc", "regprocedure", "regoper", "regoperator", "regtype", "regrole",
        "regnamespace", "regconfig", "regdictionary", "regcollation", "refcursor", "aclitem",
        "int2vector", "oidvector", "gtsvector", "pg_node_tree")
} | {"varbit": "bit varying", "char": '"char"'}
_SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


def _builtin_type(type_name: ast.TypeName | None) -> str | None:
    """PostgreSQL's internal name of a built-in type, or None for user types and %TYPE."""
    if type_name is None or type_name.pct_type:
        return None
    names = _string_names(type_name.names)
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1]
    return None


def _type_display(type_name: ast.TypeName) -> str:
    internal = _builtin_type(type_name)
    if internal is not None:
        return _SUPPORTED_TYPES.get(internal) or _REFUSED_TYPES.get(internal) or internal
    names = _string_names(type_name.names)
    return names[-1] if names else "?"


def _column_type_refusal(type_name: ast.TypeName | None) -> tuple[str, Refusal] | None:
    if type_name is None:
        return None
    internal = _builtin_type(type_name)
    if internal in _SERIAL_TYPES and not type_name.arrayBounds:
        # DSQL has no serial pseudo-types, so the type lookup itself fails.
        return "serial", Refusal(UNDEFINED_OBJECT, f'type "{internal}" does not exist')
    if type_name.arrayBounds:
        return "column-type", _f(f"datatype {_type_display(type_name)}[] not supported")
    if internal is not None and internal in _REFUSED_TYPES:
        return "column-type", _f(f"datatype {_REFUSED_TYPES[internal]} not supported")
    return None


def _cache_ok(options: Iterable[Any] | None) -> bool:
    # DSQL requires an explicit sequence cache of exactly 1 or at least 65536.
    cache = _defelems(options).get("cache")
    if cache is None:
        return False
    value = _const_value(cache.arg)
    return isinstance(value, int | float) and (value == 1 or value >= 65536)


def _identity(column: ast.ColumnDef) -> ast.Constraint | None:
    for c in column.constraints or ():
        if isinstance(c, ast.Constraint) and c.contype == ConstrType.CONSTR_IDENTITY:
            return c
    return None


def _identity_refusal(type_name: ast.TypeName | None, constraint: ast.Constraint,
                      f: _Facts) -> None:
    if not _cache_ok(constraint.options):
        f.refuse("identity-cache", _IDENTITY_CACHE)
        return
    internal = _builtin_type(type_name)
    if type_name is not None and internal in _SUPPORTED_TYPES and internal != "int8":
        f.refuse("identity-type", _f(f"datatype {_SUPPORTED_TYPES[internal]} not supported, "
                                     "identity column type must be bigint"))


_MAX_COLUMNS = 255
_MAX_KEY_COLUMNS = 8
_TOO_MANY_KEYS = Refusal(TOO_MANY_COLUMNS, "more than 8 column keys in an index are not supported")


def _create_table_clause(clause: str) -> Refusal:
    # Inferred wording: DSQL documents INHERITS, PARTITION and exclusion constraints as
    # unsupported for CREATE TABLE; this follows its recorded "... not supported for CREATE
    # TABLE" refusals.
    return _f(f"{clause} not supported for CREATE TABLE")


@_handles(ast.CreateStmt)
def _create_table(node: ast.CreateStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    persistence = node.relation.relpersistence if node.relation is not None else "p"
    if persistence == "t":
        f.refuse("temp-table", _f("TEMPORARY or TEMP table not supported for CREATE TABLE"))
    elif persistence == "u":
        f.refuse("unlogged-table", _f("UNLOGGED table not supported for CREATE TABLE"))
    if node.partbound is not None:
        f.refuse("partition", _create_table_clause("PARTITION OF"))
    if node.partspec is not None:
        f.refuse("partition", _create_table_clause("PARTITION BY"))
    if node.inhRelations:
        f.refuse("inherits", _create_table_clause("INHERITS"))
    if node.ofTypename is not None:
        f.refuse("typed-table", _create_table_clause("OF type"))
    columns = [e for e in node.tableElts or () if isinstance(e, ast.ColumnDef)]
    if len(columns) > _MAX_COLUMNS:
        f.refuse("column-limit", Refusal(TOO_MANY_COLUMNS, "tables can have at most 255 columns"))
    for column in columns:
        refused = _column_type_refusal(column.typeName)
        if refused is not None:
            f.refuse(*refused)
        identity = _identity(column)
        if identity is not None:
            _identity_refusal(column.typeName, identity, f)
    constraints = [e for e in node.tableElts or () if isinstance(e, ast.Constraint)]
    constraints += [c for col in columns for c in col.constraints or ()
                    if isinstance(c, ast.Constraint)]
    for c in constraints:
        if c.contype == ConstrType.CONSTR_EXCLUSION:
            f.refuse("exclusion-constraint", _create_table_clause("EXCLUDE constraint"))
        elif (c.contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE)
              and len(c.keys or ()) > _MAX_KEY_COLUMNS):
            f.refuse("key-columns", _TOO_MANY_KEYS)


# PostgreSQL 16's alter_table_type_to_string(): DSQL names a refused ALTER TABLE action with it,
# as in "unsupported ALTER TABLE ALTER COLUMN ... SET NOT NULL statement" (recorded for ADD
# CONSTRAINT, VALIDATE CONSTRAINT, SET DATA TYPE, SET NOT NULL, SET STATISTICS).
_AT = AlterTableType
_ALTER_TABLE_ACTIONS: dict[AlterTableType, str] = {
    _AT.AT_AddColumn: "ADD COLUMN", _AT.AT_AddColumnToView: "ADD COLUMN",
    _AT.AT_ColumnDefault: "ALTER COLUMN ... SET DEFAULT",
    _AT.AT_CookedColumnDefault: "ALTER COLUMN ... SET DEFAULT",
    _AT.AT_DropNotNull: "ALTER COLUMN ... DROP NOT NULL",
    _AT.AT_SetNotNull: "ALTER COLUMN ... SET NOT NULL",
    _AT.AT_DropExpression: "ALTER COLUMN ... DROP EXPRESSION",
    _AT.AT_SetStatistics: "ALTER COLUMN ... SET STATISTICS",
    _AT.AT_SetOptions: "ALTER COLUMN ... SET", _AT.AT_ResetOptions: "ALTER COLUMN ... RESET",
    _AT.AT_SetStorage: "ALTER COLUMN ... SET STORAGE",
    _AT.AT_SetCompression: "ALTER COLUMN ... SET COMPRESSION",
    _AT.AT_AddConstraint: "ADD CONSTRAINT", _AT.AT_AddIndexConstraint: "ADD CONSTRAINT",
    _AT.AT_AlterConstraint: "ALTER CONSTRAINT", _AT.AT_ValidateConstraint: "VALIDATE CONSTRAINT",
    _AT.AT_AlterColumnType: "ALTER COLUMN ... SET DATA TYPE",
    _AT.AT_AlterColumnGenericOptions: "ALTER COLUMN ... OPTIONS", _AT.AT_ChangeOwner: "OWNER TO",
    _AT.AT_ClusterOn: "CLUSTER ON", _AT.AT_DropCluster: "SET WITHOUT CLUSTER",
    _AT.AT_SetAccessMethod: "SET ACCESS METHOD", _AT.AT_SetLogged: "SET LOGGED",
    _AT.AT_SetUnLogged: "SET UNLOGGED", _AT.AT_DropOids: "SET WITHOUT OIDS",
    _AT.AT_SetTableSpace: "SET TABLESPACE", _AT.AT_SetRelOptions: "SET",
    _AT.AT_ResetRelOptions: "RESET", _AT.AT_EnableTrig: "ENABLE TRIGGER",
    _AT.AT_EnableAlwaysTrig: "ENABLE ALWAYS TRIGGER",
    _AT.AT_EnableReplicaTrig: "ENABLE REPLICA TRIGGER", _AT.AT_DisableTrig: "DISABLE TRIGGER",
    _AT.AT_EnableTrigAll: "ENABLE TRIGGER ALL", _AT.AT_DisableTrigAll: "DISABLE TRIGGER ALL",
    _AT.AT_EnableTrigUser: "ENABLE TRIGGER USER", _AT.AT_DisableTrigUser: "DISABLE TRIGGER USER",
    _AT.AT_EnableRule: "ENABLE RULE", _AT.AT_EnableAlwaysRule: "ENABLE ALWAYS RULE",
    _AT.AT_EnableReplicaRule: "ENABLE REPLICA RULE", _AT.AT_DisableRule: "DISABLE RULE",
    _AT.AT_AddInherit: "INHERIT", _AT.AT_DropInherit: "NO INHERIT", _AT.AT_AddOf: "OF",
    _AT.AT_DropOf: "NOT OF", _AT.AT_ReplicaIdentity: "REPLICA IDENTITY",
    _AT.AT_EnableRowSecurity: "ENABLE ROW SECURITY",
    _AT.AT_DisableRowSecurity: "DISABLE ROW SECURITY",
    _AT.AT_ForceRowSecurity: "FORCE ROW SECURITY",
    _AT.AT_NoForceRowSecurity: "NO FORCE ROW SECURITY", _AT.AT_GenericOptions: "OPTIONS",
    _AT.AT_AttachPartition: "ATTACH PARTITION", _AT.AT_DetachPartition: "DETACH PARTITION",
    _AT.AT_DetachPartitionFinalize: "DETACH PARTITION ... FINALIZE",
    _AT.AT_AddIdentity: "ALTER COLUMN ... ADD IDENTITY",
    _AT.AT_SetIdentity: "ALTER COLUMN ... SET",
    _AT.AT_DropIdentity: "ALTER COLUMN ... DROP IDENTITY",
}
# The actions DSQL's ALTER TABLE reference lists (2026-09). Anything else with a PostgreSQL 16
# name above is refused; PostgreSQL 17+ grammar (SET EXPRESSION) is left to the PostgreSQL 16
# backend, which rejects it as DSQL's PostgreSQL 16 grammar does.
_ALTER_TABLE_SUPPORTED = frozenset({
    _AT.AT_AddColumn, _AT.AT_DropColumn, _AT.AT_ColumnDefault, _AT.AT_DropNotNull,
    _AT.AT_DropExpression, _AT.AT_AddIdentity, _AT.AT_SetIdentity, _AT.AT_DropIdentity,
    _AT.AT_SetStorage, _AT.AT_AlterConstraint, _AT.AT_AddConstraint, _AT.AT_DropConstraint,
    _AT.AT_ChangeOwner, _AT.AT_ValidateConstraint,
})


def _alter_action_refusal(subtype: AlterTableType) -> Refusal:
    return _f(f"unsupported ALTER TABLE {_ALTER_TABLE_ACTIONS[subtype]} statement")


@_handles(ast.AlterTableStmt)
def _alter_table(node: ast.AlterTableStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    objtype = node.objtype
    if objtype == ObjectType.OBJECT_TYPE:
        # Inferred: ALTER TYPE ... ADD/DROP ATTRIBUTE, worded as the recorded ALTER TYPE refusal.
        f.refuse("alter-type", _f("ALTER TYPE not supported"))
        return
    if objtype != ObjectType.OBJECT_TABLE:
        return
    relation = _relation(node.relation)
    is_async = piece.async_token is not None
    cmds = [c for c in node.cmds or () if isinstance(c, ast.AlterTableCmd)]
    for cmd in cmds:
        subtype = cmd.subtype
        if subtype is None:
            continue
        if is_async and subtype != _AT.AT_ValidateConstraint and subtype in _ALTER_TABLE_ACTIONS:
            # Inferred: DSQL documents ASYNC only for VALIDATE CONSTRAINT.
            f.refuse("alter-table-async", _alter_action_refusal(subtype))
        elif subtype not in _ALTER_TABLE_SUPPORTED:
            if subtype in _ALTER_TABLE_ACTIONS:
                f.refuse("alter-table-action", _alter_action_refusal(subtype))
        elif subtype == _AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            column = cmd.def_
            if column.raw_default is not None or any(
                isinstance(c, ast.Constraint) and c.contype != ConstrType.CONSTR_NULL
                for c in column.constraints or ()
            ):
                f.refuse("alter-table-add-column", _ADD_COLUMN_CONSTRAINT)
            refused = _column_type_refusal(column.typeName)
            if refused is not None:
                f.refuse(*refused)
        elif subtype == _AT.AT_DropColumn and cmd.name:
            f.drop_columns.append((relation, cmd.name))
        elif subtype == _AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            _add_constraint(cmd.def_, relation, f)
        elif subtype == _AT.AT_ValidateConstraint and not is_async:
            f.refuse("alter-table-validate", _alter_action_refusal(subtype))
        elif subtype == _AT.AT_AddIdentity and isinstance(cmd.def_, ast.Constraint):
            if not _cache_ok(cmd.def_.options):
                f.refuse("identity-cache", _IDENTITY_CACHE)
        elif (subtype == _AT.AT_SetIdentity and isinstance(cmd.def_, tuple)
              and "cache" in _defelems(cmd.def_) and not _cache_ok(cmd.def_)):
            f.refuse("identity-cache", _IDENTITY_CACHE)
    if is_async and f.refusal is None and len(cmds) == 1 and cmds[0].name:
        f.job = AsyncJob(kind="validate_constraint", sql=_without_async(piece),
                         concurrent_sql=None, relation=relation, object_name=cmds[0].name,
                         tag="ALTER TABLE")


def _add_constraint(c: ast.Constraint, relation: Relation, f: _Facts) -> None:
    contype = c.contype
    refused = _f("unsupported ALTER TABLE ADD CONSTRAINT statement")
    if contype == ConstrType.CONSTR_UNIQUE and c.indexname:
        # Recorded: DSQL accepts UNIQUE USING INDEX and then checks the index is valid.
        f.adopt_indexes.append((relation, c.indexname))
    elif contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE,
                     ConstrType.CONSTR_EXCLUSION):
        # DSQL stores a table in primary-key order, so keys cannot be attached later.
        f.refuse("alter-table-add-constraint", refused)
    elif contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) and not c.skip_validation:
        f.refuse("alter-table-add-constraint", refused)


def _without_async(piece: _Piece) -> str:
    tok = piece.async_token
    if tok is None:
        return piece.text
    head = piece.text[:tok.start - piece.start].rstrip()
    tail = piece.text[tok.end + 1 - piece.start:].lstrip()
    return f"{head} {tail}"


@_handles(ast.IndexStmt)
def _index(node: ast.IndexStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    relation = _relation(node.relation)
    params = [p for p in node.indexParams or () if isinstance(p, ast.IndexElem)]
    f.index_columns = (relation, tuple(p.name for p in params if p.name))
    key_refusal: tuple[str, Refusal] | None = None
    # Recorded by DSQL's agent-skill reference: sort order and operator classes are refused.
    if any(p.ordering not in (None, SortByDir.SORTBY_DEFAULT) for p in params):
        key_refusal = ("index-sort-order",
                       _f("specifying sort order not supported for index keys"))
    elif any(p.opclass for p in params):
        key_refusal = ("index-opclass", _f("opclass not supported for index keys"))
    elif len(params) > _MAX_KEY_COLUMNS:
        key_refusal = ("key-columns", _TOO_MANY_KEYS)
    is_async = piece.async_token is not None
    if node.concurrent:
        f.refuse("index-concurrently", _f("CONCURRENTLY not supported for CREATE INDEX"))
        return
    if not is_async:
        f.refuse("sync-index", _SYNC_INDEX)
        # DSQL builds an index synchronously only on an empty table in a session that set
        # disable_sync_create_index to off; the proxy decides that against its catalog.
        f.waiver = "sync_index_on_empty_table"
        if key_refusal is not None:
            f.waiver_rule, f.refusal_if_waived = key_refusal
        return
    if key_refusal is not None:
        f.refuse(*key_refusal)
        return
    plain = _without_async(piece)
    tok = piece.async_token
    assert tok is not None
    concurrent = (piece.text[:tok.start - piece.start] + "CONCURRENTLY"
                  + piece.text[tok.end + 1 - piece.start:])
    f.job = AsyncJob(kind="index_build", sql=plain, concurrent_sql=concurrent,
                     relation=relation, object_name=node.idxname, tag="CREATE INDEX",
                     unique=bool(node.unique), if_not_exists=bool(node.if_not_exists))


def _qualified_async_index_name(piece: _Piece) -> bool:
    names = [t.name for t in piece.tokens]
    try:
        pos = names.index("INDEX") + 2
    except ValueError:
        return False
    if names[pos:pos + 3] == ["IF_P", "NOT", "EXISTS"]:
        pos += 3
    return pos + 1 < len(names) and names[pos] != "ON" and names[pos + 1] == "ASCII_46"


@_handles(ast.CreateSeqStmt, ast.AlterSeqStmt)
def _sequence(node: ast.CreateSeqStmt | ast.AlterSeqStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    options = _defelems(node.options)
    creating = isinstance(node, ast.CreateSeqStmt)
    if (creating or "cache" in options) and not _cache_ok(node.options):
        # ALTER SEQUENCE ... CACHE n is inferred to answer with the recorded CREATE wording.
        f.refuse("sequence-cache", _SEQUENCE_CACHE)
        return
    as_type = options.get("as")
    if as_type is not None and isinstance(as_type.arg, ast.TypeName):
        internal = _builtin_type(as_type.arg)
        if internal in _SUPPORTED_TYPES and internal != "int8":
            # Inferred wording, after the recorded identity-column refusal: DSQL sequences are
            # bigint only.
            f.refuse("sequence-type", _f(f"datatype {_SUPPORTED_TYPES[internal]} not supported, "
                                         "sequence type must be bigint"))


@_handles(ast.CreateFunctionStmt)
def _create_function(node: ast.CreateFunctionStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    if node.is_procedure:
        f.refuse("procedure", _f("PROCEDURE is not supported"))
        return
    language = _defelems(node.options).get("language")
    name = _const_value(language.arg) if language is not None else None
    if isinstance(name, str) and name.lower() != "sql":
        f.refuse("function-language",
                 _f(f"CREATE FUNCTION with language {name.lower()} not supported"))


@_handles(ast.CreateTrigStmt)
def _create_trigger(node: ast.CreateTrigStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    f.refuse("trigger", _f("CREATE TRIGGER not supported"))


@_handles(ast.CreateEnumStmt, ast.DefineStmt)
def _create_type(node: ast.Node, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    if isinstance(node, ast.DefineStmt) and node.kind != ObjectType.OBJECT_TYPE:
        # Inferred: aggregates, operators, collations and text search objects, in the generic
        # "unsupported statement: <node tag>" wording.
        f.refuse("unsupported-statement", _f("unsupported statement: Define"))
        return
    f.refuse("create-type", _f("CREATE TYPE not supported"))


@_handles(ast.AlterEnumStmt, ast.AlterTypeStmt)
def _alter_type(node: ast.Node, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    f.refuse("alter-type", _f("ALTER TYPE not supported"))


# DROP of an object kind DSQL does not have. Recorded for TYPE; the rest inferred to share it.
_DROP_REFUSED = frozenset({
    ObjectType.OBJECT_TYPE, ObjectType.OBJECT_EXTENSION, ObjectType.OBJECT_TRIGGER,
    ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_FOREIGN_TABLE, ObjectType.OBJECT_FOREIGN_SERVER,
    ObjectType.OBJECT_FDW, ObjectType.OBJECT_EVENT_TRIGGER, ObjectType.OBJECT_LANGUAGE,
    ObjectType.OBJECT_CONVERSION, ObjectType.OBJECT_CAST, ObjectType.OBJECT_OPCLASS,
    ObjectType.OBJECT_OPFAMILY, ObjectType.OBJECT_OPERATOR, ObjectType.OBJECT_AGGREGATE,
    ObjectType.OBJECT_TRANSFORM, ObjectType.OBJECT_ACCESS_METHOD, ObjectType.OBJECT_PUBLICATION,
    ObjectType.OBJECT_RULE, ObjectType.OBJECT_POLICY, ObjectType.OBJECT_TSCONFIGURATION,
    ObjectType.OBJECT_TSDICTIONARY, ObjectType.OBJECT_TSPARSER, ObjectType.OBJECT_TSTEMPLATE,
    ObjectType.OBJECT_COLLATION, ObjectType.OBJECT_PROCEDURE,
})


@_handles(ast.DropStmt)
def _drop(node: ast.DropStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    if node.removeType in _DROP_REFUSED:
        f.refuse("drop-object", _f("unsupported object in DROP statement"))


@_handles(ast.RenameStmt)
def _rename(node: ast.RenameStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    if node.renameType in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_ATTRIBUTE):
        f.refuse("rename-object", _f("unsupported object in RENAME statement"))


@_handles(ast.AlterOwnerStmt, ast.AlterObjectSchemaStmt)
def _alter_object(node: ast.AlterOwnerStmt | ast.AlterObjectSchemaStmt, f: _Facts,
                  piece: _Piece) -> None:
    f.kind = "ddl"
    if node.objectType == ObjectType.OBJECT_TYPE:
        f.refuse("alter-type", _f("ALTER TYPE not supported"))


@_handles(ast.VacuumStmt)
def _vacuum(node: ast.VacuumStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    if node.is_vacuumcmd:
        f.refuse("vacuum", _f("unsupported VACUUM statement"))


# Schemas DSQL owns: granting on them answers "feature not supported on system entity"
# (recorded for GRANT USAGE ON SCHEMA public).
_SYSTEM_SCHEMAS = frozenset({"public", "pg_catalog", "information_schema", "sys"})


@_handles(ast.GrantStmt)
def _grant(node: ast.GrantStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    objtype = node.objtype
    if objtype == ObjectType.OBJECT_DATABASE:
        # From DSQL's earlier unsupported-features page; the SQLSTATE is inferred.
        f.refuse("grant-object", _f("unsupported object type in GRANT"))
    elif objtype == ObjectType.OBJECT_SCHEMA and any(
            name in _SYSTEM_SCHEMAS for name in _string_names(node.objects)):
        f.refuse("system-entity", _f("feature not supported on system entity"))


@_handles(ast.CreateSchemaStmt)
def _create_schema(node: ast.CreateSchemaStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    for element in node.schemaElts or ():
        inner = _inner_facts(element, piece)
        if inner.refusal is not None:
            f.refuse(inner.rule or "unsupported-statement", inner.refusal)


# --- expression-level checks and rewrites ----------------------------------------------------

_ADVISORY_LOCKS = frozenset({
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
})
# Geometric types DSQL refuses even at runtime (recorded for line(); circle documented).
_RUNTIME_REFUSED_TYPES = frozenset({"line", "circle"})
# Functions whose leading regconfig argument names a text search configuration, by the argument
# count at which it is present. DSQL installs no configurations.
_TS_CONFIG_ARITY: dict[str, int] = {
    "to_tsvector": 2, "to_tsquery": 2, "plainto_tsquery": 2, "phraseto_tsquery": 2,
    "websearch_to_tsquery": 2, "ts_headline": 3, "json_to_tsvector": 3, "jsonb_to_tsvector": 3,
}


def _function_name(names: tuple[str, ...]) -> str | None:
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1]
    return None


def _ts_config_refusal(name: str) -> Refusal:
    return Refusal(UNDEFINED_OBJECT, f'text search configuration "{name}" does not exist')


class _Rewrite(NamedTuple):
    parent: ast.Node
    attr: str
    path: tuple[int, ...]
    node: ast.FuncCall
    value: str
    column: str


_CHILD_SLOTS: dict[type, tuple[str, ...]] = {}


def _child_slots(cls: type) -> tuple[str, ...]:
    slots = _CHILD_SLOTS.get(cls)
    if slots is None:
        info: dict[str, Any] = getattr(cls, "__slots__", {})
        slots = tuple(name for name, spec in info.items()
                      if str(getattr(spec, "c_type", "")).endswith("*")
                      and getattr(spec, "c_type", "") != "char*")
        _CHILD_SLOTS[cls] = slots
    return slots


def _scan_tree(root: ast.Node, f: _Facts) -> list[_Rewrite]:
    """Walk the whole tree without recursion (trees can be thousands of levels deep)."""
    rewrites: list[_Rewrite] = []
    strengths: set[LockClauseStrength] = set()
    is_call = isinstance(root, ast.CallStmt)
    stack: list[tuple[Any, Any, str, tuple[int, ...]]] = [(root, None, "", ())]
    while stack:
        node, parent, attr, path = stack.pop()
        if isinstance(node, tuple):
            for i in range(len(node) - 1, -1, -1):
                item = node[i]
                if isinstance(item, ast.Node | tuple):
                    stack.append((item, parent, attr, (*path, i)))
            continue
        cls = type(node)
        if cls is ast.FuncCall:
            _check_function(node, parent, attr, path, f, rewrites)
        elif cls is ast.TypeCast:
            _check_cast(node, f)
        elif cls is ast.LockingClause:
            strengths.add(node.strength)
        elif cls is ast.RangeTableSample:
            f.refuse("tablesample", _f("TABLESAMPLE clause not supported"))
        elif cls is ast.CommonTableExpr:
            if isinstance(node.ctequery, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt
                          | ast.MergeStmt):
                f.dml_cte = True
        elif cls is ast.MergeStmt and node is not root:
            f.refuse("merge", _f("unsupported statement type: MERGE"))
        elif cls is ast.SubLink and is_call:
            f.refuse("call-subquery", _f("cannot use subquery in CALL argument"))
        for name in reversed(_child_slots(cls)):
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple):
                stack.append((value, node, name, ()))
    if LockClauseStrength.LCS_FORSHARE in strengths or (
            LockClauseStrength.LCS_FORNOKEYUPDATE in strengths):
        f.refuse("locking-clause", _LOCKING)
    if f.kind == "select" and f.dml_cte:
        f.kind = "dml"
        f.writes_rows = True
    if f.kind in ("select", "dml") or f.explain_analyze or isinstance(root, ast.DeclareCursorStmt):
        if LockClauseStrength.LCS_FORUPDATE in strengths:
            f.locking = "for_update"
        elif LockClauseStrength.LCS_FORKEYSHARE in strengths:
            f.locking = "for_key_share"
    return rewrites if f.refusal is None else []


def _check_function(node: ast.FuncCall, parent: Any, attr: str, path: tuple[int, ...],
                    f: _Facts, rewrites: list[_Rewrite]) -> None:
    name = _function_name(_string_names(node.funcname))
    if name is None:
        return
    args = node.args or ()
    if name in _ADVISORY_LOCKS:
        f.refuse("advisory-lock", _f(f"function {name} not supported"))
    elif name in _RUNTIME_REFUSED_TYPES:
        f.refuse("geometric-type", _f(f"datatype {name} not supported"))
    elif name in _TS_CONFIG_ARITY and len(args) >= _TS_CONFIG_ARITY[name]:
        config = args[0]
        while isinstance(config, ast.TypeCast):
            config = config.arg
        value = _const_value(config) if isinstance(config, ast.A_Const) else None
        if isinstance(value, str):
            f.refuse("text-search-config", _ts_config_refusal(value))
    elif isinstance(parent, ast.RangeFunction):
        return
    elif name == "version" and not args and not node.agg_star:
        rewrites.append(_Rewrite(parent, attr, path, node, VERSION_STRING, "version"))
    elif name == "current_setting" and 1 <= len(args) <= 2:
        setting = _const_value(args[0]) if isinstance(args[0], ast.A_Const) else None
        if isinstance(setting, str) and setting.lower() == "server_version":
            rewrites.append(_Rewrite(parent, attr, path, node, SERVER_VERSION, "current_setting"))
        elif isinstance(setting, str) and setting.lower() == "server_version_num":
            rewrites.append(
                _Rewrite(parent, attr, path, node, SERVER_VERSION_NUM, "current_setting"))


def _check_cast(node: ast.TypeCast, f: _Facts) -> None:
    internal = _builtin_type(node.typeName)
    if internal in _RUNTIME_REFUSED_TYPES:
        f.refuse("geometric-type", _f(f"datatype {internal} not supported"))
    elif internal == "regconfig" and isinstance(node.arg, ast.A_Const):
        value = _const_value(node.arg)
        if isinstance(value, str):
            f.refuse("text-search-config", _ts_config_refusal(value))


def _apply_rewrites(root: ast.Node, rewrites: list[_Rewrite]) -> str | None:
    """Replace version()/current_setting('server_version...') by DSQL's constants.

    The rewritten statement is deparsed so PostgreSQL still produces the result, the column
    names (an alias keeps the name the call would have given) and the command tag.
    """
    from pglast.stream import RawStream

    replaced = {id(r.node): r for r in rewrites}
    for target in _output_targets(root):
        if target.name is None:
            source = target.val
            while isinstance(source, ast.TypeCast | ast.CollateClause):
                source = source.arg
            match = replaced.get(id(source))
            if match is not None:
                target.name = match.column
    for r in rewrites:
        constant = ast.TypeCast(arg=ast.A_Const(val=ast.String(sval=r.value)),
                                typeName=ast.TypeName(names=(ast.String(sval="text"),)))
        _replace_child(r.parent, r.attr, r.path, constant)
    try:
        return str(RawStream()(root))
    except Exception as exc:  # pglast cannot print every tree; PostgreSQL then runs the original
        log.debug("cannot deparse a rewritten statement: %r", exc)
        return None


def _output_targets(root: ast.Node) -> Iterable[ast.ResTarget]:
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        if isinstance(node, ast.SelectStmt):
            for target in node.targetList or ():
                if isinstance(target, ast.ResTarget):
                    yield target
        elif isinstance(node, ast.ReturningClause):
            for target in node.exprs or ():
                if isinstance(target, ast.ResTarget):
                    yield target
        for name in _child_slots(type(node)):
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple):
                stack.append(value)


def _replace_child(parent: Any, attr: str, path: tuple[int, ...], new: ast.Node) -> None:
    if not path:
        setattr(parent, attr, new)
        return

    def rebuild(container: tuple[Any, ...], index: tuple[int, ...]) -> tuple[Any, ...]:
        items = list(container)
        items[index[0]] = new if len(index) == 1 else rebuild(items[index[0]], index[1:])
        return tuple(items)

    setattr(parent, attr, rebuild(getattr(parent, attr), path))


# ---------------------------------------------------------------------------------------------
# Transaction rules (sans-I/O)
# ---------------------------------------------------------------------------------------------

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


__all__ = [
    "ABORTED",
    "AGE_LIMIT_EXCEEDED",
    "ALLOW",
    "ALLOWED_SETTINGS",
    "DDL_AND_DML",
    "DSQL_ONLY_SETTINGS",
    "MULTIPLE_DDL",
    "ROW_LIMIT",
    "ROW_LIMIT_EXCEEDED",
    "SERVER_VERSION",
    "SERVER_VERSION_NUM",
    "TRANSACTION_AGE_LIMIT",
    "VERSION_STRING",
    "Analysis",
    "AsyncJob",
    "CacheStats",
    "IamMapping",
    "Kind",
    "LocalAnswer",
    "Refusal",
    "Relation",
    "Statement",
    "TransactionRules",
    "Verdict",
    "WaitForJob",
    "analyze",
    "analyze_uncached",
    "cache_clear",
    "cache_stats",
    "setting_refusal",
]
