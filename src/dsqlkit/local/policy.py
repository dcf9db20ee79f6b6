"""DSQL's statement policy for one session: what the backend runs for each Query, Parse and
Bind, and how its answer is presented.

DSQL's rules are applied per statement with :mod:`dsqlkit.local.dialect`. A refused statement
is replaced by a text that fails to parse, and the backend's syntax error by DSQL's error, so
PostgreSQL ends up in exactly the state DSQL's refusal leaves (block aborted, rest of the batch
skipped) without the endpoint answering anything itself. Statements DSQL answers differently
from PostgreSQL (async jobs, IAM mappings, DSQL-only settings, the reported version) become a
SELECT whose answer is presented as DSQL's. A few rules need the catalog (dropping a key
column, adopting an index, a key's type, an index on an empty table): the policy asks the
backend before the statement goes. OCC decisions at statements and at COMMIT come from the
engine (:mod:`dsqlkit.local.occ.engine`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local import catalog, dialect, wire
from dsqlkit.local.occ.engine import Conflict, Decision
from dsqlkit.local.protocol import (
    DISCARD,
    FAILED,
    IDLE,
    IN_BLOCK,
    PENDING,
    Checked,
    Pending,
    Presentation,
    Relay,
    Special,
)

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)

STORAGE_KINDS = frozenset({"select", "dml", "ddl", "utility"})
OC000 = dialect.Refusal("40001", "change conflicts with another transaction (OC000)")
OC001 = dialect.Refusal("40001", "schema has been updated by another transaction (OC001)")
OC000_FRAME = wire.error_response(OC000.sqlstate, OC000.message)
OC001_FRAME = wire.error_response(OC001.sqlstate, OC001.message)
# Text PostgreSQL cannot parse; its syntax error is replaced by the refusal.
_REFUSED_SQL = "DSQLKIT REFUSED"
_ROLLBACK_STATEMENT = "dsqlkit_rollback"
_CLOSE_ROLLBACK = wire.close_statement(_ROLLBACK_STATEMENT)
_MISSING_STATEMENT = "dsqlkit_missing"
# Texts at least this long are analysed in a thread, off the event loop.
_ANALYZE_INLINE = 65536
_JOB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_DSQL_SETTING_DEFAULTS = {"disable_sync_create_index": "on"}
# What the catalog decided for one statement: a refusal, and whether its waiver applies.
_Fact = tuple["dialect.Refusal | None", bool]
# A plain BEGIN that arrives when the session is idle cannot fail, and PostgreSQL takes no
# snapshot until the first statement after it. The endpoint answers it itself and sends it in
# front of the next message, which saves every transaction one backend round trip. (Only
# option-free spellings: the answer must be exactly PostgreSQL's.)
_BEGIN_TAGS = {"BEGIN": "BEGIN", "BEGIN TRANSACTION": "BEGIN", "BEGIN WORK": "BEGIN",
               "START TRANSACTION": "START TRANSACTION"}
_BEGIN_ANSWERS = {
    tag: Special(answer=wire.command_complete(tag) + wire.ready_for_query(IN_BLOCK))
    for tag in set(_BEGIN_TAGS.values())
}
ANY_STATEMENT = dialect.analyze("SELECT 1").statements[0]


class PolicyHost(Protocol):
    """What the policy needs from its session."""

    @property
    def sid(self) -> int: ...

    def hold_for(self, work: Awaitable[object]) -> None:
        """Hold the relay while ``work`` runs on the event loop, then release it."""

    async def query_rows(self, sql: str) -> list[list[str | None]]:
        """Rows of an internal query on the session's backend; an error reads as no rows."""

    def violation(self, exc: wire.ProtocolViolation) -> None: ...


class StatementPolicy:
    """DSQL's rules for one session's statements (see the module docs)."""

    def __init__(self, host: PolicyHost, relay: Relay, server: Server,
                 settings: dict[str, str]) -> None:
        self.host = host
        self.relay = relay
        self.server = server
        # DSQL-only settings (startup parameters and SET): kept here, never sent on.
        self.settings = settings
        # The row limit is enforced in the backend (see catalog.py), the rest here.
        # Transaction ages run on the endpoint's clock, which tests inject.
        self.rules = dialect.TransactionRules(
            row_limit=None, age_limit=server.config.transaction_age_limit, clock=server.clock)
        # Named prepared statements, for a Bind that runs one again.
        self.prepared: dict[str, tuple[dialect.Analysis, list[int]]] = {}
        # The names among them that hold a COMMIT.
        self.prepared_commits: set[str] = set()
        self._pending_analysis: tuple[str, dialect.Analysis] | None = None
        self._catalog_answer: tuple[str, dict[int, _Fact]] | None = None
        # Statements prepared by the unit in flight (their Parse applied the rules already).
        self._parsed_now: set[str] = set()
        # What the unit in flight does besides reading and writing rows.
        self.unit_ddl_created: list[str] = []
        self.unit_ddl_changed: list[str] = []
        self.unit_only_begin = False

    def unit_begins(self) -> None:
        self.unit_ddl_created = []
        self.unit_ddl_changed = []
        self.unit_only_begin = False
        self._parsed_now.clear()

    # -- the messages -----------------------------------------------------------------------

    def check(self, mtype: int, data: bytes, start: int, end: int) -> Checked:
        try:
            if mtype == wire.QUERY:
                return self._check_query(wire.parse_query(data[start:end]))
            if mtype == wire.PARSE:
                return self._check_parse(*wire.parse_parse(data[start:end]))
            return self._check_bind(data[start:end])
        except wire.ProtocolViolation as exc:
            self.relay.to_backend.clear()
            self.host.violation(exc)
            return None

    def _check_query(self, sql: str) -> Checked:
        relay = self.relay
        first = relay.first_of_unit
        if not self.server.config.rules:
            return None, None
        analysis = self._analysis(sql)
        if analysis is None:
            return PENDING
        if any(stmt.copy_from_stdin for stmt in analysis.statements):
            relay.copy_expected = True
        decided = self._statement_policy(analysis, extended=False)
        if isinstance(decided, Pending):
            return decided
        text, special = decided
        if (text is None and special is None and relay.txn_status == IDLE and first
                and not relay.expect and not relay.backend_skipping
                and len(analysis.statements) == 1
                and analysis.statements[0].tcl_action == "begin"):
            tag = _BEGIN_TAGS.get(" ".join(sql.rstrip().rstrip(";").upper().split()))
            if tag is not None:
                return None, _BEGIN_ANSWERS[tag]
        return (wire.query(text) if text is not None else None), special

    def _check_parse(self, name: str, sql: str, oids: list[int]) -> Checked:
        if not self.server.config.rules:
            return None, None
        analysis = self._analysis(sql)
        if analysis is None:
            return PENDING
        commit = (len(analysis.statements) == 1
                  and analysis.statements[0].tcl_action == "commit")
        if name:
            self.prepared[name] = (analysis, oids)
            self._parsed_now.add(name)
            if commit:
                self.prepared_commits.add(name)
            else:
                self.prepared_commits.discard(name)
        if len(analysis.statements) > 1:
            return None, None  # PostgreSQL refuses several commands in one Parse itself
        if name and commit:
            return None, None  # its executions are checked at Bind
        decided = self._statement_policy(analysis, extended=True)
        if isinstance(decided, Pending):
            return decided
        text, special = decided
        if text is None:
            return None, special
        return wire.parse_message(name, text, oids), special

    def _check_bind(self, frame: bytes) -> Checked:
        """A Bind runs a prepared statement again: OC001 if the session's catalog of a table
        it uses is stale; and a named COMMIT must not commit a transaction that has to fail."""
        relay = self.relay
        if not self.prepared:
            return None, None  # (PostgreSQL itself answers a malformed Bind with 08P01)
        _, statement = wire.parse_bind_names(frame)
        prepared = self.prepared.get(statement)
        if prepared is None:
            return None, None
        first = prepared[0].statements[0]
        if first.tcl_action in ("begin", "rollback") and statement not in self._parsed_now:
            # A prepared BEGIN or ROLLBACK (drivers prepare any statement they run often):
            # the transaction rules follow the block it opens or ends.
            self.rules.completed(first)
            if first.tcl_action == "begin" and relay.first_of_unit:
                self.unit_only_begin = True
        if self.server.engine.schema_mode != "off" and relay.txn_status != FAILED:
            for stmt in prepared[0].statements:
                if stmt.kind in STORAGE_KINDS and self.schema_conflict(stmt) is not None:
                    self.rules.errored(stmt)
                    # Bind a statement that does not exist; its error becomes OC001.
                    return (wire.rebind(frame, _MISSING_STATEMENT), Special(error=OC001_FRAME))
        if relay.txn_status != IN_BLOCK or statement not in self.prepared_commits:
            return None, None
        if self._must_wait_for_commit():
            return PENDING
        self.rules.completed(self.prepared[statement][0].statements[0])
        failure = self.commit_failure()
        if failure is None:
            return None, None
        # Bind our own prepared ROLLBACK instead, and answer its Execute with the error. (It
        # is prepared afresh each time: the backend skips a Parse that follows an error.)
        relay.commit_error = failure
        relay.expect.append((wire.CLOSE, DISCARD))
        relay.expect.append((wire.PARSE, DISCARD))
        return (_CLOSE_ROLLBACK + wire.parse_message(_ROLLBACK_STATEMENT, "ROLLBACK", [])
                + wire.rebind(frame, _ROLLBACK_STATEMENT)), None

    def _analysis(self, sql: str) -> dialect.Analysis | None:
        """The analysis of ``sql``; None while a long text is analysed in a thread.

        Parsing a large text can take seconds, which must not stall every other session.
        """
        if len(sql) < _ANALYZE_INLINE:
            return dialect.analyze(sql)
        pending = self._pending_analysis
        if pending is not None and pending[0] == sql:
            self._pending_analysis = None
            return pending[1]

        async def analyse() -> None:
            loop = asyncio.get_running_loop()
            self._pending_analysis = (sql, await loop.run_in_executor(None, dialect.analyze,
                                                                      sql))

        self.host.hold_for(analyse())
        return None

    # -- DSQL's rules, per statement ------------------------------------------------------

    def _statement_policy(self, analysis: dialect.Analysis, *, extended: bool
                          ) -> tuple[str | None, Special | None] | Pending:
        """Apply DSQL's rules to the statements of one Query or Parse.

        Returns ``(text, special)``: the text PostgreSQL should run instead (None:
        unchanged) and what to do with the backend's answer; or PENDING while the catalog
        is being asked about the text or a colliding transaction commits.
        """
        if analysis.unparsed:
            masked = analysis.masked_text
            return (masked if masked != analysis.text else None), None
        facts: dict[int, _Fact] = {}
        if not analysis.passthrough:
            asked = self._catalog_facts(analysis)
            if asked is None:
                return PENDING
            facts = asked
        relay = self.relay
        in_block = relay.txn_status == IN_BLOCK
        if in_block and any(st.tcl_action == "commit" for st in analysis.statements) and (
                self._must_wait_for_commit()):
            return PENDING
        rules = self.rules
        if not extended:
            rules.begin_batch()
        texts: list[str] = []
        shown: dict[int, Presentation] = {}
        changed = False
        ddl = False
        index = 0
        for i, stmt in enumerate(analysis.statements):
            if stmt.kind == "empty":
                continue
            fact_refusal, waive = facts.get(i, (None, False))
            verdict = rules.check(stmt, waive=waive)
            refusal = verdict.refusal or fact_refusal
            if refusal is not None and verdict.refusal is None:
                rules.errored(stmt)
            if refusal is None and stmt.kind in STORAGE_KINDS and relay.txn_status != FAILED:
                refusal = self.schema_conflict(stmt)
                if refusal is not None:
                    rules.errored(stmt)
            if refusal is not None:
                if not extended:
                    rules.end_batch()
                frame = wire.error_response(refusal.sqlstate, refusal.message,
                                            detail=verdict.detail)
                return _REFUSED_SQL, Special(error=frame)
            if stmt.tcl_action == "commit" and relay.txn_status == IN_BLOCK:
                failure = self.commit_failure()
                rules.completed(stmt)
                if failure is not None:
                    if not extended:
                        rules.end_batch()
                    if extended:
                        relay.commit_error = failure
                        return "ROLLBACK", None
                    return "ROLLBACK", Special(commit_error=failure)
                texts.append(stmt.backend_sql)
                index += 1
                continue
            rules.completed(stmt)
            if stmt.is_ddl:
                ddl = True
                self.unit_ddl_created.extend(stmt.ddl_created)
                self.unit_ddl_changed.extend(stmt.ddl_changed)
                if relay.txn_status == IN_BLOCK:
                    self.server.engine.ddl(self.host.sid)
            elif stmt.tcl_action == "begin" and len(analysis.statements) == 1:
                self.unit_only_begin = True
            answered = self._answer_here(stmt)
            if answered is not None:
                texts.append(answered[0])
                shown[index] = answered[1]
                changed = True
            else:
                changed = changed or stmt.rewritten is not None
                texts.append(stmt.backend_sql)
            index += 1
        if not extended:
            rules.end_batch()
        if ddl:
            relay.unit_ddl = True
        text = ";".join(texts) if changed else None
        if not shown:
            return text, None
        if extended:
            return text, Special(present=shown[0])
        return text, Special(present_by_result=shown)

    def _answer_here(self, stmt: dialect.Statement) -> tuple[str, Presentation] | None:
        """SQL that makes PostgreSQL answer what DSQL answers for ``stmt``, if it differs
        from running the statement: a background job's id, an IAM mapping, a setting only
        DSQL has, a reported version."""
        if stmt.job is not None:
            # An INSERT into DSQL's own view, which a rule turns into the endpoint's
            # submission (dsqlkit.local.catalog), signed so that no client can send its own.
            job = stmt.job
            job_id = "".join(secrets.choice(_JOB_ID_ALPHABET) for _ in range(26))
            kind = "INDEX_BUILD" if job.kind == "index_build" else "VALIDATE_CONSTRAINT"
            inline = job.sql if job.kind == "index_build" else None
            statement = job.concurrent_sql or job.sql
            relation = qualified(job.relation)
            mac = catalog.sign(self.server.backend_address(), "job", job_id, kind,
                               job.object_name, inline, statement, relation)
            details = json.dumps({"inline": inline, "statement": statement,
                                  "relation": relation, "mac": mac})
            sql = ("INSERT INTO sys.jobs (job_id, job_type, object_name, details) VALUES "
                   f"({literal(job_id)}, {literal(kind)}, {literal(job.object_name)}, "
                   f"{literal(details)}) RETURNING job_id")
            return sql, Presentation(tag=job.tag)
        if stmt.iam is not None:
            iam = stmt.iam
            mac = catalog.sign(self.server.backend_address(), "iam", iam.action, iam.role,
                               iam.arn)
            sql = ("INSERT INTO sys.iam_pg_role_mappings (pg_role_name, arn, "
                   f"grantor_pg_role_name) VALUES ({literal(iam.role)}, {literal(iam.arn)}, "
                   f"{literal(iam.action + ':' + mac)})")
            return sql, Presentation(tag=f"AWS IAM {iam.action.upper()}", keep_rows=False)
        param = stmt.set_param or stmt.show_param
        if param in dialect.DSQL_ONLY_SETTINGS:
            if stmt.kind == "set":
                if stmt.set_value is None:
                    self.settings.pop(param, None)
                else:
                    self.settings[param] = stmt.set_value
            elif stmt.kind == "show":
                value = self.settings.get(param, _DSQL_SETTING_DEFAULTS.get(param, ""))
                answer = dialect.LocalAnswer("SHOW", (param,), ((value,),))
                return answer_sql(answer), Presentation(tag="SHOW")
        if stmt.local_answer is not None:
            answer = stmt.local_answer
            return answer_sql(answer), Presentation(tag=answer.tag,
                                                    keep_rows=bool(answer.columns))
        return None

    # -- what only the catalog knows -------------------------------------------------------

    def _catalog_facts(self, analysis: dialect.Analysis) -> dict[int, _Fact] | None:
        """What only the catalog can decide for these statements (see the dialect's
        ``drop_columns``, ``adopt_indexes``, ``index_columns`` and ``waiver``): a dict of
        ``statement index -> (refusal, waive)``, or None while the backend is asked."""
        statements = analysis.statements
        if not any(s.drop_columns or s.adopt_indexes or s.index_columns or s.waiver
                   for s in statements):
            return {}
        known = self._catalog_answer
        if known is not None and known[0] == analysis.text:
            self._catalog_answer = None
            return known[1]
        relay = self.relay
        if relay.unit_msgs or relay.expect or relay.txn_status == FAILED:
            # The backend is not idle (or ignores everything): let PostgreSQL decide.
            return {}
        self.host.hold_for(self._ask_catalog(analysis))
        return None

    async def _ask_catalog(self, analysis: dialect.Analysis) -> None:
        facts: dict[int, _Fact] = {}
        query = self.host.query_rows
        try:
            for i, stmt in enumerate(analysis.statements):
                refusal: dialect.Refusal | None = None
                waive = False
                for rel, column in stmt.drop_columns:
                    rows = await query(
                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                        "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE "
                        f"i.indisprimary AND i.indrelid = to_regclass({literal(qualified(rel))})"
                    )
                    if any(r[0] == column for r in rows):
                        refusal = dialect.Refusal(
                            "0A000", f"cannot drop primary key column {column}")
                for rel, index_name in stmt.adopt_indexes:
                    target = qualified(dialect.Relation(rel.schema, index_name))
                    rows = await query(
                        "SELECT (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = "
                        f"to_regclass({literal(target)})), EXISTS (SELECT 1 FROM "
                        f"sys.jobs WHERE object_name = {literal(index_name)} AND "
                        "status IN ('submitted', 'processing'))"
                    )
                    if rows and (rows[0][1] == "t" or rows[0][0] == "f"):
                        refusal = dialect.Refusal("55000", f'index "{index_name}" is not valid')
                if stmt.index_columns is not None:
                    rel, columns = stmt.index_columns
                    names = ", ".join(literal(c) for c in columns) or "NULL"
                    rows = await query(
                        "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                        f"to_regclass({literal(qualified(rel))}) AND attname IN ({names})"
                    )
                    for (type_name,) in rows:
                        if type_name in ("json", "jsonb"):
                            refusal = dialect.Refusal(
                                "0A000", f"datatype {type_name} is not supported in a key")
                if stmt.waiver == "sync_index_on_empty_table" and self.settings.get(
                    "disable_sync_create_index", "on"
                ).lower() in ("off", "false", "0"):
                    job_rel = stmt.index_columns[0] if stmt.index_columns else None
                    if job_rel is not None:
                        rows = await query(
                            f"SELECT NOT EXISTS (SELECT 1 FROM {qualified(job_rel)})")
                        waive = bool(rows) and rows[0][0] == "t"
                if refusal is not None or waive:
                    facts[i] = (refusal, waive)
        except (ConnectionError, LocalEndpointError) as exc:
            log.info("session ended while reading the catalog: %s", exc)
            raise
        self._catalog_answer = (analysis.text, facts)

    # -- OCC: schema versions and commit failures -------------------------------------------

    def schema_conflict(self, stmt: dialect.Statement) -> dialect.Refusal | None:
        """OC001 when this session's catalog of a table the statement uses is stale."""
        server = self.server
        if server.engine.access(self.host.sid, stmt.relations,
                                storage=stmt.kind in STORAGE_KINDS) is not None:
            return OC001
        if server.faults.roll("oc001"):
            return OC001
        return None

    def _must_wait_for_commit(self) -> bool:
        """First committer wins: a transaction that collided with one whose COMMIT is at
        the backend learns its fate before it commits (the relay holds until then)."""
        partner = self.server.engine.committing_partner(self.host.sid)
        if partner is None:
            return False
        self.host.hold_for(self.server.commit_finished(partner))
        return True

    def commit_failure(self) -> bytes | None:
        """The error a COMMIT must answer instead of committing, if any."""
        server = self.server
        decision = server.engine.commit_decision(self.host.sid)
        if decision.decision is Decision.FAIL:
            return OC001_FRAME if decision.conflict is Conflict.SCHEMA else OC000_FRAME
        if decision.decision is not Decision.PROCEED:
            # A parked transaction replays before its unit starts; this is a bug.
            log.error("COMMIT of a transaction in state %s", decision.decision)
            return OC000_FRAME
        if server.faults.roll("occ"):
            return OC000_FRAME
        return None

    def ends_block(self, mtype: int, data: bytes, start: int, end: int) -> str | None:
        """"commit" or "rollback" when the unit starting with this message is just that."""
        try:
            if mtype == wire.QUERY:
                sql = wire.parse_query(data[start:end])
            elif mtype == wire.PARSE:
                sql = wire.parse_parse(data[start:end])[1]
            elif mtype == wire.BIND:
                name = wire.parse_bind_names(data[start:end])[1]
                return "commit" if name in self.prepared_commits else None
            else:
                return None
        except wire.ProtocolViolation:
            return None
        statements = [s for s in dialect.analyze(sql).statements if s.kind != "empty"]
        if len(statements) == 1 and statements[0].tcl_action in ("commit", "rollback"):
            return statements[0].tcl_action
        return None


def literal(value: str | None) -> str:
    """A SQL string literal (standard_conforming_strings is on), or NULL."""
    if value is None:
        return "NULL"
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(rel: dialect.Relation) -> str:
    """A relation as text that ``to_regclass``/``regclass`` resolve like the statement did."""
    return ident(rel.name) if rel.schema is None else f"{ident(rel.schema)}.{ident(rel.name)}"


def answer_sql(answer: dialect.LocalAnswer) -> str:
    """A SELECT whose result is ``answer``: text columns with the given names and rows."""
    if not answer.columns:
        return "SELECT"
    selects = []
    for row in answer.rows or ((None,) * len(answer.columns),):
        cols = ", ".join(f"{literal(v)}::text AS {ident(c)}"
                         for v, c in zip(row, answer.columns, strict=True))
        selects.append(f"SELECT {cols}")
    sql = " UNION ALL ".join(selects)
    return sql if answer.rows else f"{sql} WHERE false"


__all__ = [
    "ANY_STATEMENT",
    "OC000",
    "OC000_FRAME",
    "OC001",
    "OC001_FRAME",
    "STORAGE_KINDS",
    "PolicyHost",
    "StatementPolicy",
    "answer_sql",
    "literal",
    "qualified",
]
