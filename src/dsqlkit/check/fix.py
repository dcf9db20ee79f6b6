"""``dsqlkit check --fix``: rewrite a script so DSQL runs it, keeping its meaning where it can.

Each statement with findings goes through the rewrite for its kind; a rewrite says, per rule,
whether it kept the meaning (fixable) or changed something a person must accept (needs review).
Statements DSQL cannot run at all and that have no equivalent (triggers, PL/pgSQL, extensions)
are commented out with a ``-- dsqlkit: needs review`` line saying why, never dropped silently.
Statements nobody can rewrite are left as they are (unfixable). Then the output is re-sequenced
so DSQL's one-DDL-per-transaction and no-DDL-with-DML rules hold (blocks are split).

Rewritten statements are printed by pglast from their parse tree (comments inside them are not
kept); statements without findings are copied byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import (
    AlterTableType,
    CoercionForm,
    ConstrType,
    DefElemAction,
    OnCommitAction,
    SortByDir,
)
from pglast.stream import RawStream

from dsqlkit.check.engine import Checked, Mode, resplit
from dsqlkit.check.findings import FIXABLE, NEEDS_REVIEW, UNFIXABLE, rule
from dsqlkit.check.script import copy_rows
from dsqlkit.local.dialect import (
    ROW_LIMIT,
    TransactionRules,
    analyze,
)

_AT = AlterTableType
# Settings pg_dump writes at the top of a dump whose loss changes nothing on DSQL.
_DUMP_SETTINGS = frozenset({
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
    "transaction_timeout", "client_min_messages", "standard_conforming_strings",
    "check_function_bodies", "xmloption", "row_security", "default_tablespace",
    "default_table_access_method", "default_with_oids",
})
# Refused column types with a documented DSQL stand-in, and whether the stand-in is exact.
_TEXT_LIKE = frozenset({"tsvector", "tsquery", "inet", "cidr", "macaddr", "macaddr8", "xml",
                        "jsonpath", "pg_lsn"})
# Types DSQL stores but cannot index [DOC supported-data-types].
_UNINDEXABLE = frozenset({"jsonb", "json"})
_COERCE_CALL = CoercionForm.COERCE_EXPLICIT_CALL
_C_COLLATIONS = frozenset({"c", "posix", "default", "ucs_basic"})


@dataclass
class Note:
    rule: str
    label: str
    hint: str


@dataclass
class FixResult:
    text: str
    #: (statement index, rule) -> (label, hint), for the checker's findings.
    labels: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)
    notes: list[tuple[int, Note]] = field(default_factory=list)


@dataclass
class _Context:
    mode: Mode
    checked: Checked
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    jsonb_arrays: dict[str, set[str]] = field(default_factory=dict)
    money: dict[str, set[str]] = field(default_factory=dict)
    merged: dict[str, list[ast.Constraint]] = field(default_factory=dict)
    merged_into: dict[int, str] = field(default_factory=dict)
    commented: dict[str, set[str]] = field(default_factory=dict)
    enum_domains: set[str] = field(default_factory=set)
    emit: bool = True
    created_at: dict[str, int] = field(default_factory=dict)
    deferred: dict[int, list[str]] = field(default_factory=dict)


def _sql(node: ast.Node) -> str:
    return str(RawStream()(node))


def _names(names: Any) -> list[str]:
    return [n.sval for n in names or () if isinstance(n, ast.String) and n.sval is not None]


def _rel(rv: ast.RangeVar | None) -> str:
    return "" if rv is None else rv.relname or ""


def _qual(rv: ast.RangeVar) -> str:
    """The table's name, schema-qualified as written, without ONLY."""
    parts = [rv.schemaname, rv.relname] if rv.schemaname else [rv.relname]
    return ".".join(_quote(p or "") for p in parts)


def commented_out(text: str, why: str) -> str:
    body = "\n".join(f"-- {line}" if line.strip() else "--"
                     for line in (text.rstrip().rstrip(";") + ";").splitlines())
    return f"-- dsqlkit: needs review: {why}\n{body}"


def fix_checked(text: str, checked: Checked, mode: Mode = "statement", *,
                emit: bool = True) -> FixResult:
    """The rewritten script and the label of every finding; ``emit=False`` only labels."""
    ctx = _Context(mode, checked, emit=emit)
    _plan_merges(ctx)
    replacements: list[tuple[int, int, list[str]]] = []
    result = FixResult(text)
    for index, item in enumerate(checked.statements):
        found = checked.findings[index]
        rules_here = {name for name, _, _ in found}
        needed = bool(found) or item.stmt.node in ("CreateStmt", "CreateEnumStmt") or (
            item.stmt.node in ("CopyStmt", "IndexStmt") and bool(ctx.jsonb_arrays or ctx.money)
        ) or (item.stmt.node in _FOLLOWERS and bool(ctx.commented))
        node = checked.node(index) if needed else None
        out: list[str] | None
        notes: list[Note] = []
        if index in ctx.merged_into:
            out = [f"-- dsqlkit: merged into CREATE TABLE {ctx.merged_into[index]}: "
                   + " ".join(item.text.split())]
            notes.append(Note("alter-table-add-constraint", FIXABLE,
                              f"merged into CREATE TABLE {ctx.merged_into[index]}"))
        elif node is None:
            out = None
            if item.copy_data is not None and (
                    "row-limit" in rules_here or len(item.copy_data) > ROW_LIMIT * 2):
                out = _rewrite_copy(checked.node(index), item.text, rules_here, ctx, notes,
                                    item.copy_data)
        else:
            out = _rewrite(node, item.text, rules_here, ctx, notes, item.copy_data)
            _record_columns(node if out is None else None, ctx)
        if "index-before-table" in rules_here and isinstance(node, ast.IndexStmt):
            target = ctx.created_at.get(_rel(node.relation))
            if target is not None and target > index:
                moved = out if out is not None else [item.text.rstrip().rstrip(";") + ";"]
                ctx.deferred.setdefault(target, []).extend(moved)
                out = [f"-- dsqlkit: moved after CREATE TABLE {_rel(node.relation)}: "
                       + " ".join(item.text.split())]
                notes.append(Note("index-before-table", FIXABLE,
                                  rule("index-before-table").hint))
        if index in ctx.deferred:
            out = (out if out is not None else [item.text.rstrip().rstrip(";") + ";"]) + \
                ctx.deferred.pop(index)
        end = item.end
        if item.copy_data is not None:
            end = _copy_block_end(text, item.copy_data_start + len(item.copy_data))
        review = [n.hint for n in notes if n.label == NEEDS_REVIEW]
        if out and review and not out[0].startswith("-- dsqlkit: needs review"):
            # A rewrite that changes meaning says so where it stands, not only in the report.
            out = [f"-- dsqlkit: needs review: {'; '.join(dict.fromkeys(review))}", *out]
        if out is not None:
            if item.copy_data is None and text[end:end + 1] == ";":
                end += 1
            replacements.append((item.start, end, out))
        for note in notes:
            result.notes.append((index, note))
            key = (index, note.rule)
            if key in result.labels:
                label, hint = result.labels[key]
                worst = max(label, note.label, key=_SEVERITY.index)
                result.labels[key] = (worst, hint if note.hint in hint else f"{hint}; {note.hint}")
            else:
                result.labels[key] = (note.label, note.hint)
        for name in rules_here:
            if (index, name) not in result.labels:
                default = rule(name)
                unhandled = out is None and name not in _SPLIT_RULES
                result.labels[(index, name)] = (
                    UNFIXABLE if unhandled else default.label, default.hint)
    if emit:
        result.text = _emit(text, replacements, ctx)
    return result


_SEVERITY = [FIXABLE, NEEDS_REVIEW, UNFIXABLE]
# Statements about an object, which fail when the object's CREATE was commented out.
_FOLLOWERS = frozenset({"CommentStmt", "AlterOwnerStmt", "AlterFunctionStmt"})
# Rules the output sequencing settles (transactions split), whatever the statement's rewrite.
_SPLIT_RULES = frozenset({"multiple-ddl", "ddl-dml-mix"})


def _copy_block_end(text: str, data_end: int) -> int:
    eol = text.find("\n", data_end)
    return len(text) if eol < 0 else eol


def _plan_merges(ctx: _Context) -> None:
    """pg_dump adds primary keys and unique constraints after the tables; DSQL only takes them in
    CREATE TABLE (a table is stored in primary-key order), so they move there."""
    created: dict[str, int] = {}
    for index, item in enumerate(ctx.checked.statements):
        if item.stmt.node == "CreateStmt":
            node = ctx.checked.node(index)
            if isinstance(node, ast.CreateStmt):
                created[_rel(node.relation)] = index
        if item.stmt.node != "AlterTableStmt" or not ctx.checked.findings[index]:
            continue
        node = ctx.checked.node(index)
        if not isinstance(node, ast.AlterTableStmt) or len(node.cmds or ()) != 1:
            continue
        cmd = (node.cmds or (None,))[0]
        table = _rel(node.relation)
        if (isinstance(cmd, ast.AlterTableCmd) and cmd.subtype == _AT.AT_AddConstraint
                and isinstance(cmd.def_, ast.Constraint)
                and cmd.def_.contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE)
                and not cmd.def_.indexname and table in created):
            ctx.merged.setdefault(table, []).append(cmd.def_)
            ctx.merged_into[index] = table
    ctx.created_at = created


# ---------------------------------------------------------------------------------------------
# Statement rewrites: each returns the replacement statements, or None to leave it as it is.
# ---------------------------------------------------------------------------------------------


def _rewrite(node: ast.Node, text: str, rules_here: set[str], ctx: _Context, notes: list[Note],
             copy_data: str | None) -> list[str] | None:
    follows = _follows_commented(node, ctx)
    if follows is not None:
        notes.extend(Note(r, NEEDS_REVIEW, follows) for r in rules_here or {"follows"})
        return [commented_out(text, follows)]
    handler = _HANDLERS.get(type(node))
    if isinstance(node, ast.CreateStmt) and _rel(node.relation) in ctx.merged:
        rules_here = rules_here | {"merge"}
    if copy_data is not None:
        return _rewrite_copy(node, text, rules_here, ctx, notes, copy_data)
    if "undefined-type" in rules_here and _names_enum_domains(text, ctx):
        notes.append(Note("undefined-type", NEEDS_REVIEW, "the enum type became a domain above"))
        rules_here = rules_here - {"undefined-type"}
    if isinstance(node, ast.IndexStmt) and any(
            p.name in ctx.jsonb_arrays.get(_rel(node.relation), set())
            for p in node.indexParams or () if isinstance(p, ast.IndexElem)):
        # The column became jsonb above, which DSQL cannot index.
        rules_here = rules_here | {"index-type"}
    if not rules_here - _SPLIT_RULES:
        return None  # the output sequencing splits its transaction; the statement stays
    if "undefined-role" in rules_here:
        notes.append(Note("undefined-role", NEEDS_REVIEW, rule("undefined-role").hint))
        return [commented_out(text, "the role is not created by this script")]
    if handler is not None:
        out = handler(node, text, rules_here, ctx, notes)
        if out is not None:
            return out
    comment_rules = {r for r in rules_here if rule(r).label == NEEDS_REVIEW
                     and r in _COMMENT_OUT_RULES}
    if comment_rules:
        for r in comment_rules:
            notes.append(Note(r, NEEDS_REVIEW, rule(r).hint))
        _remember_commented(node, ctx)
        return [commented_out(text, "; ".join(sorted(rule(r).hint for r in comment_rules)))]
    if rules_here <= {"vacuum", "tablespace"}:
        for r in rules_here:
            notes.append(Note(r, FIXABLE, rule(r).hint))
        return [f"-- dsqlkit: dropped ({rule(next(iter(rules_here))).hint}): "
                + " ".join(text.split())]
    return None


_COMMENT_OUT_RULES = frozenset({
    "extension", "database", "foreign-data", "listen-notify", "alter-system", "trigger",
    "unsupported-statement", "procedure", "function-language", "drop-object", "rename-object",
    "alter-type", "grant-object", "system-entity", "set-parameter", "set-transaction",
    "alter-type-owner", "undefined-role",
})


def _names_enum_domains(text: str, ctx: _Context) -> bool:
    types = analyze(text).statements[0].user_types
    return bool(types) and all(t[-1] in ctx.enum_domains for t in types)


def _remember_commented(node: ast.Node, ctx: _Context) -> None:
    if isinstance(node, ast.CreateExtensionStmt) and node.extname:
        ctx.commented.setdefault("extension", set()).add(node.extname)
    elif isinstance(node, ast.CreateFunctionStmt):
        ctx.commented.setdefault("function", set()).add(_names(node.funcname)[-1])
    elif isinstance(node, ast.CreateTrigStmt) and node.trigname:
        ctx.commented.setdefault("trigger", set()).add(node.trigname)


def _follows_commented(node: ast.Node, ctx: _Context) -> str | None:
    """A COMMENT ON / ALTER ... OWNER of an object whose CREATE was commented out fails too."""
    target: tuple[str, str] | None = None
    if isinstance(node, ast.CommentStmt):
        obj = node.object
        kind = node.objtype.name if node.objtype is not None else ""
        if kind == "OBJECT_EXTENSION" and isinstance(obj, ast.String):
            target = ("extension", obj.sval or "")
        elif kind in ("OBJECT_FUNCTION", "OBJECT_PROCEDURE") and isinstance(
                obj, ast.ObjectWithArgs):
            target = ("function", _names(obj.objname)[-1])
        elif kind == "OBJECT_TRIGGER" and isinstance(obj, tuple):
            target = ("trigger", _names(obj)[-1])
    elif isinstance(node, ast.AlterOwnerStmt | ast.AlterFunctionStmt):
        obj = node.object if isinstance(node, ast.AlterOwnerStmt) else node.func
        if isinstance(obj, ast.ObjectWithArgs):
            target = ("function", _names(obj.objname)[-1])
    if target is not None and target[1] in ctx.commented.get(target[0], set()):
        return f"the {target[0]} {target[1]} was commented out above"
    return None


def _create_table(node: ast.CreateStmt, text: str, rules_here: set[str], ctx: _Context,
                  notes: list[Note]) -> list[str] | None:
    table = _rel(node.relation)
    if rules_here & {"partition", "inherits", "typed-table", "column-limit", "key-columns",
                     "create-table-as"}:
        return None
    after: list[str] = []
    if node.relation is not None and node.relation.relpersistence in ("t", "u"):
        temp = node.relation.relpersistence == "t"
        node.relation.relpersistence = "p"
        r = "temp-table" if temp else "unlogged-table"
        notes.append(Note(r, NEEDS_REVIEW if temp else FIXABLE, rule(r).hint))
        node.oncommit = OnCommitAction.ONCOMMIT_NOOP
    if node.options or node.tablespacename:
        node.options = None
        node.tablespacename = None
        for r in ("storage-parameters", "tablespace"):
            notes.append(Note(r, FIXABLE, rule(r).hint))
    elements: list[Any] = []
    for element in node.tableElts or ():
        if isinstance(element, ast.ColumnDef):
            _fix_column(element, table, ctx, notes)
            elements.append(element)
        elif isinstance(element, ast.Constraint) and element.contype == ConstrType.CONSTR_EXCLUSION:
            notes.append(Note("exclusion-constraint", NEEDS_REVIEW, "dropped: "
                              + rule("exclusion-constraint").hint))
        else:
            elements.append(element)
    for constraint in ctx.merged.pop(table, []):
        elements.append(constraint)
    node.tableElts = tuple(elements)
    ctx.columns[table] = {c.colname or "": _type_name(c.typeName) for c in elements
                          if isinstance(c, ast.ColumnDef)}
    return [_sql(node) + ";", *after]


def _type_name(type_name: ast.TypeName | None) -> str:
    if type_name is None:
        return ""
    names = _names(type_name.names)
    base = names[-1] if names else ""
    return base + ("[]" if type_name.arrayBounds else "")


def _fix_column(column: ast.ColumnDef, table: str, ctx: _Context, notes: list[Note]) -> None:
    type_name = column.typeName
    names = _names(type_name.names) if type_name is not None else []
    base = names[-1] if names else ""
    constraints = list(column.constraints or ())
    if type_name is not None and base in ("serial", "serial4", "bigserial", "serial8",
                                          "smallserial", "serial2") and not type_name.arrayBounds:
        column.typeName = ast.TypeName(names=(ast.String(sval="pg_catalog"),
                                              ast.String(sval="int8")), typemod=-1)
        constraints.append(_identity_constraint("d"))
        notes.append(Note("serial", NEEDS_REVIEW, rule("serial").hint))
    elif type_name is not None and type_name.arrayBounds:
        column.typeName = ast.TypeName(names=(ast.String(sval="jsonb"),), typemod=-1)
        # An array default becomes the JSON array of the same elements (arrays still work
        # inside expressions on DSQL, only not as stored columns).
        for c in constraints:
            if (isinstance(c, ast.Constraint) and c.contype == ConstrType.CONSTR_DEFAULT
                    and c.raw_expr is not None):
                c.raw_expr = ast.FuncCall(funcname=(ast.String(sval="to_jsonb"),),
                                          args=(c.raw_expr,), funcformat=_COERCE_CALL)
        ctx.jsonb_arrays.setdefault(table, set()).add(column.colname or "")
        notes.append(Note("column-type", NEEDS_REVIEW, f"{column.colname} {base}[] becomes jsonb "
                          "(a JSON array): array operators become jsonb ones (@> and ? work "
                          "on both)"))
    elif base in _TEXT_LIKE:
        column.typeName = ast.TypeName(names=(ast.String(sval="text"),), typemod=-1)
        notes.append(Note("column-type", NEEDS_REVIEW, f"{column.colname} {base} becomes text: "
                          "its operators and validation are gone"))
    elif base == "money":
        ctx.money.setdefault(table, set()).add(column.colname or "")
        column.typeName = ast.TypeName(names=(ast.String(sval="pg_catalog"),
                                              ast.String(sval="numeric")),
                                       typmods=(ast.A_Const(val=ast.Integer(ival=19)),
                                                ast.A_Const(val=ast.Integer(ival=2))),
                                       typemod=-1)
        notes.append(Note("column-type", NEEDS_REVIEW, f"{column.colname} money becomes "
                          "numeric(19,2): no currency formatting"))
    if column.collClause is not None:
        collation = (_names(column.collClause.collname) or [""])[-1].lower()
        column.collClause = None
        exact = collation in _C_COLLATIONS
        notes.append(Note("collate", FIXABLE if exact else NEEDS_REVIEW,
                          "COLLATE dropped" + ("" if exact else
                                               f": {collation} ordering becomes C (byte) order")))
    fixed: list[Any] = []
    for c in constraints:
        if isinstance(c, ast.Constraint) and c.contype == ConstrType.CONSTR_IDENTITY:
            _fix_identity_options(c, notes)
            internal = (_names(column.typeName.names) or [""])[-1] if column.typeName else ""
            if internal in ("int4", "int2", "integer", "smallint", "int"):
                column.typeName = ast.TypeName(names=(ast.String(sval="pg_catalog"),
                                                      ast.String(sval="int8")), typemod=-1)
                notes.append(Note("identity-type", NEEDS_REVIEW, rule("identity-type").hint))
        fixed.append(c)
    column.constraints = tuple(fixed) if fixed else None


def _identity_constraint(when: str) -> ast.Constraint:
    return ast.Constraint(contype=ConstrType.CONSTR_IDENTITY, generated_when=when,
                          options=(_cache_one(),))


def _cache_one() -> ast.DefElem:
    return ast.DefElem(defname="cache", arg=ast.Integer(ival=1),
                       defaction=DefElemAction.DEFELEM_UNSPEC)


def _fix_identity_options(c: ast.Constraint, notes: list[Note]) -> None:
    options = [o for o in c.options or () if isinstance(o, ast.DefElem)]
    cache = next((o for o in options if o.defname == "cache"), None)
    value = cache.arg.ival if cache is not None and isinstance(cache.arg, ast.Integer) else None
    if value == 1 or (value is not None and value >= 65536):
        return
    options = [o for o in options if o.defname != "cache"] + [_cache_one()]
    c.options = tuple(options)
    notes.append(Note("identity-cache", FIXABLE, rule("identity-cache").hint))


def _sequence(node: ast.CreateSeqStmt | ast.AlterSeqStmt, text: str, rules_here: set[str],
              ctx: _Context, notes: list[Note]) -> list[str] | None:
    options = [o for o in node.options or () if isinstance(o, ast.DefElem)]
    if "sequence-cache" in rules_here:
        options = [o for o in options if o.defname != "cache"] + [_cache_one()]
        notes.append(Note("sequence-cache", FIXABLE, rule("sequence-cache").hint))
    as_type = next((o for o in options if o.defname == "as"), None)
    if "sequence-type" in rules_here and as_type is not None:
        internal = _type_name(as_type.arg) if isinstance(as_type.arg, ast.TypeName) else ""
        options = [o for o in options if o.defname != "as"]
        bound = {"int4": 2147483647, "int2": 32767}.get(internal)
        has_max = any(o.defname == "maxvalue" and o.arg is not None for o in options)
        if bound is not None:
            if not has_max:
                options = [o for o in options if o.defname != "maxvalue"]
                options.append(ast.DefElem(defname="maxvalue", arg=ast.Integer(ival=bound),
                                           defaction=DefElemAction.DEFELEM_UNSPEC))
            notes.append(Note("sequence-type", FIXABLE, f"AS {internal} dropped, MAXVALUE {bound} "
                              "kept: DSQL sequences are bigint"))
        else:
            notes.append(Note("sequence-type", NEEDS_REVIEW, f"AS {internal or 'its type'} "
                              "dropped: DSQL sequences are bigint"))
    node.options = tuple(options)
    return [_sql(node) + ";"]


def _create_enum(node: ast.CreateEnumStmt, text: str, rules_here: set[str], ctx: _Context,
                 notes: list[Note]) -> list[str] | None:
    name = ".".join(_quote(n) for n in _names(node.typeName))
    values = ", ".join(_literal(v) for v in _names(node.vals))
    ctx.enum_domains.add(_names(node.typeName)[-1])
    notes.append(Note("create-type", NEEDS_REVIEW, rule("create-type").hint))
    return [f"CREATE DOMAIN {name} AS text CHECK (VALUE IN ({values}));"]


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _index(node: ast.IndexStmt, text: str, rules_here: set[str], ctx: _Context,
           notes: list[Note]) -> list[str] | None:
    if "key-columns" in rules_here:
        return None
    table = _rel(node.relation)
    method = (node.accessMethod or "btree").lower()
    params = [p for p in node.indexParams or () if isinstance(p, ast.IndexElem)]
    columns = ctx.columns.get(table, {})
    unindexable = [p.name for p in params if p.name and (
        columns.get(p.name, "") in _UNINDEXABLE or p.name in ctx.jsonb_arrays.get(table, set()))]
    if method not in ("btree", "hash", "brin") or unindexable:
        why = (f"DSQL has no {method} indexes" if method not in ("btree", "hash", "brin")
               else f"DSQL cannot index {', '.join(unindexable)} (jsonb, json and bytea columns "
                    "have no index support)")
        extra = "index-method" if method != "btree" else "index-type"
        for r in rules_here | {extra}:
            notes.append(Note(r, NEEDS_REVIEW, why + "; the index is commented out"))
        return [commented_out(text, why)]
    if method != "btree":
        notes.append(Note("index-method", FIXABLE, f"{method} becomes btree (equality and range "
                          "lookups are served the same)"))
    node.accessMethod = "btree"
    for p in params:
        if p.ordering not in (None, SortByDir.SORTBY_DEFAULT):
            p.ordering = SortByDir.SORTBY_DEFAULT
            notes.append(Note("index-sort-order", FIXABLE, rule("index-sort-order").hint))
        if p.opclass:
            p.opclass = None
            p.opclassopts = None
            notes.append(Note("index-opclass", FIXABLE, "operator class dropped: in DSQL's C "
                              "collation the default btree order is byte order"))
        if p.collation:
            collation = (_names(p.collation) or [""])[-1].lower()
            p.collation = None
            notes.append(Note("index-collate", FIXABLE if collation in _C_COLLATIONS
                              else NEEDS_REVIEW, "COLLATE dropped"))
    if node.concurrent:
        node.concurrent = False
        notes.append(Note("index-concurrently", FIXABLE, rule("index-concurrently").hint))
    if "sync-index" in rules_here:
        notes.append(Note("sync-index", FIXABLE, rule("sync-index").hint))
    if "index-name" in rules_here:
        notes.append(Note("index-name", FIXABLE, rule("index-name").hint))
    node.options = None
    node.tableSpace = None
    # DSQL's documented syntax has no USING: the default method is left implicit.
    sql = _sql(node).replace(" USING btree ", " ", 1)
    sql = re.sub(r"^CREATE (UNIQUE )?INDEX ", lambda m: f"CREATE {m.group(1) or ''}INDEX ASYNC ",
                 sql, count=1)
    return [sql + ";"]


def _alter_table(node: ast.AlterTableStmt, text: str, rules_here: set[str], ctx: _Context,
                 notes: list[Note]) -> list[str] | None:
    if node.relation is None:
        return None
    table = _qual(node.relation)
    out: list[str] = []
    kept: list[ast.AlterTableCmd] = []
    changed = False
    for cmd in node.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            continue
        extra = _alter_cmd(cmd, table, node.relation, ctx, notes)
        if extra is None:
            kept.append(cmd)
        else:
            changed = True
            out.extend(extra)
    if not changed and "alter-table-validate" not in rules_here:
        return None
    if kept:
        node.cmds = tuple(kept)
        out.insert(0, _sql(node) + ";")
    return out


def _alter_cmd(cmd: ast.AlterTableCmd, table: str, relation: ast.RangeVar, ctx: _Context,
               notes: list[Note]) -> list[str] | None:
    """The statements replacing one ALTER TABLE action, or None to keep it."""
    subtype = cmd.subtype
    if subtype == _AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        c = cmd.def_
        if (c.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK)
                and not c.skip_validation):
            if not c.conname:
                c.conname = _constraint_name(relation, c)
            c.skip_validation = True
            c.initially_valid = False
            notes.append(Note("alter-table-add-constraint", FIXABLE, "added NOT VALID and "
                              "validated by ALTER TABLE ASYNC ... VALIDATE CONSTRAINT (a job; "
                              "existing rows are checked when it runs)"))
            single = ast.AlterTableStmt(relation=relation, cmds=(cmd,),
                                        objtype=_object_table())
            return [_sql(single) + ";", f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT "
                    f"{_quote(c.conname)};"]
        if c.contype == ConstrType.CONSTR_UNIQUE and not c.indexname:
            cols = ", ".join(_quote(k) for k in _names(c.keys))
            name = c.conname or f"{relation.relname}_{'_'.join(_names(c.keys))}_key"
            notes.append(Note("alter-table-add-constraint", NEEDS_REVIEW, "a unique index built "
                              "asynchronously replaces the constraint"))
            return [f"CREATE UNIQUE INDEX ASYNC {_quote(name)} ON {table} ({cols});"]
        return None
    if subtype == _AT.AT_ValidateConstraint:
        notes.append(Note("alter-table-validate", FIXABLE, rule("alter-table-validate").hint))
        return [f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {_quote(cmd.name or '')};"]
    if subtype == _AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        return _add_column(cmd.def_, table, relation, ctx, notes)
    if subtype == _AT.AT_SetNotNull and cmd.name:
        return _not_null_check(cmd.name, table, relation, notes, "alter-table-action")
    if subtype == _AT.AT_AlterColumnType and cmd.name and isinstance(cmd.def_, ast.ColumnDef):
        return _change_type(cmd.name, cmd.def_, table, notes)
    if subtype in (_AT.AT_AddIdentity, _AT.AT_SetIdentity):
        if isinstance(cmd.def_, ast.Constraint):
            _fix_identity_options(cmd.def_, notes)
        return None
    if subtype in (_AT.AT_SetRelOptions, _AT.AT_ResetRelOptions, _AT.AT_ClusterOn,
                   _AT.AT_DropCluster, _AT.AT_SetStatistics, _AT.AT_SetTableSpace,
                   _AT.AT_ReplicaIdentity, _AT.AT_SetLogged):
        notes.append(Note("alter-table-action", FIXABLE, "a storage or planner setting DSQL "
                          "manages itself: dropped"))
        return []
    if subtype in (_AT.AT_EnableTrig, _AT.AT_DisableTrig, _AT.AT_EnableTrigAll,
                   _AT.AT_DisableTrigAll, _AT.AT_EnableTrigUser, _AT.AT_DisableTrigUser,
                   _AT.AT_EnableRowSecurity, _AT.AT_DisableRowSecurity, _AT.AT_ForceRowSecurity,
                   _AT.AT_NoForceRowSecurity):
        notes.append(Note("alter-table-action", NEEDS_REVIEW, "DSQL has no triggers or row "
                          "security: dropped"))
        return []
    return None


def _object_table() -> Any:
    from pglast.enums import ObjectType

    return ObjectType.OBJECT_TABLE


def _constraint_name(relation: ast.RangeVar, c: ast.Constraint) -> str:
    cols = _names(c.fk_attrs) if c.contype == ConstrType.CONSTR_FOREIGN else []
    suffix = "fkey" if c.contype == ConstrType.CONSTR_FOREIGN else "check"
    return "_".join([relation.relname or "t", *cols, suffix])


def _not_null_check(column: str, table: str, relation: ast.RangeVar, notes: list[Note],
                    rule_name: str) -> list[str]:
    name = f"{relation.relname}_{column}_not_null"
    notes.append(Note(rule_name, NEEDS_REVIEW, f"NOT NULL on {column} becomes CHECK ({column} IS "
                      "NOT NULL), validated asynchronously (the column stays nullable in the "
                      "catalog)"))
    return [f"ALTER TABLE {table} ADD CONSTRAINT {_quote(name)} CHECK ({_quote(column)} IS NOT "
            "NULL) NOT VALID;",
            f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {_quote(name)};"]


def _add_column(column: ast.ColumnDef, table: str, relation: ast.RangeVar, ctx: _Context,
                notes: list[Note]) -> list[str] | None:
    constraints = [c for c in column.constraints or () if isinstance(c, ast.Constraint)]
    before = len(notes)
    _fix_column(column, relation.relname or "", ctx, notes)
    if not constraints:
        if len(notes) == before:
            return None
        plain = ast.AlterTableStmt(relation=relation, objtype=_object_table(), cmds=(
            ast.AlterTableCmd(subtype=_AT.AT_AddColumn, def_=column, missing_ok=False),))
        return [_sql(plain) + ";"]
    name = column.colname or ""
    column.constraints = None
    bare = ast.AlterTableStmt(relation=relation, objtype=_object_table(), cmds=(ast.AlterTableCmd(
        subtype=_AT.AT_AddColumn, def_=column, missing_ok=False),))
    out = [_sql(bare) + ";"]
    for c in constraints:
        if c.contype == ConstrType.CONSTR_DEFAULT and c.raw_expr is not None:
            value = _sql(c.raw_expr)
            out.append(f"ALTER TABLE {table} ALTER COLUMN {_quote(name)} SET DEFAULT {value};")
            out.append(f"UPDATE {table} SET {_quote(name)} = {value} WHERE {_quote(name)} IS NULL;")
        elif c.contype == ConstrType.CONSTR_NOTNULL:
            out.extend(_not_null_check(name, table, relation, notes, "alter-table-add-column"))
        elif c.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK):
            if c.contype == ConstrType.CONSTR_FOREIGN and not c.fk_attrs:
                c.fk_attrs = (ast.String(sval=name),)
            c.conname = c.conname or _constraint_name(relation, c)
            c.skip_validation = True
            c.initially_valid = False
            add = ast.AlterTableStmt(relation=relation, objtype=_object_table(), cmds=(
                ast.AlterTableCmd(subtype=_AT.AT_AddConstraint, def_=c),))
            out.append(_sql(add) + ";")
            out.append(f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT {_quote(c.conname)};")
        elif c.contype == ConstrType.CONSTR_UNIQUE:
            index = f"{relation.relname}_{name}_key"
            out.append(f"CREATE UNIQUE INDEX ASYNC {_quote(index)} ON {table} ({_quote(name)});")
        elif c.contype == ConstrType.CONSTR_NULL:
            continue
        else:
            return None
    notes.append(Note("alter-table-add-column", NEEDS_REVIEW, rule("alter-table-add-column").hint))
    return out


def _change_type(column: str, definition: ast.ColumnDef, table: str,
                 notes: list[Note]) -> list[str]:
    """DSQL cannot change a column's type: add a new column, copy, drop the old, rename."""
    new_type = _sql(definition.typeName) if definition.typeName is not None else "text"
    temp = _quote(f"{column}__dsqlkit_new")
    col = _quote(column)
    using = _sql(definition.raw_default) if definition.raw_default is not None else None
    value = using if using is not None else f"{col}::{new_type}"
    notes.append(Note("alter-table-action", NEEDS_REVIEW, f"{column} is rebuilt as {new_type} "
                      "(new column, UPDATE, drop, rename): defaults, constraints and indexes on "
                      "it must be recreated, and the UPDATE is limited to 3,000 rows"))
    return [f"ALTER TABLE {table} ADD COLUMN {temp} {new_type};",
            f"UPDATE {table} SET {temp} = {value};",
            f"ALTER TABLE {table} DROP COLUMN {col};",
            f"ALTER TABLE {table} RENAME COLUMN {temp} TO {col};"]


def _transaction(node: ast.TransactionStmt, text: str, rules_here: set[str], ctx: _Context,
                 notes: list[Note]) -> list[str] | None:
    if "isolation-level" in rules_here:
        notes.append(Note("isolation-level", NEEDS_REVIEW, rule("isolation-level").hint))
        fixed = re.sub(r"(?i)isolation\s+level\s+(serializable|read\s+committed|read\s+"
                       r"uncommitted)", "ISOLATION LEVEL REPEATABLE READ", text)
        return [fixed.rstrip().rstrip(";") + ";"]
    return None


def _set(node: ast.VariableSetStmt, text: str, rules_here: set[str], ctx: _Context,
         notes: list[Note]) -> list[str] | None:
    if rules_here & {"isolation-level", "set-transaction"}:
        for r in rules_here & {"isolation-level", "set-transaction"}:
            notes.append(Note(r, NEEDS_REVIEW, "DSQL runs every transaction at REPEATABLE READ "
                              "and refuses SET TRANSACTION; the statement is commented out"))
        return [commented_out(text, "DSQL runs every transaction at REPEATABLE READ")]
    if "set-parameter" in rules_here and (node.name or "").lower() in _DUMP_SETTINGS:
        notes.append(Note("set-parameter", FIXABLE, "a setting pg_dump writes for PostgreSQL; "
                          "it changes nothing on DSQL and is dropped"))
        return [f"-- dsqlkit: dropped (not settable on DSQL): {' '.join(text.split())}"]
    return None


def _truncate(node: ast.TruncateStmt, text: str, rules_here: set[str], ctx: _Context,
              notes: list[Note]) -> list[str] | None:
    notes.append(Note("truncate", NEEDS_REVIEW, rule("truncate").hint))
    return [f"DELETE FROM {_qual(rv)};" for rv in node.relations or ()
            if isinstance(rv, ast.RangeVar)]


def _view(node: ast.ViewStmt, text: str, rules_here: set[str], ctx: _Context,
          notes: list[Note]) -> list[str] | None:
    if "temp-view" in rules_here and node.view is not None:
        node.view.relpersistence = "p"
        notes.append(Note("temp-view", NEEDS_REVIEW, rule("temp-view").hint))
        return [_sql(node) + ";"]
    return None


_HANDLERS: dict[type, Callable[..., list[str] | None]] = {
    ast.CreateStmt: _create_table, ast.CreateSeqStmt: _sequence, ast.AlterSeqStmt: _sequence,
    ast.CreateEnumStmt: _create_enum, ast.IndexStmt: _index, ast.AlterTableStmt: _alter_table,
    ast.TransactionStmt: _transaction, ast.VariableSetStmt: _set, ast.TruncateStmt: _truncate,
    ast.ViewStmt: _view,
}


def _record_columns(node: ast.Node | None, ctx: _Context) -> None:
    if isinstance(node, ast.CreateStmt):
        ctx.columns[_rel(node.relation)] = {
            c.colname or "": _type_name(c.typeName) for c in node.tableElts or ()
            if isinstance(c, ast.ColumnDef)}


# ---------------------------------------------------------------------------------------------
# COPY data
# ---------------------------------------------------------------------------------------------


def _rewrite_copy(node: ast.Node | None, text: str, rules_here: set[str], ctx: _Context,
                  notes: list[Note], data: str) -> list[str] | None:
    if not isinstance(node, ast.CopyStmt) or node.relation is None:
        return None
    table = _rel(node.relation)
    arrays = ctx.jsonb_arrays.get(table, set())
    columns = _names(node.attlist) or list(ctx.columns.get(table, {}))
    rows = list(copy_rows(data))
    convert = [i for i, c in enumerate(columns) if c in arrays]
    money = [i for i, c in enumerate(columns)
             if ctx.money.get(table, set()) and c in ctx.money[table]]
    csv = any(isinstance(o, ast.DefElem) and o.defname == "format"
              and str(getattr(o.arg, "sval", "")).lower() == "csv" for o in node.options or ())
    if (convert or money) and not csv:
        if ctx.emit:
            rows = [_convert_row(r, convert, money) for r in rows]
        notes.append(Note("column-type", NEEDS_REVIEW, "array values in the COPY data are written "
                          "as JSON arrays, money values as plain numbers"))
    if not (convert or money) and len(rows) <= ROW_LIMIT and "row-limit" not in rules_here:
        return None
    head = text.rstrip().rstrip(";") + ";"
    blocks: list[str] = []
    for start in range(0, max(len(rows), 1), ROW_LIMIT):
        chunk = rows[start:start + ROW_LIMIT]
        blocks.append(head + "\n" + "".join(r + "\n" for r in chunk) + "\\.")
    if len(blocks) > 1:
        notes.append(Note("row-limit", NEEDS_REVIEW, f"the {len(rows)} rows are loaded in "
                          f"{len(blocks)} COPY statements of at most {ROW_LIMIT} rows (each its "
                          "own transaction)"))
    return blocks


def _convert_row(row: str, convert: list[int], money: list[int]) -> str:
    fields = row.split("\t")
    for i in convert:
        if i < len(fields) and fields[i] != "\\N":
            fields[i] = _array_to_json(_unescape_copy(fields[i])).replace("\\", "\\\\")
    for i in money:
        if i < len(fields) and fields[i] != "\\N":
            # money's text form carries the currency symbol and group separators (lc_monetary).
            fields[i] = re.sub(r"[^0-9.\-]", "", fields[i].replace("(", "-"))
    return "\t".join(fields)


def _unescape_copy(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(
        m.group(1), m.group(1)), value)


def _array_to_json(literal: str) -> str:
    """A one-dimensional PostgreSQL array literal as a JSON array of strings (NULL as null)."""
    body = literal.strip()
    if not (body.startswith("{") and body.endswith("}")):
        return json.dumps(body)
    items: list[str | None] = []
    i, inner = 0, body[1:-1]
    while i < len(inner):
        if inner[i] == '"':
            j, buf = i + 1, []
            while j < len(inner) and inner[j] != '"':
                if inner[j] == "\\" and j + 1 < len(inner):
                    j += 1
                buf.append(inner[j])
                j += 1
            items.append("".join(buf))
            i = j + 1
        else:
            j = inner.find(",", i)
            j = len(inner) if j < 0 else j
            word = inner[i:j].strip()
            items.append(None if word.upper() == "NULL" else word)
            i = j
        if i < len(inner) and inner[i] == ",":
            i += 1
    return json.dumps(items, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Output: replacements applied, transactions split where DSQL's rules need it
# ---------------------------------------------------------------------------------------------


def _emit(text: str, replacements: list[tuple[int, int, list[str]]], ctx: _Context) -> str:
    pieces: list[str] = []
    last = 0
    by_start = {start: (end, out) for start, end, out in replacements}
    rules = TransactionRules(row_limit=None, age_limit=None)
    if ctx.mode == "file":
        rules.completed(analyze("BEGIN").statements[0])
    if ctx.mode == "query":
        rules.begin_batch()
    for item in ctx.checked.statements:
        if item.start < last:
            continue
        pieces.append(text[last:item.start])
        end, out = by_start.get(item.start, (item.end, [item.text]))
        if item.copy_data is not None and item.start not in by_start:
            end = _copy_block_end(text, item.copy_data_start + len(item.copy_data))
            out = [text[item.start:end]]
        emitted: list[str] = []
        for statement in out:
            head = statement.split("\n\\.")[0]
            analyzed = ((item.stmt,) if item.start not in by_start
                        else analyze(head).statements)
            for stmt in analyzed:
                if stmt.kind == "empty" or stmt.unparsed:
                    continue
                # Only the transaction rules matter here: a statement left unfixable is judged
                # as if it ran.
                stmt = dataclasses.replace(stmt, refusal=None, refusals=(), waiver=None)
                if rules.check(stmt).refusal is not None:
                    emitted.append(_boundary(ctx.mode, rules))
                    rules.check(stmt)
                rules.completed(stmt)
            emitted.append(statement)
        if item.start in by_start:
            pieces.append("\n".join(emitted))
        else:
            pieces.append("\n".join(emitted) if len(emitted) > 1 else text[item.start:end])
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _boundary(mode: Mode, rules: TransactionRules) -> str:
    """End the transaction DSQL's rules need ended, and open the next one the same way."""
    head = ("-- dsqlkit: needs review: transaction split (DSQL: one DDL per transaction, no DDL "
            "with DML)\nCOMMIT;")
    return head + "\nBEGIN;" if resplit(rules, mode) else head
