"""Run a script through DSQL's rules the way a migration runner sends it.

Modes (how the runner sends the file):

* ``statement``: one statement at a time, autocommit unless the file opens a block (``psql -f``,
  most runners);
* ``query``: the whole file as one simple Query (``psql -c``, runners that ``execute()`` a file):
  PostgreSQL runs it as one implicit transaction, so DSQL's one-DDL and no-DDL-with-DML rules
  span the file, as recorded for multi-statement queries;
* ``file``: one transaction per file (``psql -1``, Flyway, Rails and Alembic's per-migration
  transaction): a BEGIN before the first statement and a COMMIT after the last.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pglast import ast, parser

from dsqlkit.check.findings import Finding, Rule, rule
from dsqlkit.check.script import LineIndex, ScriptStatement, copy_rows, split_script
from dsqlkit.local.dialect import (
    ABORTED,
    Refusal,
    Statement,
    TransactionRules,
    analyze,
)

Mode = Literal["statement", "query", "file"]
MODES: Final = ("statement", "query", "file")

_EXCERPT_WIDTH = 80
_TRANSACTION_RULES = {
    "multiple ddl statements not supported in a transaction": "multiple-ddl",
    "ddl and dml are not supported in the same transaction": "ddl-dml-mix",
    "transaction row limit exceeded": "row-limit",
    'setting configuration parameter "role" not supported': "set-role",
}
_BEGIN = analyze("BEGIN").statements[0]
_COMMIT = analyze("COMMIT").statements[0]
# Roles every DSQL cluster has, and the role words GRANT/OWNER TO accept.
_BUILTIN_ROLES = frozenset({"admin", "public", "current_user", "session_user", "current_role"})


@dataclass
class ScriptState:
    """What a script has created so far that later statements may name."""

    types: set[str] = field(default_factory=set)
    enum_types: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Tables a later statement of the script creates (an index on one fails before then).
    created_later: set[str] = field(default_factory=set)

    def note(self, node: ast.Node | None, *, refused: bool) -> None:
        if isinstance(node, ast.CreateStmt) and node.relation is not None:
            # Passed, refused or not: what fails on it later follows from its own finding.
            self.created_later.discard(node.relation.relname or "")
        if isinstance(node, ast.CreateEnumStmt):
            self.enum_types.add(_last(node.typeName))
            return
        if refused or node is None:
            return
        if isinstance(node, ast.CreateDomainStmt):
            self.types.add(_last(node.domainname))
        elif isinstance(node, ast.CreateStmt) and node.relation is not None:
            self.types.add(node.relation.relname or "")
            self.columns[node.relation.relname or ""] = {
                c.colname or "": _last(c.typeName.names) for c in node.tableElts or ()
                if isinstance(c, ast.ColumnDef) and c.typeName is not None}
        elif isinstance(node, ast.ViewStmt) and node.view is not None:
            self.types.add(node.view.relname or "")
        elif isinstance(node, ast.CreateRoleStmt) and node.role:
            self.roles.add(node.role)


def _last(names: Sequence[object] | None) -> str:
    strings = [n.sval for n in names or () if isinstance(n, ast.String) and n.sval]
    return strings[-1] if strings else ""


def parse_node(text: str) -> ast.Node | None:
    """The statement's parse tree (DSQL's ASYNC keyword blanked), None if it does not parse."""
    try:
        raw = parser.parse_sql(_ASYNC.sub(r"\1", text, count=1))
    except parser.ParseError:
        return None
    if len(raw) != 1 or raw[0].stmt is None:
        return None
    node: ast.Node = raw[0].stmt
    return node


_ASYNC = re.compile(r"(?i)^(\s*create\s+(?:unique\s+)?index\s+|\s*alter\s+table\s+)async\b")
# The statements whose tree the script-level rules read (what they create, whom they name).
_SCRIPT_NODES = frozenset({"CreateDomainStmt", "CreateStmt", "ViewStmt", "CreateRoleStmt",
                           "CreateEnumStmt", "AlterOwnerStmt", "GrantStmt"})


def owner_roles(node: ast.Node | None) -> list[str]:
    """Roles an ALTER ... OWNER TO or GRANT ... TO names."""
    roles: list[ast.RoleSpec] = []
    if isinstance(node, ast.AlterTableStmt):
        roles = [c.newowner for c in node.cmds or ()
                 if isinstance(c, ast.AlterTableCmd) and c.newowner is not None]
    elif isinstance(node, ast.AlterOwnerStmt) and node.newowner is not None:
        roles = [node.newowner]
    elif isinstance(node, ast.GrantStmt) and node.is_grant:
        roles = [g for g in node.grantees or () if isinstance(g, ast.RoleSpec)]
    return [r.rolename for r in roles if r.rolename]


@dataclass
class Checked:
    """A script's statements and what the rules said about each (index-aligned)."""

    statements: list[ScriptStatement]
    findings: list[list[tuple[str, Refusal, str]]]  # (rule, refusal, basis) per statement
    nodes: dict[int, ast.Node | None] = field(default_factory=dict)

    def node(self, index: int) -> ast.Node | None:
        """The parse tree of statement ``index``, parsed once (libpg_query) and kept."""
        if index not in self.nodes:
            item = self.statements[index]
            self.nodes[index] = None if item.stmt.unparsed else parse_node(item.text)
        return self.nodes[index]


def run_rules(statements: list[ScriptStatement], mode: Mode = "statement") -> Checked:
    rules = TransactionRules(age_limit=None)
    state = ScriptState()
    per_stmt: list[list[tuple[str, Refusal, str]]] = [[] for _ in statements]
    checked = Checked(statements, per_stmt)
    for index, item in enumerate(statements):
        node = checked.node(index) if item.stmt.node == "CreateStmt" else None
        if isinstance(node, ast.CreateStmt) and node.relation is not None:
            state.created_later.add(node.relation.relname or "")
    if mode == "file":
        rules.completed(_BEGIN)
    if mode == "query":
        rules.begin_batch()

    def split() -> None:
        # Each finding is assumed fixed before the next is judged, as --fix does: a statement
        # the transaction rules refuse ends its transaction and opens the next one the same way.
        resplit(rules, mode)

    for index, item in enumerate(statements):
        stmt = item.stmt
        found = per_stmt[index]
        if stmt.unparsed:
            found.append(("syntax-error", Refusal("42601", stmt.parse_error or "syntax error"),
                          "statement"))
            rules.errored(stmt)
            if mode == "query":
                rules.end_batch()
                rules.begin_batch()
            continue
        wanted = stmt.node in _SCRIPT_NODES or (
            stmt.node == "AlterTableStmt" and "owner" in stmt.text.lower())
        node = checked.node(index) if wanted else None
        found.extend((r, ref, "statement") for r, ref in stmt.all_refusals)
        found.extend(_script_refusals(stmt, node, state))
        state.note(node, refused=bool(found))
        # Judged by the transaction rules as if its own problems were fixed.
        as_fixed = dataclasses.replace(stmt, refusal=None, refusals=(), waiver=None)
        verdict = rules.check(as_fixed)
        if verdict.refusal is not None and verdict.refusal != ABORTED:
            found.append((_TRANSACTION_RULES.get(verdict.refusal.message, "transaction"),
                          verdict.refusal, "transaction"))
            split()
            rules.check(as_fixed)
        rows = stmt.values_rows or 0
        if item.copy_data is not None:
            rows = sum(1 for _ in copy_rows(item.copy_data))
        error = rules.completed(as_fixed, rows=rows)
        if error is not None:
            found.append(("row-limit", error, "transaction"))
            split()
    if mode == "file":
        rules.check(_COMMIT)
    return checked


def resplit(rules: TransactionRules, mode: Mode) -> bool:
    """End the transaction the rules refused a statement in and open the next the same way: a
    block is committed and begun again; in one Query, COMMIT ends PostgreSQL's implicit
    transaction and the rest runs in a new one (PostgreSQL's protocol documentation). Returns
    whether the statement was in an explicit block."""
    was_block = rules.in_block
    if mode == "query":
        rules.end_batch()
    if was_block:
        rules.completed(_COMMIT)
    if mode == "query":
        rules.begin_batch()
    if was_block:
        rules.completed(_BEGIN)
    return was_block


def _script_refusals(stmt: Statement, node: ast.Node | None,
                     state: ScriptState) -> list[tuple[str, Refusal, str]]:
    found: list[tuple[str, Refusal, str]] = []
    for names in stmt.user_types:
        if names[-1] not in state.types:
            found.append(("undefined-type",
                          Refusal("42704", f'type "{".".join(names)}" does not exist'), "script"))
            break
    if stmt.index_columns is not None and stmt.index_columns[0].name in state.created_later:
        # pg_dump never does this, hand-ordered scripts do: DSQL looks the table up at once.
        name = stmt.index_columns[0].name
        found.append(("index-before-table", Refusal("42P01", f'relation "{name}" does not exist'),
                      "script"))
    if stmt.index_columns is not None:
        relation, columns = stmt.index_columns
        types = state.columns.get(relation.name, {})
        for column in columns:
            if types.get(column) in ("json", "jsonb"):
                # The endpoint's catalog check, worded as it answers.
                found.append(("index-type", Refusal(
                    "0A000", f"datatype {types[column]} is not supported in a key"), "script"))
                break
    for role in owner_roles(node):
        if role.lower() not in _BUILTIN_ROLES and role not in state.roles:
            found.append(("undefined-role", Refusal("42704", f'role "{role}" does not exist'),
                          "script"))
            break
    return found


def excerpt(text: str) -> str:
    first = " ".join(text.split())
    return first if len(first) <= _EXCERPT_WIDTH else first[:_EXCERPT_WIDTH - 1] + "…"


def findings_of(checked: Checked, text: str, filename: str | None,
                labels: dict[tuple[int, str], tuple[str, str]] | None = None) -> list[Finding]:
    """The findings, labelled by ``labels`` ((statement index, rule) -> (label, hint)) where the
    fixer was more precise than the rule's default."""
    lines = LineIndex(text)
    out: list[Finding] = []
    for index, (item, found) in enumerate(zip(checked.statements, checked.findings, strict=True)):
        for name, refusal, basis in found:
            position = item.start
            if name == "syntax-error" and item.error_position is not None:
                position = item.error_position
            line, column = lines.position(position)
            default: Rule = rule(name)
            label, hint = (labels or {}).get((index, name), (default.label, default.hint))
            out.append(Finding(filename, line, column, excerpt(item.text), refusal.sqlstate,
                               refusal.message, name, label,  # type: ignore[arg-type]
                               hint, default.inferred, basis))  # type: ignore[arg-type]
    return out


def check_text(text: str, *, filename: str | None = None,
               mode: Mode = "statement") -> list[Finding]:
    """The findings of a script, labelled by what ``--fix`` would do."""
    from dsqlkit.check.fix import fix_checked

    checked = run_rules(split_script(text), mode)
    result = fix_checked(text, checked, mode, emit=False)
    return findings_of(checked, text, filename, result.labels)
