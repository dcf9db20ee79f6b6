"""The local endpoint against behaviour recorded on a live Aurora DSQL cluster.

Every case in ../shared/conformance runs through real TLS connections with IAM tokens.
Cases marked ``deterministic: false`` depend on which of two in-flight transactions DSQL let
win (the first to COMMIT): the endpoint decides them as DSQL does, and they run ten times.
Cases marked ``suspected_dsql_bug`` record what looks like a cluster defect (a valid LATERAL
query refused by DSQL's planner), which the endpoint does not copy: they are reported.
"""

from __future__ import annotations

import psycopg
import pytest

from conformance import CaseResult, corpus_dir, load_cases, run_case, run_corpus
from dsqlkit.local import LocalDSQL

CORPUS = corpus_dir()


@pytest.fixture(scope="module")
def results() -> list[CaseResult]:
    if CORPUS is None:
        pytest.skip("conformance corpus not found (set DSQLKIT_CONFORMANCE_DIR)")
    with LocalDSQL(ephemeral=True, port=0) as ep:
        return run_corpus(CORPUS, lambda: psycopg.connect(ep.dsn(), autocommit=True))


def test_conformance(results: list[CaseResult], capsys: pytest.CaptureFixture[str]) -> None:
    required = [r for r in results if not r.suspected_dsql_bug]
    failed = [r for r in required if not r.passed]
    warnings = [r for r in results if not r.passed and r not in failed]
    passed = len(results) - len(failed) - len(warnings)
    with capsys.disabled():
        print(f"\nconformance: {passed} passed, {len(failed)} failed "
              f"({len(warnings)} not required: suspected DSQL bugs)")
        for r in warnings:
            print(f"  not required: {r.group}/{r.name}: {r.failures[0][:160]}")
    assert not failed, "\n".join(
        f"{r.group}/{r.name}:\n  " + "\n  ".join(r.failures) for r in failed)
    assert len(results) >= 190


def test_timing_dependent_cases_pass_ten_times_in_a_row(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The first committer wins every time, not by luck of timing."""
    if CORPUS is None:
        pytest.skip("conformance corpus not found (set DSQLKIT_CONFORMANCE_DIR)")
    cases = [(g, c) for g, c in load_cases(CORPUS) if c.get("deterministic") is False]
    assert len(cases) >= 8
    passed = 0
    failures: list[str] = []
    with LocalDSQL(ephemeral=True, port=0) as ep:
        for _ in range(10):
            for group, case in cases:
                result = run_case(group, case, lambda: psycopg.connect(ep.dsn(), autocommit=True))
                if result.passed:
                    passed += 1
                else:
                    failures.append(f"{group}/{case['name']}: {result.failures[0]}")
    with capsys.disabled():
        print(f"\ntiming-dependent conformance: {passed} of {10 * len(cases)} passed "
              f"({len(cases)} cases, 10 runs)")
    assert failures == []
