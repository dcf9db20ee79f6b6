"""Lock-free stand-ins for statements of a transaction that has already lost a conflict.

DSQL never makes a statement wait: a transaction that will lose a conflict still gets normal
answers until its COMMIT fails. PostgreSQL makes it wait on the winner's row lock instead.
When the endpoint has decided that a transaction loses and one of its statements would wait,
it runs a *dry run* of that statement: a SELECT that takes no lock and writes nothing but
returns what the statement would have returned.

* ``UPDATE t SET c = e … WHERE p RETURNING r`` → ``SELECT r' FROM t … WHERE p`` where every
  reference to a SET column in ``r`` is replaced by its new value (``e``, typed as the column
  with ``CASE WHEN false THEN t.c ELSE e END``, so parameters get the column's type); without
  RETURNING the rows are counted and the answer becomes ``UPDATE n``.
* ``DELETE FROM t USING u WHERE p RETURNING r`` → ``SELECT r FROM t, u WHERE p``.
* ``SELECT … FOR UPDATE`` / ``FOR KEY SHARE`` → the same SELECT without the locking clause.

Anything else (INSERT, data-modifying CTEs, ``WHERE CURRENT OF``, ``RETURNING *``) has no dry
run, and the endpoint reports the conflict at the statement instead.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor


@dataclass(frozen=True, slots=True)
class DryRun:
    """A statement's lock-free stand-in and how to present its answer.

    ``tag``: the command tag to report instead of ``SELECT n`` (``UPDATE``, ``DELETE``), or
    None to keep it. ``keep_rows``: the statement returns rows (RETURNING, SELECT); if false,
    the stand-in's rows only count and are dropped.
    """

    sql: str
    tag: str | None
    keep_rows: bool


class _Substitute(Visitor):
    def __init__(self, sets: dict[str, Any], qualifiers: set[str], table: str) -> None:
        super().__init__()
        self.sets = sets
        self.qualifiers = qualifiers
        self.table = table

    def visit_ColumnRef(self, ancestors: object, node: Any) -> Any:
        fields = node.fields
        last = fields[-1]
        if not isinstance(last, ast.String) or last.sval not in self.sets:
            return None
        if len(fields) == 2 and not (
            isinstance(fields[0], ast.String) and fields[0].sval in self.qualifiers
        ):
            return None
        if len(fields) > 2:
            return None
        column = ast.ColumnRef(fields=(ast.String(self.table), ast.String(last.sval)))
        return ast.CaseExpr(
            args=(ast.CaseWhen(expr=ast.A_Const(val=ast.Boolean(False)), result=column),),
            defresult=copy.deepcopy(self.sets[last.sval]),
        )


def _default_name(val: Any) -> str | None:
    fields: Any = getattr(val, "fields", None)
    if isinstance(val, ast.ColumnRef) and fields and isinstance(fields[-1], ast.String):
        return str(fields[-1].sval)
    return None


def _returning(node: Any) -> tuple[Any, ...] | None:
    clause = node.returningClause
    if clause is None or not clause.exprs:
        return None
    return tuple(clause.exprs)


def _has_star(targets: tuple[Any, ...]) -> bool:
    for t in targets:
        fields: Any = getattr(t.val, "fields", None)
        if isinstance(t.val, ast.ColumnRef) and fields and isinstance(fields[-1], ast.A_Star):
            return True
    return False


def _count_target() -> tuple[Any, ...]:
    return (ast.ResTarget(val=ast.A_Const(val=ast.Integer(1))),)


def _update(node: Any) -> DryRun | None:
    rel = node.relation
    table = rel.alias.aliasname if rel.alias else rel.relname
    qualifiers = {rel.relname, table}
    sets: dict[str, Any] = {}
    for target in node.targetList:
        if target.indirection or not isinstance(target.val, ast.Node):
            return None  # SET (a, b) = (...), SET arr[1] = ..., SET c = DEFAULT
        if isinstance(target.val, (ast.MultiAssignRef, ast.SetToDefault)):
            return None
        sets[target.name] = target.val
    returning = _returning(node)
    substitute = _Substitute(sets, qualifiers, table)
    if returning is not None:
        if _has_star(returning):
            return None
        targets = []
        for rt in returning:
            name = rt.name or _default_name(rt.val)
            wrapper = ast.ResTarget(val=copy.deepcopy(rt.val), name=name)
            substitute(wrapper)
            targets.append(wrapper)
    else:
        # Evaluate every new value, so that parameters only used in SET still get a type.
        targets = []
        for name in sets:
            wrapper = ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(table),
                                                              ast.String(name))))
            substitute(wrapper)
            targets.append(wrapper)
    select = ast.SelectStmt(
        targetList=tuple(targets),
        fromClause=(rel, *(node.fromClause or ())),
        whereClause=node.whereClause,
    )
    return DryRun(RawStream()(select), "UPDATE", returning is not None)


def _delete(node: Any) -> DryRun | None:
    returning = _returning(node)
    if returning is not None and _has_star(returning):
        return None
    select = ast.SelectStmt(
        targetList=returning if returning is not None else _count_target(),
        fromClause=(node.relation, *(node.usingClause or ())),
        whereClause=node.whereClause,
    )
    return DryRun(RawStream()(select), "DELETE", returning is not None)


def _select(node: Any) -> DryRun | None:
    if not node.lockingClause:
        return None
    bare = copy.deepcopy(node)
    bare.lockingClause = None
    return DryRun(RawStream()(bare), None, True)


@functools.lru_cache(maxsize=1024)
def dry_run(sql: str) -> DryRun | None:
    """The lock-free stand-in for ``sql``, or None when it has none (see module docs)."""
    try:
        statements = parse_sql(sql)
    except Exception:
        return None
    if len(statements) != 1:
        return None
    node = statements[0].stmt
    if getattr(node, "withClause", None) is not None:
        return None  # a CTE may write
    if isinstance(node, ast.UpdateStmt):
        if isinstance(node.whereClause, ast.CurrentOfExpr):
            return None
        return _update(node)
    if isinstance(node, ast.DeleteStmt):
        if isinstance(node.whereClause, ast.CurrentOfExpr):
            return None
        return _delete(node)
    if isinstance(node, ast.SelectStmt):
        return _select(node)
    return None
