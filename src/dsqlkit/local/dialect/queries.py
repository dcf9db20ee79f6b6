"""Rules for queries, DML, transaction control and settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast
from pglast.enums import OnConflictAction, TransactionStmtKind, VariableSetKind

from dsqlkit.local.dialect.facts import (
    _const_value,
    _defelems,
    _Facts,
    _handles,
    _inner_facts,
    _Piece,
    _string_names,
)
from dsqlkit.local.dialect.model import (
    DSQL_ONLY_SETTINGS,
    SERVER_VERSION,
    SERVER_VERSION_NUM,
    UNDEFINED_OBJECT,
    LocalAnswer,
    Refusal,
    TclAction,
    WaitForJob,
    _f,
    setting_refusal,
)

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
        elif isinstance(select, ast.SelectStmt) and not skips:
            f.values_rows = _series_rows(select)


def _series_rows(select: ast.SelectStmt) -> int | None:
    """Rows of ``SELECT generate_series(a, b[, step])`` with integer literals and nothing else.

    Bulk-loading scripts fill tables this way; the count is known from the text, as for VALUES.
    """
    if (select.fromClause or select.whereClause or select.larg is not None
            or select.groupClause or select.havingClause or select.limitCount
            or select.distinctClause or len(select.targetList or ()) != 1):
        return None
    target = (select.targetList or (None,))[0]
    call = target.val if isinstance(target, ast.ResTarget) else None
    if not isinstance(call, ast.FuncCall) or _string_names(call.funcname) not in (
            ("generate_series",), ("pg_catalog", "generate_series")):
        return None
    values = [_const_value(a) for a in call.args or () if isinstance(a, ast.A_Const)]
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(numbers) != len(call.args or ()) or len(numbers) not in (2, 3):
        return None
    start, stop = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else 1
    if not step:
        return None
    return max(0, (stop - start) // step + 1)


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
    if node.is_program or node.filename is not None:
        # Inferred: DSQL is a managed service with no server file system or shell, and its admin
        # role is not a superuser, so PostgreSQL's own privilege check answers.
        if node.is_program:
            what = "pg_execute_server_program role to COPY to or from an external program"
        elif node.is_from:
            what = "pg_read_server_files role to COPY from a file"
        else:
            what = "pg_write_server_files role to COPY to a file"
        f.refuse("copy-file",
                 Refusal("42501", f"must be superuser or have privileges of the {what}"))


@_handles(ast.ExplainStmt)
def _explain(node: ast.ExplainStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    analyze_opt = _defelems(node.options).get("analyze")
    f.explain_analyze = analyze_opt is not None and _const_value(analyze_opt.arg) not in (
        False, "false", "off", 0)
    inner = _inner_facts(node.query, piece)
    f.refuse_all(inner)
    if f.explain_analyze and inner.kind == "dml":
        f.writes_rows = True


@_handles(ast.PrepareStmt)
def _prepare(node: ast.PrepareStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    f.prepared_name = node.name
    inner = _inner_facts(node.query, piece)
    f.refuse_all(inner)


@_handles(ast.ExecuteStmt)
def _execute(node: ast.ExecuteStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "utility"
    f.execute_name = node.name


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
    if not setting_clause(node, f, is_local=f.is_local) and param in DSQL_ONLY_SETTINGS:
        f.local_answer = LocalAnswer(tag="RESET" if kind == VariableSetKind.VAR_RESET else "SET")


def setting_clause(node: ast.VariableSetStmt, f: _Facts, *, is_local: bool = False) -> bool:
    """DSQL's rule for one SET/RESET of a parameter, wherever it is written: a SET statement,
    a function's SET clause, ALTER ROLE ... SET. Returns whether it was refused.

    Only SET and its connection-string form are recorded; the other places are inferred to
    follow the same rule, with the same answer (a parameter DSQL lets no session set must
    not become a role's default, or hold while a function runs)."""
    if node.kind == VariableSetKind.VAR_RESET_ALL:
        return False
    if node.kind == VariableSetKind.VAR_SET_MULTI:
        # SET TRANSACTION ... outside a SET statement cannot parse; refuse as SET does.
        f.refuse("set-transaction",
                 _f(f'setting configuration parameter "{node.name or ""}" not supported'))
        return True
    refusal = setting_refusal((node.name or "").lower(), is_local=is_local)
    if refusal is None:
        return False
    f.refuse("set-parameter", refusal)
    return True


@_handles(ast.AlterRoleSetStmt)
def _alter_role_set(node: ast.AlterRoleSetStmt, f: _Facts, piece: _Piece) -> None:
    f.kind = "ddl"
    if node.setstmt is not None:
        setting_clause(node.setstmt, f)


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

