"""analyze(): split a text into statements, parse each once with libpg_query, and describe it
with the rule modules. Cached by text."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import fields
from typing import Any, NamedTuple

from pglast import ast, parser

# The rule modules register their handlers on import (ddl through the import below).
from dsqlkit.local.dialect import queries as _queries  # noqa: F401
from dsqlkit.local.dialect.ddl import _qualified_async_index_name
from dsqlkit.local.dialect.expressions import _apply_rewrites, _scan_tree
from dsqlkit.local.dialect.facts import (
    _DEFAULT_KINDS,
    _HANDLERS,
    _UNSUPPORTED_STATEMENTS,
    Token,
    _Facts,
    _is_word,
    _parse_error_parts,
    _Piece,
    _tok_text,
)
from dsqlkit.local.dialect.model import (
    DSQL_ONLY_SETTINGS,
    SETTING_RULES,
    Analysis,
    IamMapping,
    Refusal,
    Statement,
    _f,
)

log = logging.getLogger(__name__)


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
    # The tree is walked for refused statements too: their other refusals are worth reporting
    # (dsqlkit check), and only statements DSQL accepts are rewritten.
    rewrites = _scan_tree(node, facts)
    for text in facts.nested_sql:
        for inner in analyze(text).statements:
            for rule, refusal in inner.all_refusals:
                if rule in SETTING_RULES:
                    facts.refuse(rule, refusal)
    if rewrites and facts.refusal is None:
        rewritten = _apply_rewrites(node, rewrites)
    if facts.job is not None:
        rewritten = facts.job.sql
    found = {name: getattr(facts, name) for name in _STATEMENT_FACTS}
    found["drop_columns"] = tuple(facts.drop_columns)
    found["adopt_indexes"] = tuple(facts.adopt_indexes)
    found["refusals"] = tuple(facts.refusals)
    found["user_types"] = tuple(dict.fromkeys(facts.user_types))
    found["relations"] = tuple(facts.relations)
    if facts.kind == "ddl" and facts.refusal is None:
        found["ddl_created"], found["ddl_changed"] = _ddl_targets(node, facts.relations)
    return Statement(text=piece.text, start=piece.start, end=piece.end,
                     node=type(node).__name__, rewritten=rewritten, **found)


def _ddl_targets(node: ast.Node, relations: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tables a DDL creates, and those whose definition it changes (dropping included)."""
    if isinstance(node, ast.CreateStmt | ast.CreateSeqStmt | ast.ViewStmt):
        target = node.relation if isinstance(node, ast.CreateStmt) else (
            node.sequence if isinstance(node, ast.CreateSeqStmt) else node.view)
        if target is not None and target.relname:
            return (target.relname,), ()
    if isinstance(node, ast.DropStmt):
        names = []
        for obj in node.objects or ():
            parts = obj if isinstance(obj, tuple) else (obj,)
            last = parts[-1] if parts else None
            if isinstance(last, ast.String) and last.sval:
                names.append(last.sval)
        return (), tuple(names)
    if isinstance(node, ast.RenameStmt) and node.newname and node.relation is not None:
        return (node.newname,), tuple(relations)
    return (), tuple(relations)


# What a Statement takes over from the _Facts gathered for it: every field both declare.
_STATEMENT_FACTS = tuple(f.name for f in fields(_Facts)
                         if f.name in {g.name for g in fields(Statement)})

