"""Lock-free stand-ins for statements of a transaction that has already lost a conflict.

DSQL never makes a statement wait: a transaction that will lose a conflict still gets normal
answers until its COMMIT fails. PostgreSQL makes it wait on the winner's row lock instead.
When the endpoint has decided that a transaction loses and one of its statements would wait,
it runs a *dry run* of that statement: a SELECT that takes no lock and writes nothing but
returns what the statement would have returned.

* ``UPDATE t SET c = e WHERE p RETURNING r`` → ``SELECT r' FROM t WHERE p`` where every
  reference to a SET column in ``r`` is replaced by its new value (``e``, typed as the column
  with ``CASE WHEN false THEN t.c ELSE e END``, so parameters get the column's type); without
  RETURNING the rows are counted and the answer becomes ``UPDATE n``.
* With ``FROM u`` (``DELETE ... USING u``), PostgreSQL changes each target row once however
  many rows of ``u`` it joins, and returns one row per target row, so the stand-in keeps one
  join partner per target row: ``SELECT s.* FROM t, LATERAL (SELECT r' FROM u WHERE p LIMIT
  1) s WHERE EXISTS (SELECT FROM u WHERE p)`` (the EXISTS lets the planner filter ``t`` with a
  semi-join first); without RETURNING only the EXISTS is needed. Which partner a RETURNING
  expression sees is PostgreSQL's choice in both, as it is arbitrary.
* A read-only ``WITH`` goes on the stand-in as it is; ``DELETE ... RETURNING *`` returns the
  target's columns, then those of the USING tables, as PostgreSQL does.
* ``SELECT … FOR UPDATE`` / ``FOR KEY SHARE`` → the same SELECT without the locking clause.

Anything else (INSERT, data-modifying or locking CTEs, ``WHERE CURRENT OF``, ``UPDATE ...
RETURNING *``, ``SET c = DEFAULT``) has no dry run, and the endpoint reports the conflict at
the statement instead.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import LimitOption, SubLinkType
from pglast.stream import RawStream
from pglast.visitors import Visitor

from dsqlkit.local.protocol import Presentation


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

    @property
    def presentation(self) -> Presentation:
        """How the relay shows its answer as the statement's."""
        return Presentation(tag=self.tag, counted=self.tag is not None, keep_rows=self.keep_rows)


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


_JOINED = "dsqlkit_dry"


def _stand_in(rel: Any, joined: tuple[Any, ...], where: Any, targets: tuple[Any, ...],
              counting: bool, with_clause: Any) -> Any:
    """The SELECT that returns one row per target row (see the module docs)."""
    if not joined:
        return ast.SelectStmt(targetList=targets, fromClause=(rel,), whereClause=where,
                              withClause=with_clause)
    exists = ast.SubLink(subLinkType=SubLinkType.EXISTS_SUBLINK, subselect=ast.SelectStmt(
        targetList=targets if counting else _count_target(),
        fromClause=copy.deepcopy(joined), whereClause=copy.deepcopy(where)))
    if counting:
        return ast.SelectStmt(targetList=_count_target(), fromClause=(rel,),
                              whereClause=exists, withClause=with_clause)
    partner = ast.RangeSubselect(
        lateral=True, alias=ast.Alias(aliasname=_JOINED),
        subquery=ast.SelectStmt(targetList=targets, fromClause=joined, whereClause=where,
                                limitCount=ast.A_Const(val=ast.Integer(1)),
                                limitOption=LimitOption.LIMIT_OPTION_COUNT))
    every = ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(_JOINED), ast.A_Star())))
    return ast.SelectStmt(targetList=(every,), fromClause=(rel, partner), whereClause=exists,
                          withClause=with_clause)


def _read_only(with_clause: Any) -> bool:
    """A WITH clause whose queries only read, without locking rows."""
    for cte in with_clause.ctes or ():
        query = cte.ctequery
        if not isinstance(query, ast.SelectStmt):
            return False
        for node in walk(query):
            if isinstance(node, ast.LockingClause | ast.InsertStmt | ast.UpdateStmt
                          | ast.DeleteStmt | ast.MergeStmt):
                return False
    return True


def walk(root: Any) -> list[Any]:
    """Every AST node under ``root`` (itself included)."""
    found: list[Any] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            found.append(node)
            stack.extend(getattr(node, name) for name in getattr(type(node), "__slots__", ()))
    return found


def _update(node: Any) -> DryRun | None:
    rel = node.relation
    table = rel.alias.aliasname if rel.alias else rel.relname
    qualifiers = {rel.relname, table}
    sets: dict[str, Any] = {}
    for target in node.targetList:
        value = target.val
        if target.indirection or not isinstance(value, ast.Node):
            return None  # SET arr[1] = ..., SET c.field = ...
        if isinstance(value, ast.MultiAssignRef):
            # SET (a, b) = (x, y); a sub-SELECT source has no per-column expression.
            source: Any = value.source
            if not isinstance(source, ast.RowExpr) or not value.colno:
                return None
            value = (source.args or ())[value.colno - 1]
        if isinstance(value, ast.SetToDefault):
            return None
        sets[target.name] = value
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
    select = _stand_in(rel, tuple(node.fromClause or ()), node.whereClause, tuple(targets),
                       returning is None, node.withClause)
    return DryRun(RawStream()(select), "UPDATE", returning is not None)


def _delete(node: Any) -> DryRun | None:
    returning = _returning(node)
    using = tuple(node.usingClause or ())
    bare_star = returning is not None and any(
        _has_star((rt,)) and not _qualified_star(rt) for rt in returning)
    if returning is not None and bare_star and (len(returning) != 1 or using):
        if len(returning) != 1:
            return None  # "*" beside other expressions
        # RETURNING *: the target's columns, then the USING tables'.
        rel = node.relation
        table = rel.alias.aliasname if rel.alias else rel.relname
        select = _stand_in(rel, using, node.whereClause,
                           (ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),))),),
                           False, node.withClause)
        own = ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(table), ast.A_Star())))
        select.targetList = (own, *select.targetList)
        return DryRun(RawStream()(select), "DELETE", True)
    select = _stand_in(node.relation, using, node.whereClause,
                       returning if returning is not None else _count_target(),
                       returning is None, node.withClause)
    return DryRun(RawStream()(select), "DELETE", returning is not None)


def _qualified_star(target: Any) -> bool:
    fields: Any = getattr(target.val, "fields", None)
    return bool(isinstance(target.val, ast.ColumnRef) and fields and len(fields) > 1
                and isinstance(fields[-1], ast.A_Star))


def _select(node: Any) -> DryRun | None:
    if not node.lockingClause:
        return None
    bare = copy.deepcopy(node)
    bare.lockingClause = None
    return DryRun(RawStream()(bare), None, True)


def single_statement(sql: str) -> Any | None:
    """The parse tree of the one statement ``sql`` holds; None if it holds another number,
    or does not parse."""
    try:
        statements = parse_sql(sql)
    except Exception:
        return None
    return statements[0].stmt if len(statements) == 1 else None


@functools.lru_cache(maxsize=1024)
def dry_run(sql: str) -> DryRun | None:
    """The lock-free stand-in for ``sql``, or None when it has none (see module docs)."""
    node = single_statement(sql)
    if node is None:
        return None
    with_clause = getattr(node, "withClause", None)
    if with_clause is not None and not _read_only(with_clause):
        return None  # a CTE that writes, or locks
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
