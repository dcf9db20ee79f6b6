"""Replays ../shared/conformance (behaviour recorded on a live DSQL cluster) against an endpoint.

Each step is sent verbatim as one simple-protocol Query, on the session it names; outcomes
(SQLSTATE and message, or command tag, column names and rows in PostgreSQL's text form) are
compared exactly, as the corpus README specifies.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import pq

CORPUS_ENV = "DSQLKIT_CONFORMANCE_DIR"
STEP_TIMEOUT = 60.0


def corpus_dir() -> Path | None:
    """$DSQLKIT_CONFORMANCE_DIR, else ../shared/conformance beside the checkout, else the
    copy in tests/data/conformance."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get(CORPUS_ENV)]
    candidates += [str(p / "shared" / "conformance") for p in here.parents]
    candidates.append(str(here.parent / "data" / "conformance"))
    for c in candidates:
        if c and any(Path(c).glob("*.yaml")):
            return Path(c)
    return None


@dataclass
class Outcome:
    error: tuple[str, str] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CaseResult:
    group: str
    name: str
    deterministic: bool
    failures: list[str]
    suspected_dsql_bug: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(directory: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for case in doc.get("cases", []):
            yield doc["group"], case


def run_query(conn: psycopg.Connection[Any], sql: str) -> Outcome:
    """Send ``sql`` as one simple Query and collect every result in text form."""
    pgconn = conn.pgconn
    pgconn.send_query(sql.encode())
    # Wait in select(), never inside libpq: a blocking libpq call holds the GIL, and the
    # endpoint under test may be a thread of this very process.
    deadline = time.monotonic() + STEP_TIMEOUT
    while pgconn.flush():
        _wait(pgconn.socket, write=True, deadline=deadline)
    out = Outcome()
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, write=False, deadline=deadline)
            pgconn.consume_input()
        res = pgconn.get_result()
        if res is None:
            break
        if res.status == pq.ExecStatus.FATAL_ERROR:
            state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            msg = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            out.error = (state, msg)
            continue
        tag = (res.command_status or b"").decode()
        columns = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
        rows = []
        for r in range(res.ntuples):
            row = []
            for c in range(res.nfields):
                value = res.get_value(r, c)
                row.append(None if value is None else value.decode())
            rows.append(row)
        out.results.append({"tag": tag, "columns": columns, "rows": rows})
    return out


def _wait(fd: int, *, write: bool, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no answer within {STEP_TIMEOUT} s")
    if write:
        select.select([], [fd], [], remaining)
    else:
        select.select([fd], [], [], remaining)


def _rows_match(expected: list[list[Any]], actual: list[list[Any]]) -> bool:
    if len(expected) != len(actual):
        return False
    for erow, arow in zip(expected, actual, strict=True):
        if len(erow) != len(arow):
            return False
        for e, a in zip(erow, arow, strict=True):
            if e == "any":
                continue
            if e is None and a is None:
                continue
            if e is None or a is None or str(e) != a:
                return False
    return True


def _check_result(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    problems = []
    if "tag" in expected and expected["tag"] != actual["tag"]:
        problems.append(f"tag {actual['tag']!r} != {expected['tag']!r}")
    if "columns" in expected and expected["columns"] != actual["columns"]:
        problems.append(f"columns {actual['columns']} != {expected['columns']}")
    if "rows" in expected and not _rows_match(expected["rows"], actual["rows"]):
        problems.append(f"rows {actual['rows'][:5]} != {expected['rows'][:5]}")
    return problems


def compare(expect: dict[str, Any], got: Outcome) -> list[str]:
    if "error" in expect:
        want = (expect["error"]["sqlstate"], expect["error"]["message"])
        if got.error != want:
            return [f"expected error {want}, got {got.error or got.results}"]
        return []
    ok = expect.get("ok") or {}
    if got.error is not None:
        return [f"expected success, got error {got.error}"]
    if "results" in ok:
        if len(ok["results"]) != len(got.results):
            return [f"expected {len(ok['results'])} results, got {len(got.results)}"]
        problems = []
        for i, (e, a) in enumerate(zip(ok["results"], got.results, strict=True)):
            problems += [f"result {i}: {p}" for p in _check_result(e, a)]
        return problems
    if not got.results:
        return ["expected a result, got none"]
    return _check_result(ok, got.results[-1])


def run_case(
    group: str, case: dict[str, Any], connect: Callable[[], psycopg.Connection[Any]]
) -> CaseResult:
    failures: list[str] = []
    sessions: dict[int, psycopg.Connection[Any]] = {}
    try:
        with connect() as admin:
            for sql in case.get("setup", []):
                try:
                    run_query(admin, sql)
                except psycopg.Error:
                    pass
        for i, step in enumerate(case["steps"]):
            sid = int(step.get("session", 1))
            if sid not in sessions:
                sessions[sid] = connect()
            try:
                got = run_query(sessions[sid], step["sql"])
            except (psycopg.Error, TimeoutError) as exc:
                got = Outcome(error=("connection", str(exc)))
            for problem in compare(step["expect"], got):
                failures.append(f"step {i + 1} (session {sid}) {step['sql'][:80]!r}: {problem}")
    finally:
        for conn in sessions.values():
            conn.close()
        try:
            with connect() as admin:
                for sql in case.get("teardown", []):
                    try:
                        run_query(admin, sql)
                    except psycopg.Error:
                        pass
        except psycopg.Error:
            pass
    return CaseResult(group, case["name"], case.get("deterministic", True) is not False, failures,
                      bool(case.get("suspected_dsql_bug")))


def run_corpus(
    directory: Path, connect: Callable[[], psycopg.Connection[Any]]
) -> list[CaseResult]:
    return [run_case(group, case, connect) for group, case in load_cases(directory)]
