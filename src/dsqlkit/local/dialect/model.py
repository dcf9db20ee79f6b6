"""The dialect's vocabulary: what an analysis says about a statement, DSQL's fixed facts
(version, limits, allowed settings) and the refusals several rules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

Kind = Literal["select", "dml", "ddl", "tcl", "set", "show", "utility", "empty"]
TclAction = Literal[
    "begin", "commit", "rollback", "savepoint", "release", "rollback_to",
    "prepare", "commit_prepared", "rollback_prepared",
]
Locking = Literal["for_update", "for_key_share"]
JobKind = Literal["index_build", "validate_constraint"]
Waiver = Literal["sync_index_on_empty_table"]


class Refusal(NamedTuple):
    """An error DSQL answers: SQLSTATE and primary message, exactly as the cluster sends them."""

    sqlstate: str
    message: str


class Relation(NamedTuple):
    """A table as the statement names it (``schema`` is None when unqualified)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A result the proxy sends itself: one row of text columns (or none) and a command tag."""

    tag: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str | None, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class AsyncJob:
    """A DSQL background job (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC ... VALIDATE``).

    DSQL answers the statement at once with a one-row result, column ``job_id`` (26 lowercase
    base32 characters), under the command tag ``CREATE INDEX`` or ``ALTER TABLE``; the work runs
    in the background and shows in ``sys.jobs`` (job_type ``INDEX_BUILD`` or
    ``VALIDATE_CONSTRAINT``). ``sql`` is the statement without ``ASYNC`` for PostgreSQL;
    ``concurrent_sql`` is the ``CREATE INDEX CONCURRENTLY`` form for index builds, which leaves
    ``pg_index.indisvalid`` false while it runs, as DSQL does.
    """

    kind: JobKind
    sql: str
    concurrent_sql: str | None
    relation: Relation
    object_name: str | None
    tag: str
    unique: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True, slots=True)
class IamMapping:
    """``AWS IAM GRANT role TO 'arn'`` / ``AWS IAM REVOKE role FROM 'arn'``."""

    action: Literal["grant", "revoke"]
    role: str
    arn: str


@dataclass(frozen=True, slots=True)
class WaitForJob:
    """``CALL sys.wait_for_job(...)``: the job id literal, or the ``$n`` parameter carrying it.

    Both are None when the argument is some other expression, which the proxy has to evaluate.
    DSQL answers with one row, boolean column ``succeeded`` (false when the job failed), tag CALL.
    """

    job_id: str | None
    param: int | None


@dataclass(frozen=True, slots=True)
class Statement:
    """What :func:`analyze` knows about one statement. Offsets index the analyzed text."""

    text: str
    start: int
    end: int
    kind: Kind
    node: str
    refusal: Refusal | None = None
    rule: str | None = None
    unparsed: bool = False
    parse_error: str | None = None
    error_position: int | None = None
    rewritten: str | None = None
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
    iam: IamMapping | None = None
    wait_for_job: WaitForJob | None = None
    waiver: Waiver | None = None
    refusal_if_waived: Refusal | None = None
    waiver_rule: str | None = None
    drop_columns: tuple[tuple[Relation, str], ...] = ()
    adopt_indexes: tuple[tuple[Relation, str], ...] = ()
    index_columns: tuple[Relation, tuple[str, ...]] | None = None
    prepared_name: str | None = None
    execute_name: str | None = None
    copy_from_stdin: bool = False
    # Tables (and views, sequences) the statement names, unqualified: what it uses, and for a
    # DDL what it creates and what it changes (the endpoint's OC001 rule).
    relations: tuple[str, ...] = ()
    ddl_created: tuple[str, ...] = ()
    ddl_changed: tuple[str, ...] = ()
    #: Every refusal the rules found, in the order found; the first is ``(rule, refusal)``, the
    #: one DSQL answers. The others are what a user would meet after fixing the first.
    refusals: tuple[tuple[str, Refusal], ...] = ()
    #: Types the statement names that are not PostgreSQL built-ins (schema-qualified names keep
    #: their schema): DSQL can only have created them as domains or tables, which only the
    #: catalog (or the rest of a script) can tell.
    user_types: tuple[tuple[str, ...], ...] = ()

    @property
    def all_refusals(self) -> tuple[tuple[str, Refusal], ...]:
        """``refusals``, or the single ``(rule, refusal)`` of statements built without it."""
        if self.refusals or self.refusal is None:
            return self.refusals
        return ((self.rule or "unsupported-statement", self.refusal),)

    @property
    def backend_sql(self) -> str:
        """The text PostgreSQL should run for this statement."""
        return self.text if self.rewritten is None else self.rewritten

    @property
    def is_ddl(self) -> bool:
        return self.kind == "ddl"

    @property
    def is_dml(self) -> bool:
        """Counts as DML for DSQL's "no DDL with DML" rule (reads do not)."""
        return self.kind == "dml" or self.writes_rows


@dataclass(frozen=True, slots=True)
class Analysis:
    """The statements of one text (a simple Query may hold several; a Parse holds one)."""

    text: str
    statements: tuple[Statement, ...]
    masked_text: str
    passthrough: bool

    @property
    def unparsed(self) -> bool:
        """libpg_query could not parse some statement.

        PostgreSQL rejects the whole Query then and runs none of it, so the proxy should send
        :attr:`masked_text` (DSQL-only keywords blanked, offsets unchanged) as one Query and relay
        PostgreSQL's own syntax error.
        """
        return any(s.unparsed for s in self.statements)

    @property
    def refusal(self) -> Refusal | None:
        """The first static refusal, if any statement has one."""
        for s in self.statements:
            if s.refusal is not None:
                return s.refusal
        return None


# ---------------------------------------------------------------------------------------------
# DSQL facts
# ---------------------------------------------------------------------------------------------

SERVER_VERSION: Final = "16.15"
SERVER_VERSION_NUM: Final = "160015"
VERSION_STRING: Final = "PostgreSQL 16"

#: DSQL caps the rows an INSERT/UPDATE/DELETE transaction mutates at 3,000; exactly 3,000 pass.
ROW_LIMIT: Final = 3000
#: DSQL aborts a transaction older than 5 minutes at its next statement or at COMMIT.
TRANSACTION_AGE_LIMIT: Final = 300.0

#: The only parameters DSQL lets a session set (SET, SET SESSION, SET LOCAL, RESET, startup).
ALLOWED_SETTINGS: Final = frozenset({
    "application_name", "client_encoding", "datestyle", "extra_float_digits", "intervalstyle",
    "timezone", "search_path", "enable_bitmapscan", "enable_hashjoin", "enable_indexonlyscan",
    "enable_indexscan", "enable_material", "enable_mergejoin", "enable_nestloop",
    "dsql.enable_batched_nestloop", "enable_seqscan", "disable_sync_create_index", "role",
})
#: Parameters PostgreSQL does not know, so the proxy keeps and answers them itself.
DSQL_ONLY_SETTINGS: Final = frozenset({"disable_sync_create_index"})

FEATURE_NOT_SUPPORTED: Final = "0A000"
UNDEFINED_OBJECT: Final = "42704"
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
INVALID_PARAMETER_VALUE: Final = "22023"
TOO_MANY_COLUMNS: Final = "54011"

ABORTED: Final = Refusal(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block")
MULTIPLE_DDL: Final = Refusal(
    FEATURE_NOT_SUPPORTED, "multiple ddl statements not supported in a transaction")
DDL_AND_DML: Final = Refusal(
    FEATURE_NOT_SUPPORTED, "ddl and dml are not supported in the same transaction")
ROW_LIMIT_EXCEEDED: Final = Refusal(PROGRAM_LIMIT_EXCEEDED, "transaction row limit exceeded")
AGE_LIMIT_EXCEEDED: Final = Refusal(
    PROGRAM_LIMIT_EXCEEDED, "transaction age limit of 300s exceeded")

_SEQUENCE_CACHE = Refusal(
    FEATURE_NOT_SUPPORTED,
    "CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE "
    "greater than or equal to 65536 or equal to 1")
_IDENTITY_CACHE = Refusal(
    FEATURE_NOT_SUPPORTED,
    "identity column is not supported without an explicit cache size. please define CACHE "
    "greater than or equal to 65536 or equal to 1")
_SYNC_INDEX = Refusal(FEATURE_NOT_SUPPORTED, "unsupported mode. please use CREATE INDEX ASYNC.")
_ADD_COLUMN_CONSTRAINT = Refusal(
    FEATURE_NOT_SUPPORTED, "ALTER TABLE ADD COLUMN with constraint not supported")
_LOCKING = Refusal(
    FEATURE_NOT_SUPPORTED,
    "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported")


def _f(message: str) -> Refusal:
    return Refusal(FEATURE_NOT_SUPPORTED, message)


#: The rules that keep DSQL's settings rules whatever the spelling: SET, SET LOCAL, RESET,
#: SET TRANSACTION, set_config(), writes to pg_settings, ALTER ROLE ... SET, a function's SET
#: clause. A statement that has SQL run later (a function body, query_to_xml()'s query) takes
#: over the refusals of these rules from that SQL.
SETTING_RULES: Final = frozenset({
    "set-parameter", "set-transaction", "isolation-level", "set-config", "settings-write",
    "dynamic-sql",
})


def setting_refusal(name: str, *, is_local: bool = False) -> Refusal | None:
    """DSQL's answer to setting ``name`` (also for startup parameters), or None if allowed.

    ``role`` is only accepted through ``SET LOCAL`` inside a transaction block.
    """
    lowered = name.lower()
    if lowered not in ALLOWED_SETTINGS or (lowered == "role" and not is_local):
        return _f(f'setting configuration parameter "{name}" not supported')
    return None

