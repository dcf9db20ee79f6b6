"""How many of the refusals a live DSQL cluster recorded ``dsqlkit check`` finds, and its false
alarms, on ../shared/conformance (copied in tests/data/conformance).

Scored: the steps of single-session, deterministic cases (not suspected DSQL bugs) that send one
statement outside a transaction block. A step is a refusal when the cluster answered an error
other than 40001 (concurrency) or class 23 (the data). Each case is checked as one script: its
setup statements, then its steps, so the checker sees what the case created. ``--dsql-lint``
also scores dsql-lint (each step alone; any diagnostic counts as found).

    .venv/bin/python bench/check_corpus.py [--dsql-lint] [--show]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsqlkit.check import check_sql
from dsqlkit.local.dialect import analyze

HERE = Path(__file__).resolve().parent.parent
CANDIDATES = [HERE.parent / "shared" / "conformance", HERE / "tests" / "data" / "conformance"]


@dataclass
class Step:
    case: str
    sql: str
    error: tuple[str, str] | None
    script: str
    line: int


@dataclass
class Score:
    statements: int = 0
    refusals: int = 0
    found: int = 0
    exact: int = 0
    false_alarms: int = 0
    missed: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)

    def line(self, who: str) -> str:
        return (f"{who}: {self.found} of {self.refusals} refusals found ({self.exact} with "
                f"DSQL's exact SQLSTATE and message), {self.false_alarms} false alarms, on "
                f"{self.statements} recorded statements")


def corpus() -> Path:
    for c in CANDIDATES:
        if any(c.glob("*.yaml")):
            return c
    raise SystemExit("conformance corpus not found")


def steps(directory: Path) -> list[Step]:
    found: list[Step] = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for case in doc["cases"]:
            found.extend(_case_steps(f"{doc['group']}/{case['name']}", case))
    return found


def _case_steps(name: str, case: dict[str, Any]) -> list[Step]:
    if (len({s.get("session", 1) for s in case["steps"]}) > 1
            or not case.get("deterministic", True) or case.get("suspected_dsql_bug")):
        return []
    lines = [f"{sql.rstrip().rstrip(';')};" for sql in case.get("setup") or ()]
    out: list[Step] = []
    in_block = False
    for step in case["steps"]:
        sql = step["sql"].strip()
        statements = [s for s in analyze(sql).statements if s.kind != "empty"]
        line = len(lines) + 1
        lines.append(sql.replace("\n", " ").rstrip(";") + ";")
        if len(statements) != 1:
            continue
        stmt = statements[0]
        was_in_block = in_block
        if stmt.tcl_action == "begin":
            in_block = True
        elif stmt.tcl_action in ("commit", "rollback"):
            in_block = False
        error = step["expect"].get("error")
        if was_in_block or stmt.kind == "tcl":
            continue
        if error and (error["sqlstate"] == "40001" or error["sqlstate"].startswith("23")):
            continue
        out.append(Step(name, sql, (error["sqlstate"], error["message"]) if error else None,
                        "", line))
    script = "\n".join(lines) + "\n"
    for s in out:
        s.script = script
    return out


def score_ours(all_steps: list[Step]) -> Score:
    score = Score()
    cache: dict[str, dict[int, list[tuple[str, str]]]] = {}
    for step in all_steps:
        if step.script not in cache:
            by_line: dict[int, list[tuple[str, str]]] = {}
            for f in check_sql(step.script):
                by_line.setdefault(f.line, []).append((f.sqlstate, f.message))
            cache[step.script] = by_line
        reported = cache[step.script].get(step.line, [])
        _tally(score, step, reported)
    return score


def _tally(score: Score, step: Step, reported: list[tuple[str, str]]) -> None:
    score.statements += 1
    if step.error is not None:
        score.refusals += 1
        if reported:
            score.found += 1
            score.exact += step.error in reported
        else:
            score.missed.append(f"{step.case}: {step.error[0]} {step.error[1]}")
    elif reported:
        score.false_alarms += 1
        score.alarms.append(f"{step.case}: {reported[0]}")


def score_dsql_lint(all_steps: list[Step]) -> Score | None:
    exe = shutil.which("dsql-lint") or str(Path(sys.executable).with_name("dsql-lint"))
    if not Path(exe).exists():
        return None
    score = Score()
    with tempfile.TemporaryDirectory() as tmp:
        for i, step in enumerate(all_steps):
            path = Path(tmp) / f"s{i}.sql"
            path.write_text(step.sql.rstrip(";") + ";\n")
            result = subprocess.run([exe, str(path)], capture_output=True, text=True,
                                    check=False, timeout=60)
            reported = [("?", line) for line in (result.stdout + result.stderr).splitlines()
                        if " — " in line and ("ERROR" in line or "WARNING" in line)]
            _tally(score, step, reported)
    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsql-lint", action="store_true", help="score dsql-lint too")
    parser.add_argument("--show", action="store_true", help="list misses and false alarms")
    args = parser.parse_args()
    all_steps = steps(corpus())
    ours = score_ours(all_steps)
    print(ours.line("dsqlkit check"))
    if args.show:
        for m in ours.missed:
            print(f"  missed: {m}")
        for a in ours.alarms:
            print(f"  false alarm: {a}")
    if args.dsql_lint:
        lint = score_dsql_lint(all_steps)
        print("dsql-lint: not installed" if lint is None else lint.line(
            "dsql-lint (errors and warnings)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
