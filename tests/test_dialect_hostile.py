"""analyze() on hostile text: it must answer (often "unparsed"), never raise, never crash."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsqlkit.local.dialect import Analysis, analyze, analyze_uncached

MB = 1024 * 1024


def test_one_megabyte_expression_chain() -> None:
    # Converting this tree to Python recursively would overflow the C stack and kill the
    # process; libpg_query's serializer refuses it first.
    sql = "SELECT " + "1+" * (MB // 2) + "1"
    (stmt,) = analyze_uncached(sql).statements
    assert stmt.unparsed
    assert stmt.parse_error == "stack depth limit exceeded"


def test_chain_just_past_the_inline_limit() -> None:
    sql = "SELECT " + "1+" * 30_000 + "1"
    (stmt,) = analyze_uncached(sql).statements
    assert stmt.unparsed and stmt.refusal is None


def test_deep_chain_that_still_parses_is_walked_without_recursion() -> None:
    sql = "SELECT " + "1+" * 15_000 + "pg_advisory_lock(1)"
    (stmt,) = analyze_uncached(sql).statements
    assert not stmt.unparsed
    assert stmt.refusal is not None and stmt.refusal.message == (
        "function pg_advisory_lock not supported")


def test_deep_rewrite_falls_back_to_the_original_text() -> None:
    sql = "SELECT version()" + " || 'x'" * 3000
    (stmt,) = analyze_uncached(sql).statements
    assert not stmt.unparsed and stmt.refusal is None
    if stmt.rewritten is not None:
        assert "PostgreSQL 16" in stmt.rewritten


@pytest.mark.parametrize("sql", [
    "SELECT " + "(" * 100_000 + "1" + ")" * 100_000,
    "SELECT " + "abs(" * 20_000 + "1" + ")" * 20_000,
    "SELECT " + "(SELECT " * 10_000 + "1" + ")" * 10_000,
    "SELECT " + "CASE WHEN true THEN " * 10_000 + "1" + " END" * 10_000,
    "SELECT 1" + "::int" * 100_000,
    "SELECT " + "NOT " * 50_000 + "true",
    "SELECT " + "-" * 100_000 + "1",
    "SELECT ARRAY" + "[" * 20_000 + "1" + "]" * 20_000,
])
def test_deeply_nested_input_does_not_crash(sql: str) -> None:
    analysis = analyze_uncached(sql)
    assert len(analysis.statements) == 1


def test_one_megabyte_literal_and_comment() -> None:
    literal = analyze_uncached("SELECT '" + "x" * MB + "' AS big")
    assert literal.statements[0].kind == "select" and not literal.unparsed
    comment = analyze_uncached("/* " + "y" * MB + " */ TRUNCATE t")
    assert comment.statements[0].refusal is not None


def test_large_bulk_insert_counts_its_rows() -> None:
    rows = ",".join(f"({i}, 'name {i}', 12.5)" for i in range(3001))
    (stmt,) = analyze_uncached(f"INSERT INTO t (id, name, amount) VALUES {rows}").statements
    assert stmt.values_rows == 3001 and stmt.kind == "dml"


def test_many_statements() -> None:
    sql = "SELECT 1;" * 5000 + "TRUNCATE t"
    analysis = analyze_uncached(sql)
    assert len(analysis.statements) == 5001
    assert analysis.statements[-1].refusal is not None


def test_concurrent_large_statements() -> None:
    results: list[Analysis] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(analyze_uncached(f"SELECT {i} + " + "1+" * 5_000 + "1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8 and all(r.statements[0].kind == "select" for r in results)


@pytest.mark.parametrize("sql", [
    "SELECT 1\x00; TRUNCATE t",
    "\x00",
    "SELECT '\ud800'",
    "SELECT 1; SELECT \udcff",
])
def test_nul_and_invalid_utf8(sql: str) -> None:
    analysis = analyze(sql)
    assert analysis.unparsed
    assert all(s.refusal is None for s in analysis.statements)


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT 'abc", "unterminated quoted string"),
    ('SELECT "abc', "unterminated quoted identifier"),
    ("SELECT $$abc", "unterminated dollar-quoted string"),
    ("SELECT 1 /* never closed", "unterminated /* comment"),
    ("SELECT E'\\", "unterminated quoted string"),
    ("SELECT B'0101", "unterminated bit string literal"),
    ("SELECT X'ab", "unterminated hexadecimal string literal"),
])
def test_unterminated_tokens(sql: str, message: str) -> None:
    analysis = analyze(sql)
    assert analysis.unparsed
    assert message in (analysis.statements[-1].parse_error or "")


@pytest.mark.parametrize("sql", ["", " \n\t ", "--", "-- just a comment", "/**/", ";", ";;;"])
def test_nothing_to_run(sql: str) -> None:
    assert [s.kind for s in analyze(sql).statements] == ["empty"]


_FRAGMENTS = st.sampled_from([
    "SELECT", "INSERT", "INTO", "CREATE", "INDEX", "ASYNC", "ALTER", "TABLE", "AWS", "IAM",
    "GRANT", "TO", "FROM", "CALL", "sys.wait_for_job", "(", ")", ";", ",", "'", '"', "$$", "$a$",
    "--", "/*", "*/", "\n", " ", "1", "version()", "FOR", "SHARE", "UPDATE", "BEGIN", "ATOMIC",
    "END", "'arn:aws:iam::012345678912:role/x'", "\\", "::", "line", "e'", "U&", "\x00", "é",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FRAGMENTS, max_size=30).map(" ".join) | st.text(max_size=200))
def test_analyze_never_raises(sql: str) -> None:
    analysis = analyze_uncached(sql)
    assert analysis.statements
    for stmt in analysis.statements:
        assert 0 <= stmt.start <= stmt.end <= len(sql)
        if not stmt.unparsed and stmt.kind != "empty":
            assert sql[stmt.start:stmt.end] == stmt.text
    assert len(analysis.masked_text) == len(sql)
