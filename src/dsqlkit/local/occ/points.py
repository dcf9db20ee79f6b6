"""Point writes: the statements whose rows the endpoint can name before they run.

A *point write* is an ``UPDATE`` or ``DELETE`` of one table whose WHERE clause requires
``column = $n`` (alone, or ANDed with other conditions): every row it touches has that
column equal to that parameter's value. The engine (:mod:`dsqlkit.local.occ.engine`) keys
such writes by an *atom*, ``(table, column, format, value)``: two point writes with the same
atom may touch the same rows, so the one that comes second would wait on the first's row
lock under PostgreSQL, or be refused if the first committed after its snapshot. Knowing
that in advance lets a transaction answer its ``UPDATE`` from a dry run and *defer* the
write (:mod:`dsqlkit.local.occ.session`), instead of waiting, as DSQL never waits.

Atoms only ever decide *whether to defer*; PostgreSQL still decides every conflict, when a
deferred write runs for real in the transaction's own snapshot. So an atom that misses (the
same value sent once as text and once in binary) costs a wait, never a wrong answer.

A deferred ``UPDATE`` must answer exactly as the real one would, later, and fail only where
DSQL fails: so only UPDATEs whose expressions are free of function calls and sub-queries
(nothing volatile, nothing that reads other rows) are deferred, and only on tables where the
columns they set carry no constraint that could refuse the new value
(:func:`table_query` asks the catalog).

No I/O here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType

from dsqlkit.local.occ.dryrun import DryRun, dry_run, single_statement, walk
from dsqlkit.local.policy import literal

# (relation as written, key column, the key's value): ints as ints, so that an int2 and an
# int4 parameter of the same value are the same atom.
Atom = tuple[str, str, object]

_INT_WIDTHS = {21: 2, 23: 4, 20: 8}  # int2, int4, int8
_UUID = 2950
_INT_TEXT = re.compile(rb"-?[1-9][0-9]{0,18}|0")


def key_value(fmt: int, value: bytes | None, declared: int, key_type: int) -> object | None:
    """A key parameter's value, in a form where equal values are equal: for integer and
    uuid keys only (in text, or in binary of the declared width); None for anything else
    (then the write is not keyed, and runs as it is)."""
    if value is None:
        return None
    if key_type in _INT_WIDTHS:
        oid = declared or key_type
        if fmt == 1 and _INT_WIDTHS.get(oid) == len(value):
            return int.from_bytes(value, "big", signed=True)
        if fmt == 0 and oid in _INT_WIDTHS and _INT_TEXT.fullmatch(value):
            return int(value)
        return None
    if key_type == _UUID and declared in (0, _UUID):
        if fmt == 1 and len(value) == 16:
            return value.hex()
        if fmt == 0:
            text = value.replace(b"-", b"").lower()
            if len(text) == 32 and all(c in b"0123456789abcdef" for c in text):
                return text.decode()
        return None
    return None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """What the catalog says of an UPDATE's table (:func:`table_query`): whether the UPDATE
    can be deferred, and the type of its key column when that is a unique key (None if not
    unique, or not a type :func:`key_value` knows)."""

    deferrable: bool
    key_type: int | None

    @classmethod
    def from_row(cls, row: list[bytes | None]) -> TableInfo:
        deferrable = bool(row) and row[0] == b"t"
        key = row[1] if len(row) > 1 else None
        key_type = int(key) if key is not None and key.isdigit() else None
        return cls(deferrable, key_type if key_type in (*_INT_WIDTHS, _UUID) else None)


# Expression nodes a deferred UPDATE may hold: none of them calls a function (operators on
# built-in types are immutable; DSQL has no CREATE OPERATOR) or reads another row.
_PLAIN = (ast.ColumnRef, ast.ParamRef, ast.A_Const, ast.A_Expr, ast.TypeCast, ast.BoolExpr,
          ast.NullTest, ast.BooleanTest, ast.CaseExpr, ast.CaseWhen, ast.CoalesceExpr,
          ast.MinMaxExpr, ast.ResTarget, ast.String, ast.Integer, ast.Float, ast.Boolean,
          ast.TypeName, ast.RangeVar, ast.Alias, ast.MultiAssignRef, ast.RowExpr)


# Longer texts are not point writes the endpoint looks into.
_MAX_TEXT = 4096


@dataclass(frozen=True, slots=True)
class PointWrite:
    """A point write (see the module docs)."""

    kind: str  # "update" or "delete"
    schema: str | None
    table: str
    key: str  # the column the WHERE clause pins
    param: int  # ... to this parameter ($n)
    columns: tuple[str, ...]  # the columns an UPDATE sets
    # The UPDATE's dry run, when the write can be deferred: plain expressions only.
    dry: DryRun | None

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def atom(self, fmt: int, value: bytes | None, declared: int, key_type: int) -> Atom | None:
        """The atom of this write with these Bind parameter bytes (see key_value)."""
        key = key_value(fmt, value, declared, key_type)
        return None if key is None else (self.relation, self.key, key)


def _plain(*roots: Any) -> bool:
    """No function call, sub-query or anything else outside the plain expression nodes."""
    return all(isinstance(node, _PLAIN) for root in roots for node in walk(root))


def _pinned_key(where: Any, names: set[str]) -> tuple[str, int] | None:
    """``(column, n)`` for a WHERE clause that requires ``column = $n``."""
    if isinstance(where, ast.BoolExpr) and where.boolop == BoolExprType.AND_EXPR:
        conditions: tuple[Any, ...] = tuple(where.args or ())
    else:
        conditions = (where,)
    for cond in conditions:
        if not (isinstance(cond, ast.A_Expr) and cond.kind == A_Expr_Kind.AEXPR_OP):
            continue
        operator: Any = cond.name or ()
        if len(operator) != 1 or operator[0].sval != "=":
            continue
        sides: Any = ((cond.lexpr, cond.rexpr), (cond.rexpr, cond.lexpr))
        for column, param in sides:
            if not (isinstance(column, ast.ColumnRef) and isinstance(param, ast.ParamRef)):
                continue
            fields: Any = column.fields
            if not all(isinstance(f, ast.String) for f in fields) or len(fields) > 2:
                continue
            if len(fields) == 2 and fields[0].sval not in names:
                continue
            number: Any = param.number
            return str(fields[-1].sval), int(number)
    return None


@functools.lru_cache(maxsize=1024)
def point_write(sql: str) -> PointWrite | None:
    """The point write ``sql`` is, or None. (Only short texts that start with UPDATE or
    DELETE are parsed: this runs on the endpoint's event loop for every statement text.)"""
    if len(sql) > _MAX_TEXT or sql.lstrip()[:6].upper() not in ("UPDATE", "DELETE"):
        return None
    node: Any = single_statement(sql)
    if isinstance(node, ast.UpdateStmt):
        kind = "update"
        joined = node.fromClause
    elif isinstance(node, ast.DeleteStmt):
        kind = "delete"
        joined = node.usingClause
    else:
        return None
    rel = node.relation
    if node.withClause is not None or joined or node.whereClause is None:
        return None
    names = {rel.relname}
    if rel.alias is not None:
        names = {rel.alias.aliasname}
    key = _pinned_key(node.whereClause, names)
    if key is None:
        return None
    columns: tuple[str, ...] = ()
    dry = None
    if kind == "update":
        columns = tuple(t.name for t in node.targetList)
        returning = node.returningClause.exprs if node.returningClause else ()
        if _plain(node.targetList, node.whereClause, returning):
            dry = dry_run(sql)
    return PointWrite(kind, rel.schemaname, rel.relname, key[0], key[1], columns, dry)


def table_query(write: PointWrite) -> str:
    """A query that answers one row about the UPDATE's table, over every relation its name
    can mean (whatever the session's search_path):

    1. whether the UPDATE can be deferred: an ordinary table, no row security, triggers (but
       the endpoint's own that count rows for DSQL's limits; a client cannot create one),
       inheritance, CHECK or exclusion constraints, expression or partial indexes, or
       generated columns; and each column it sets is in no index or constraint, nullable, of
       a base type without a type modifier (no length or precision to exceed), and the
       session's role may read and update it (the dry run reads what the UPDATE writes);
    2. the type of the key column, if it is a unique key (a unique index on it alone,
       checked at once), the same in every such relation; else NULL.
    """
    columns = "ARRAY[" + ", ".join(literal(c) for c in write.columns) + "]::name[]"
    where = f"c.relname = {literal(write.table)}"
    if write.schema is not None:
        where += f" AND n.nspname = {literal(write.schema)}"
    key = literal(write.key)
    return f"""SELECT count(*) > 0 AND bool_and(
  c.relkind = 'r' AND NOT c.relrowsecurity
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid
                  AND t.tgname NOT LIKE 'dsqlkit\\_limits\\_%')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits h WHERE h.inhparent = c.oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                  WHERE k.conrelid = c.oid AND k.contype IN ('c', 'x'))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid
                  AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute g WHERE g.attrelid = c.oid
                  AND g.attgenerated <> '' AND NOT g.attisdropped)
  AND (SELECT count(*) FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         AND a.attname = ANY({columns})
         AND NOT a.attnotnull AND a.atttypmod = -1 AND y.typtype = 'b'
         AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                         WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey))
         AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                         WHERE k.conrelid = c.oid AND a.attnum = ANY(k.conkey))
         AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'UPDATE')
         AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
      ) = {len(set(write.columns))}),
  CASE WHEN count(*) > 0 AND bool_and(u.atttypid IS NOT NULL)
       AND count(DISTINCT u.atttypid) = 1 THEN min(u.atttypid) END
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT a.atttypid FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = c.oid AND a.attname = {key} AND NOT a.attisdropped
    AND EXISTS (SELECT FROM pg_catalog.pg_index i
                WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate
                  AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
                  AND i.indexprs IS NULL AND i.indpred IS NULL)) u ON true
WHERE {where}"""


__all__ = ["Atom", "PointWrite", "TableInfo", "key_value", "point_write", "table_query"]
