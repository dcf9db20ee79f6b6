"""TransactionRules: DSQL's per-transaction rules as a state machine, driven without a database."""

from __future__ import annotations

import pytest

from dsqlkit.local.dialect import (
    ABORTED,
    AGE_LIMIT_EXCEEDED,
    DDL_AND_DML,
    MULTIPLE_DDL,
    ROW_LIMIT_EXCEEDED,
    Refusal,
    Statement,
    TransactionRules,
    Verdict,
    analyze,
)


def s(sql: str) -> Statement:
    (stmt,) = analyze(sql).statements
    return stmt


BEGIN, COMMIT, ROLLBACK = s("BEGIN"), s("COMMIT"), s("ROLLBACK")
CREATE_A, CREATE_B = s("CREATE TABLE a (id int)"), s("CREATE TABLE b (id int)")
INSERT, SELECT = s("INSERT INTO a (id) VALUES (1)"), s("SELECT 1")
GRANT = s("GRANT SELECT ON a TO app")
IAM = s("AWS IAM GRANT app TO 'arn:aws:iam::012345678912:role/app'")
TRUNCATE = s("TRUNCATE a")


def run(rules: TransactionRules, stmt: Statement, rows: int = 0) -> Refusal | None:
    """Check, then (if allowed) record success; the first error either step produced."""
    verdict = rules.check(stmt)
    if verdict.refusal is not None:
        return verdict.refusal
    return rules.completed(stmt, rows=rows)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_autocommit_statements_are_independent() -> None:
    rules = TransactionRules()
    assert run(rules, CREATE_A) is None
    assert run(rules, CREATE_B) is None
    assert run(rules, INSERT) is None
    assert run(rules, GRANT) is None
    assert rules.transaction_status == "I"


@pytest.mark.parametrize(("first", "second", "error"), [
    (CREATE_A, CREATE_B, MULTIPLE_DDL),
    (CREATE_A, GRANT, MULTIPLE_DDL),
    (GRANT, IAM, MULTIPLE_DDL),
    (CREATE_A, INSERT, DDL_AND_DML),
    (INSERT, CREATE_A, DDL_AND_DML),
    (s("WITH d AS (DELETE FROM a RETURNING 1) SELECT 1"), CREATE_A, DDL_AND_DML),
    (CREATE_A, s("COPY a FROM STDIN"), DDL_AND_DML),
    (CREATE_A, s("EXPLAIN ANALYZE UPDATE a SET id = 2"), DDL_AND_DML),
])
def test_explicit_block_rules(first: Statement, second: Statement, error: Refusal) -> None:
    rules = TransactionRules()
    assert run(rules, BEGIN) is None
    assert run(rules, first) is None
    assert rules.check(second) == Verdict(error)
    assert rules.failed and rules.transaction_status == "E"


@pytest.mark.parametrize("neutral", [
    SELECT, s("SELECT * FROM a WHERE id = 1 FOR UPDATE"), s("SHOW search_path"),
    s("SET search_path TO app"), s("EXPLAIN SELECT 1"), s("ANALYZE a"),
])
def test_reads_and_settings_mix_with_ddl(neutral: Statement) -> None:
    rules = TransactionRules()
    for stmt in (BEGIN, neutral, CREATE_A, neutral, COMMIT):
        assert run(rules, stmt) is None
    assert rules.transaction_status == "I"


def test_one_ddl_per_transaction_resets_after_commit_and_rollback() -> None:
    rules = TransactionRules()
    for stmt in (BEGIN, CREATE_A, COMMIT, BEGIN, CREATE_B, ROLLBACK, BEGIN, INSERT, COMMIT):
        assert run(rules, stmt) is None


def test_failed_block_answers_25p02_before_anything_else() -> None:
    rules = TransactionRules()
    assert run(rules, BEGIN) is None
    assert rules.check(TRUNCATE).refusal == Refusal("0A000", "unsupported statement: Truncate")
    assert rules.check(SELECT) == Verdict(ABORTED)
    # Even a statement DSQL refuses on its own gets 25P02 first.
    assert rules.check(TRUNCATE) == Verdict(ABORTED)
    assert rules.check(s("SAVEPOINT x")) == Verdict(ABORTED)
    assert rules.check(ROLLBACK) == Verdict()
    rules.completed(ROLLBACK)
    assert rules.transaction_status == "I"
    assert run(rules, SELECT) is None


def test_commit_of_a_failed_block_answers_rollback() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    rules.check(s("SET TRANSACTION READ ONLY"))
    verdict = rules.check(s("END"))
    assert verdict.allowed and verdict.commit_as_rollback
    rules.completed(s("END"))
    assert not rules.in_block
    assert run(rules, CREATE_A) is None


def test_rollback_to_in_a_failed_block_is_refused_as_itself() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    rules.errored(INSERT)
    assert rules.check(s("ROLLBACK TO SAVEPOINT x")).refusal == Refusal(
        "0A000", "unsupported transaction statement: ROLLBACK TO")
    assert rules.failed


def test_backend_error_fails_the_block() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    assert rules.check(INSERT).allowed
    rules.errored(INSERT)
    assert rules.check(SELECT) == Verdict(ABORTED)


def test_error_at_commit_ends_the_block() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    run(rules, INSERT)
    assert rules.check(COMMIT).allowed
    rules.errored(COMMIT)  # e.g. 40001 OC000 at COMMIT
    assert not rules.in_block
    assert run(rules, SELECT) is None


def test_refusal_outside_a_block_leaves_no_trace() -> None:
    rules = TransactionRules()
    assert run(rules, TRUNCATE) is not None
    assert rules.transaction_status == "I"
    assert run(rules, SELECT) is None


def test_row_limit_is_inclusive_at_3000() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    assert run(rules, INSERT, rows=3000) is None
    assert run(rules, SELECT) is None
    assert run(rules, ROLLBACK) is None


def test_row_limit_fires_at_the_crossing_statement() -> None:
    rules = TransactionRules()
    run(rules, BEGIN)
    assert run(rules, INSERT, rows=2000) is None
    assert run(rules, s("UPDATE a SET id = 2"), rows=1000) is None
    assert run(rules, s("DELETE FROM a WHERE id = 9"), rows=1) == ROW_LIMIT_EXCEEDED
    assert rules.check(SELECT) == Verdict(ABORTED)
    assert rules.check(COMMIT).commit_as_rollback


def test_row_limit_applies_to_autocommit_statements_each() -> None:
    rules = TransactionRules()
    assert run(rules, INSERT, rows=3001) == ROW_LIMIT_EXCEEDED
    assert rules.transaction_status == "I"
    assert run(rules, INSERT, rows=3000) is None
    assert run(rules, INSERT, rows=3000) is None


def test_row_limit_counts_across_a_batch() -> None:
    rules = TransactionRules()
    rules.begin_batch()
    assert run(rules, INSERT, rows=1500) is None
    assert run(rules, INSERT, rows=1501) == ROW_LIMIT_EXCEEDED
    rules.end_batch()
    assert run(rules, INSERT, rows=3000) is None


def test_row_limit_can_be_disabled() -> None:
    rules = TransactionRules(row_limit=None)
    assert run(rules, INSERT, rows=10**6) is None


def test_multi_statement_query_is_one_implicit_transaction() -> None:
    rules = TransactionRules()
    rules.begin_batch()
    assert run(rules, CREATE_A) is None
    assert rules.check(CREATE_B) == Verdict(MULTIPLE_DDL)
    rules.end_batch()
    # The failure did not outlive the query.
    assert rules.transaction_status == "I"
    rules.begin_batch()
    assert run(rules, CREATE_A) is None
    assert rules.check(INSERT) == Verdict(DDL_AND_DML)
    rules.end_batch()


def test_commit_inside_a_batch_starts_a_new_implicit_transaction() -> None:
    rules = TransactionRules()
    rules.begin_batch()
    for stmt in (BEGIN, CREATE_A, COMMIT, INSERT, SELECT):
        assert run(rules, stmt) is None
    rules.end_batch()


def test_begin_inside_a_batch_keeps_what_ran_before_it() -> None:
    rules = TransactionRules()
    rules.begin_batch()
    assert run(rules, INSERT) is None
    assert run(rules, BEGIN) is None
    assert rules.check(CREATE_A) == Verdict(DDL_AND_DML)
    rules.end_batch()
    assert rules.failed  # an explicit block outlives its query


def test_async_index_inside_an_explicit_block_in_one_query() -> None:
    analysis = analyze("BEGIN; CREATE INDEX ASYNC i ON t (a); COMMIT")
    rules = TransactionRules()
    rules.begin_batch()
    for stmt in analysis.statements:
        assert run(rules, stmt) is None
    rules.end_batch()
    assert rules.transaction_status == "I"


def test_statements_after_a_failure_in_the_same_batch_are_a_caller_bug() -> None:
    rules = TransactionRules()
    rules.begin_batch()
    assert rules.check(TRUNCATE).refusal is not None
    with pytest.raises(RuntimeError, match="end_batch"):
        rules.check(SELECT)
    rules.end_batch()
    assert run(rules, SELECT) is None


def test_set_local_role_needs_a_block() -> None:
    rules = TransactionRules()
    set_role = s("SET LOCAL role app")
    assert rules.check(set_role).refusal == Refusal(
        "0A000", 'setting configuration parameter "role" not supported')
    rules.begin_batch()
    assert rules.check(set_role).refusal is not None
    rules.end_batch()
    run(rules, BEGIN)
    assert run(rules, set_role) is None


def test_waiver_lifts_the_synchronous_index_refusal() -> None:
    rules = TransactionRules()
    index = s("CREATE INDEX i ON t (a)")
    assert rules.check(index).refusal is not None
    assert rules.check(index, waive=True).allowed
    desc = s("CREATE INDEX i ON t (a DESC)")
    assert rules.check(desc, waive=True).refusal == Refusal(
        "0A000", "specifying sort order not supported for index keys")


def test_transaction_age_limit_at_the_next_statement() -> None:
    clock = Clock()
    rules = TransactionRules(clock=clock)
    run(rules, BEGIN)
    clock.now += 300
    assert run(rules, SELECT) is None
    clock.now += 65
    verdict = rules.check(SELECT)
    assert verdict.refusal == AGE_LIMIT_EXCEEDED
    assert verdict.detail == "Current transaction age 365s exceeds 300s"
    assert rules.check(COMMIT).commit_as_rollback


def test_transaction_age_limit_at_commit_ends_the_block() -> None:
    clock = Clock()
    rules = TransactionRules(clock=clock)
    run(rules, BEGIN)
    clock.now += 310
    verdict = rules.check(COMMIT)
    assert verdict.refusal == AGE_LIMIT_EXCEEDED
    assert not rules.in_block
    # ROLLBACK is always let through.
    run(rules, BEGIN)
    clock.now += 1000
    assert rules.check(ROLLBACK).allowed


def test_age_limit_only_applies_to_explicit_blocks_and_can_be_disabled() -> None:
    clock = Clock()
    rules = TransactionRules(clock=clock, age_limit=None)
    run(rules, BEGIN)
    clock.now += 10_000
    assert run(rules, SELECT) is None
