"""Checks and rewrites inside expressions: refused functions and types, locking clauses,
data-modifying CTEs, and DSQL's version constants."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

from pglast import ast
from pglast.enums import LockClauseStrength

from dsqlkit.local.dialect.builtin_types import PG_CATALOG_TYPES, SYSTEM_SCHEMAS
from dsqlkit.local.dialect.ddl import _builtin_type
from dsqlkit.local.dialect.facts import _const_value, _Facts, _string_names
from dsqlkit.local.dialect.model import (
    _LOCKING,
    SERVER_VERSION,
    SERVER_VERSION_NUM,
    UNDEFINED_OBJECT,
    VERSION_STRING,
    Refusal,
    _f,
    setting_refusal,
)

log = logging.getLogger(__name__)


_ADVISORY_LOCKS = frozenset({
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
})
# Functions that run a query given as text (query_to_xml(query, ...), ts_stat(query),
# ts_rewrite(query, select)), by the argument holding it and the argument count it needs.
_DYNAMIC_SQL: dict[str, tuple[int, int]] = {
    "query_to_xml": (0, 4), "query_to_xmlschema": (0, 4), "query_to_xml_and_xmlschema": (0, 4),
    "ts_stat": (0, 1), "ts_rewrite": (1, 2),
}
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
        elif cls is ast.RangeVar:
            if node.relname and node.relname not in f.relations:
                f.relations.append(node.relname)
        elif cls is ast.TypeName:
            _note_user_type(node, f)
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
        elif cls is ast.UpdateStmt or cls is ast.InsertStmt or cls is ast.DeleteStmt:
            _check_settings_write(node, f)
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


def _note_user_type(node: ast.TypeName, f: _Facts) -> None:
    names = _string_names(node.names)
    if node.pct_type or not names or names[-1] in _SERIAL_NAMES:
        return
    if len(names) == 1 and names[0] in PG_CATALOG_TYPES:
        return
    if len(names) > 1 and names[-2] in SYSTEM_SCHEMAS:
        return
    f.user_types.append(names)


# Not types at all: the serial rule answers for them.
_SERIAL_NAMES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})
# Recorded: calling DSQL's procedure as a function. PostgreSQL names the argument types it
# resolved; a literal or a job_id subquery resolves to text.
_WAIT_FOR_JOB = ("sys", "wait_for_job")


def _check_function(node: ast.FuncCall, parent: Any, attr: str, path: tuple[int, ...],
                    f: _Facts, rewrites: list[_Rewrite]) -> None:
    qualified = _string_names(node.funcname)
    if (qualified == _WAIT_FOR_JOB and len(node.args or ()) == 1
            and not isinstance(parent, ast.CallStmt)):
        f.refuse("wait-for-job-call", Refusal("42809", "sys.wait_for_job(text) is a procedure"))
        return
    name = _function_name(qualified)
    if name is None:
        return
    args = node.args or ()
    if name == "set_config":
        _check_set_config(node, f)
    elif name in _DYNAMIC_SQL and len(args) >= _DYNAMIC_SQL[name][1]:
        query = _literal_text(_positional(node, _DYNAMIC_SQL[name][0], "query"))
        if query is None:
            # Inferred: SQL that only exists at run time cannot be held to DSQL's settings
            # rules here; worded as DSQL's recorded refusal of a function.
            f.refuse("dynamic-sql", _f(f"function {name} not supported"))
        else:
            f.nested_sql.append(query)
    elif name == "pg_notify":
        # Inferred: DSQL refuses NOTIFY (recorded); its function form with the wording of
        # DSQL's recorded refusal of a function.
        f.refuse("listen-notify", _f("function pg_notify not supported"))
    elif name in _ADVISORY_LOCKS:
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


def _positional(node: ast.FuncCall, index: int, named: str) -> Any:
    """Argument ``index`` of a call, or the argument passed by ``named`` (name => value)."""
    for arg in node.args or ():
        if isinstance(arg, ast.NamedArgExpr) and arg.name == named:
            return arg.arg
    args = [a for a in node.args or () if not isinstance(a, ast.NamedArgExpr)]
    return args[index] if index < len(args) else None


def _literal_text(arg: Any) -> str | None:
    while isinstance(arg, ast.TypeCast):
        arg = arg.arg
    value = _const_value(arg) if isinstance(arg, ast.A_Const) else None
    return value if isinstance(value, str) else None


def _sql_text(arg: Any) -> str:
    from pglast.stream import RawStream

    try:
        return str(RawStream()(arg))
    except Exception:
        return "?"


_TRUE_TEXTS = frozenset({"t", "true", "on", "yes", "y", "1"})


def _check_set_config(node: ast.FuncCall, f: _Facts) -> None:
    """``set_config(name, value, is_local)`` is SET by another name: DSQL's rule for the
    parameter, as for SET (``is_local`` true as for SET LOCAL). Inferred: not recorded; the
    answer is the recorded one for SET. A name that is not a literal cannot be checked, and
    is refused naming the expression."""
    name_arg = _positional(node, 0, "setting_name")
    name = _literal_text(name_arg)
    local_arg = _positional(node, 2, "is_local")
    while isinstance(local_arg, ast.TypeCast):
        local_arg = local_arg.arg
    local = _const_value(local_arg) if isinstance(local_arg, ast.A_Const) else None
    is_local = local is True or (isinstance(local, str) and local.lower() in _TRUE_TEXTS)
    if name is None:
        shown = _sql_text(name_arg) if name_arg is not None else ""
        f.refuse("set-config", _f(f'setting configuration parameter "{shown}" not supported'))
        return
    refusal = setting_refusal(name.lower(), is_local=is_local)
    if refusal is not None:
        f.refuse("set-config", refusal)


def _check_settings_write(node: Any, f: _Facts) -> None:
    """INSERT, UPDATE or DELETE on pg_settings: PostgreSQL's rule on that view calls
    set_config(). Refused (inferred) with the SET answer for the parameter the WHERE clause
    names, whichever it is (the backend refuses every write to pg_settings anyway)."""
    rel = node.relation
    if not isinstance(rel, ast.RangeVar) or rel.relname != "pg_settings" or (
            rel.schemaname not in (None, "pg_catalog")):
        return
    name = "pg_settings"
    stack: list[Any] = [getattr(node, "whereClause", None)]
    while stack:
        expr = stack.pop()
        if isinstance(expr, ast.BoolExpr):
            stack.extend(expr.args or ())
        elif isinstance(expr, ast.A_Expr) and _string_names(expr.name) == ("=",):
            sides = (expr.lexpr, expr.rexpr)
            column = next((s for s in sides if isinstance(s, ast.ColumnRef)), None)
            value = next((_literal_text(s) for s in sides if _literal_text(s)), None)
            fields = column.fields if column is not None else ()
            if value and fields and isinstance(fields[-1], ast.String) and (
                    fields[-1].sval == "name"):
                name = value
                break
    f.refuse("settings-write", _f(f'setting configuration parameter "{name}" not supported'))


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

