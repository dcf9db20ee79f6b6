"""dsqlkit check: the offline checker, through its Python API and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsqlkit.checker import Finding, check_sql

MIGRATION = """\
-- schema for the ledger
\\set ON_ERROR_STOP on
CREATE TABLE accounts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    balance numeric(18, 2) NOT NULL,
    tags text[]
);
CREATE INDEX accounts_balance ON accounts (balance);
CREATE INDEX ASYNC accounts_balance_async ON accounts (balance);
BEGIN;
CREATE TABLE audit (id uuid PRIMARY KEY, note text);
INSERT INTO audit VALUES (gen_random_uuid(), 'created');
SELECT 1;
TRUNCATE audit;
COMMIT;
"""


def rules_and_lines(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(f.rule, f.line) for f in findings]


def test_migration_findings() -> None:
    findings = check_sql(MIGRATION, filename="ledger.sql")
    assert rules_and_lines(findings) == [
        ("column-type", 3), ("sync-index", 8), ("ddl-dml-mix", 12), ("truncate", 14)]
    first = findings[0]
    assert (first.filename, first.column, first.sqlstate, first.message) == (
        "ledger.sql", 1, "0A000", "datatype text[] not supported")
    assert first.statement.startswith("CREATE TABLE accounts ( id uuid PRIMARY KEY")
    assert findings[2].message == "ddl and dml are not supported in the same transaction"


def test_clean_script() -> None:
    assert check_sql("CREATE TABLE t (id uuid PRIMARY KEY);\nINSERT INTO t VALUES ($1);\n") == []


def test_statements_after_a_failure_in_a_block_are_not_reported_twice() -> None:
    script = "BEGIN;\nTRUNCATE t;\nSELECT 1;\nINSERT INTO t VALUES (1);\nVACUUM t;\nROLLBACK;\n"
    assert rules_and_lines(check_sql(script)) == [("truncate", 2), ("vacuum", 5)]


def test_autocommit_statements_are_separate_transactions() -> None:
    assert check_sql("CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"
                     "INSERT INTO a VALUES (1);\n") == []


def test_one_ddl_per_transaction() -> None:
    findings = check_sql("BEGIN;\nCREATE TABLE a (id int);\nCREATE INDEX ASYNC i ON a (id);\n"
                         "COMMIT;\n")
    assert rules_and_lines(findings) == [("multiple-ddl", 3)]


def test_row_limit_from_values_lists() -> None:
    rows = ", ".join(f"({i})" for i in range(3001))
    findings = check_sql(f"INSERT INTO t VALUES {rows};\n")
    assert [(f.sqlstate, f.message, f.rule) for f in findings] == [
        ("54000", "transaction row limit exceeded", "row-limit")]
    rows = ", ".join(f"({i})" for i in range(2000))
    findings = check_sql(f"BEGIN;\nINSERT INTO t VALUES {rows};\nINSERT INTO t VALUES {rows};\n")
    assert rules_and_lines(findings) == [("row-limit", 3)]


def test_syntax_error_position() -> None:
    findings = check_sql("SELECT 1;\n\nSELECT *\n  FROM WHERE x;\n")
    assert [(f.rule, f.line, f.column, f.sqlstate) for f in findings] == [
        ("syntax-error", 4, 8, "42601")]
    assert findings[0].message == 'syntax error at or near "WHERE"'


def test_copy_data_and_meta_commands_are_psql_input() -> None:
    script = (
        "\\connect postgres\n"
        "COPY t (a, b) FROM stdin;\n"
        "1\tit's; TRUNCATE x\n"
        "\\N\t'unterminated\n"
        "\\.\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$\n"
        "\\not a meta-command inside a string\n"
        "$$;\n"
        "VACUUM t;\n"
    )
    assert rules_and_lines(check_sql(script)) == [("vacuum", 9)]


def test_set_and_isolation_statements() -> None:
    script = ("SET statement_timeout = 0;\nSET search_path TO app;\n"
              "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSAVEPOINT a;\n")
    assert rules_and_lines(check_sql(script)) == [
        ("set-parameter", 1), ("isolation-level", 3), ("savepoint", 4)]


def test_format() -> None:
    (finding,) = check_sql("  TRUNCATE t;", filename="x.sql")
    assert finding.format() == (
        "x.sql:1:3: 0A000 unsupported statement: Truncate [truncate, needs review]\n"
        "    TRUNCATE t\n"
        "    hint: DELETE FROM the table instead (DSQL counts the rows against its 3,000-row "
        "transaction limit)")


# --- command line ----------------------------------------------------------------------------


def dsqlkit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsqlkit", "check", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    clean = tmp_path / "clean.sql"
    clean.write_text("CREATE TABLE t (id uuid PRIMARY KEY);\nSELECT * FROM t;\n")
    dirty = tmp_path / "dirty.sql"
    dirty.write_text(MIGRATION)
    latin1 = tmp_path / "latin1.sql"
    latin1.write_bytes("SELECT 'caf\xe9';\n".encode("latin-1"))
    return {"clean": clean, "dirty": dirty, "latin1": latin1, "missing": tmp_path / "nope.sql",
            "dir": tmp_path}


def test_cli_clean_file(files: dict[str, Path]) -> None:
    result = dsqlkit(str(files["clean"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "0 statements Aurora DSQL would refuse (1 file checked)" in result.stderr


def test_cli_findings_text(files: dict[str, Path]) -> None:
    result = dsqlkit(str(files["clean"]), str(files["dirty"]))
    # text[] and TRUNCATE need review: exit 3.
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert lines[0] == (f"{files['dirty']}:3:1: 0A000 datatype text[] not supported "
                        "[column-type, needs review]")
    assert lines[1].startswith("    CREATE TABLE accounts (")
    assert (f"{files['dirty']}:14:1: 0A000 unsupported statement: Truncate "
            "[truncate, needs review]") in lines
    assert "4 statements Aurora DSQL would refuse (2 files checked)" in result.stderr


def test_cli_exit_codes(tmp_path: Path) -> None:
    cases = {"CREATE INDEX i ON t (a);\n": 1, "CREATE TEMP TABLE t (a int);\n": 3,
             "SELECT pg_advisory_lock(1);\n": 4, "SELECT 1;\n": 0}
    for sql, code in cases.items():
        path = tmp_path / "m.sql"
        path.write_text(sql)
        assert dsqlkit(str(path)).returncode == code, sql
    assert dsqlkit("--write", str(path)).returncode == 2


def test_cli_json(files: dict[str, Path]) -> None:
    result = dsqlkit("--format", "json", str(files["dirty"]))
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert (doc["schema_version"], doc["mode"]) == (2, "statement")
    findings = doc["files"][0]["findings"]
    assert [f["rule"] for f in findings] == [
        "column-type", "sync-index", "ddl-dml-mix", "truncate"]
    assert findings[1] == {
        "filename": str(files["dirty"]), "line": 8, "column": 1,
        "statement": "CREATE INDEX accounts_balance ON accounts (balance)", "sqlstate": "0A000",
        "message": "unsupported mode. please use CREATE INDEX ASYNC.", "rule": "sync-index",
        "label": "fixable", "hint": "CREATE INDEX ASYNC builds it as a job; wait with CALL "
        "sys.wait_for_job(job_id) before relying on it", "inferred": False, "basis": "statement"}
    assert findings[2]["basis"] == "transaction"


def test_cli_json_clean_has_no_findings(files: dict[str, Path]) -> None:
    result = dsqlkit("--format", "json", str(files["clean"]))
    assert result.returncode == 0
    assert json.loads(result.stdout)["files"] == [{"file": str(files["clean"]), "findings": []}]


@pytest.mark.parametrize("which", ["missing", "dir", "latin1"])
def test_cli_unreadable(files: dict[str, Path], which: str) -> None:
    result = dsqlkit(str(files["dirty"]), str(files[which]))
    assert result.returncode == 2
    assert f"cannot read {files[which]}" in result.stderr
    # The readable file was still checked.
    assert "unsupported statement: Truncate" in result.stdout


def test_cli_stdin() -> None:
    result = dsqlkit("-", stdin="LISTEN chan;\n")
    assert result.returncode == 3
    assert result.stdout.startswith(
        "-:1:1: 0A000 unsupported statement: Listen [listen-notify, needs review]")


def test_cli_is_registered() -> None:
    result = subprocess.run([sys.executable, "-m", "dsqlkit", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert "report the statements Aurora DSQL would refuse" in result.stdout


def test_cli_requires_a_file() -> None:
    result = dsqlkit()
    assert result.returncode == 2
    assert "FILE" in result.stderr
