"""What the rules gather about one statement while they walk its parse tree, and the helpers
every rule module shares (the handler registry, literal values, names)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parser

from dsqlkit.local.dialect.model import (
    AsyncJob,
    Kind,
    LocalAnswer,
    Locking,
    Refusal,
    Relation,
    TclAction,
    WaitForJob,
    Waiver,
    _f,
)

Token = parser.Token


def _parse_error_parts(exc: parser.ParseError) -> tuple[str, int | None]:
    args = exc.args
    message = str(args[0]) if args else str(exc)
    position = args[1] if len(args) > 1 and isinstance(args[1], int) else None
    return message, position


def _tok_text(sql: str, tok: Token) -> str:
    return sql[tok.start:tok.end + 1]


def _is_word(sql: str, tok: Token, word: str) -> bool:
    """An unquoted identifier spelled ``word`` (DSQL keywords PostgreSQL does not have)."""
    return tok.name == "IDENT" and _tok_text(sql, tok).lower() == word


@dataclass(slots=True)
class _Piece:
    sql: str
    start: int
    end: int
    text: str
    parse_text: str
    async_token: Token | None
    dsql_syntax: str | None
    tokens: list[Token]


@dataclass(slots=True)
class _Facts:
    kind: Kind = "utility"
    refusal: Refusal | None = None
    rule: str | None = None
    writes_rows: bool = False
    values_rows: int | None = None
    locking: Locking | None = None
    tcl_action: TclAction | None = None
    isolation: str | None = None
    read_only: bool | None = None
    set_param: str | None = None
    set_value: str | None = None
    is_local: bool = False
    show_param: str | None = None
    local_answer: LocalAnswer | None = None
    job: AsyncJob | None = None
    wait_for_job: WaitForJob | None = None
    waiver: Waiver | None = None
    refusal_if_waived: Refusal | None = None
    waiver_rule: str | None = None
    drop_columns: list[tuple[Relation, str]] = field(default_factory=list)
    adopt_indexes: list[tuple[Relation, str]] = field(default_factory=list)
    index_columns: tuple[Relation, tuple[str, ...]] | None = None
    prepared_name: str | None = None
    execute_name: str | None = None
    copy_from_stdin: bool = False
    relations: list[str] = field(default_factory=list)
    dml_cte: bool = False
    explain_analyze: bool = False
    # SQL text the statement has PostgreSQL run later (a SQL function's body, a query
    # passed to query_to_xml()...): DSQL's settings rules apply to it too.
    nested_sql: list[str] = field(default_factory=list)
    refusals: list[tuple[str, Refusal]] = field(default_factory=list)
    user_types: list[tuple[str, ...]] = field(default_factory=list)

    def refuse(self, rule: str, refusal: Refusal) -> None:
        """Record a refusal. The first one is what DSQL answers; the others are what a user would
        meet next after fixing it, which ``dsqlkit check`` reports too."""
        if self.refusal is None:
            self.refusal = refusal
            self.rule = rule
        if (rule, refusal) not in self.refusals:
            self.refusals.append((rule, refusal))

    def refuse_all(self, inner: _Facts) -> None:
        """Take over the refusals of a nested statement (EXPLAIN, PREPARE, CREATE SCHEMA)."""
        for rule, refusal in inner.refusals:
            self.refuse(rule or "unsupported-statement", refusal)


# Statements DSQL refuses by node type, answering "unsupported statement: <node tag>" (the
# PostgreSQL node tag without "Stmt", e.g. Truncate, Createdb, CreateTableAs). Recorded for
# Truncate, CreateExtension, Createdb, CreateTableAs, CompositeType, CreateRange,
# CreateTableSpace, CreateForeignTable, Listen, Notify, Unlisten, AlterSystem; the rest are
# inferred from that pattern for statements DSQL documents as unsupported (extensions, other
# databases, tablespaces, foreign data, triggers, rules, row-level security, procedural code,
# replication, maintenance commands).
_UNSUPPORTED_STATEMENTS: dict[str, tuple[str, str]] = {
    name: (rule, name.removesuffix("Stmt")) for rule, names in {
        "truncate": ["TruncateStmt"],
        "extension": ["CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt"],
        "database": ["CreatedbStmt", "DropdbStmt", "AlterDatabaseStmt", "AlterDatabaseSetStmt",
                     "AlterDatabaseRefreshCollStmt"],
        "create-table-as": ["CreateTableAsStmt", "RefreshMatViewStmt"],
        "create-type": ["CompositeTypeStmt", "CreateRangeStmt"],
        "tablespace": ["CreateTableSpaceStmt", "DropTableSpaceStmt", "AlterTableSpaceOptionsStmt",
                       "AlterTableMoveAllStmt"],
        "foreign-data": ["CreateForeignTableStmt", "CreateForeignServerStmt",
                         "AlterForeignServerStmt", "CreateFdwStmt", "AlterFdwStmt",
                         "CreateUserMappingStmt", "AlterUserMappingStmt", "DropUserMappingStmt",
                         "ImportForeignSchemaStmt"],
        "listen-notify": ["ListenStmt", "NotifyStmt", "UnlistenStmt"],
        "alter-system": ["AlterSystemStmt"],
        "trigger": ["CreateEventTrigStmt", "AlterEventTrigStmt"],
        "unsupported-statement": [
            "CreatePLangStmt", "CreateConversionStmt", "CreateCastStmt", "CreateOpClassStmt",
            "CreateOpFamilyStmt", "AlterOpFamilyStmt", "AlterOperatorStmt", "CreateTransformStmt",
            "CreateAmStmt", "CreatePublicationStmt", "AlterPublicationStmt",
            "CreateSubscriptionStmt", "AlterSubscriptionStmt", "DropSubscriptionStmt",
            "CreatePolicyStmt", "AlterPolicyStmt", "RuleStmt", "ClusterStmt", "ReindexStmt",
            "CheckPointStmt", "LoadStmt", "SecLabelStmt", "AlterCollationStmt",
            "AlterTSDictionaryStmt", "AlterTSConfigurationStmt", "DoStmt",
            "AlterObjectDependsStmt"],
    }.items() for name in names
}

_DEFAULT_KINDS: dict[str, Kind] = {
    "TruncateStmt": "dml", "ListenStmt": "utility", "NotifyStmt": "utility",
    "UnlistenStmt": "utility", "AlterSystemStmt": "utility", "ClusterStmt": "utility",
    "ReindexStmt": "utility", "CheckPointStmt": "utility", "LoadStmt": "utility",
    "DoStmt": "utility", "DiscardStmt": "utility", "DeallocateStmt": "utility",
    "LockStmt": "utility", "FetchStmt": "utility", "ClosePortalStmt": "utility",
    "ConstraintsSetStmt": "set", "DeclareCursorStmt": "utility",
}

_Handler = Callable[[Any, _Facts, _Piece], None]
_HANDLERS: dict[type[ast.Node], _Handler] = {}


def _handles(*classes: type[ast.Node]) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for cls in classes:
            _HANDLERS[cls] = fn
        return fn
    return register


def _relation(rv: ast.RangeVar | None) -> Relation:
    if rv is None:
        return Relation(None, "")
    return Relation(rv.schemaname, rv.relname or "")


def _defelems(options: Iterable[Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for opt in options or ():
        if isinstance(opt, ast.DefElem) and opt.defname is not None:
            found.setdefault(opt.defname, opt)
    return found


def _const_value(node: Any) -> Any:
    """The Python value of a literal (A_Const, Integer, Float, String, Boolean)."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        node = node.val
    if isinstance(node, ast.Integer):
        return node.ival
    if isinstance(node, ast.Float):
        return float(node.fval) if node.fval is not None else None
    if isinstance(node, ast.String):
        return node.sval
    if isinstance(node, ast.Boolean):
        return node.boolval
    return None


def _string_names(names: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(n.sval for n in names or () if isinstance(n, ast.String) and n.sval is not None)


def _inner_facts(node: Any, piece: _Piece) -> _Facts:
    inner = _Facts()
    if isinstance(node, ast.Node):
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            handler(node, inner, piece)
        else:
            generic = _UNSUPPORTED_STATEMENTS.get(type(node).__name__)
            if generic is not None:
                inner.refuse(generic[0], _f(f"unsupported statement: {generic[1]}"))
    return inner
