"""DSQL's background jobs, run by the endpoint: ``CREATE INDEX ASYNC`` and
``ALTER TABLE ASYNC … VALIDATE CONSTRAINT``.

A session submits a job through ``sys.jobs`` (see :mod:`dsqlkit.local.catalog`), which
records it in the endpoint's own table and notifies channel ``dsqlkit_jobs``; the notification
is delivered when that transaction commits, as DSQL starts a job once its statement has
committed. The runner LISTENs, claims each job (one runner wins even when several endpoints
share a backend), runs it — an index build as ``CREATE INDEX CONCURRENTLY``, so that
``pg_index.indisvalid`` stays false until it is done, as on DSQL — and records the outcome.
``CALL sys.wait_for_job(id)`` (a procedure in the backend) polls ``sys.jobs``.

An index build is usually done already when its job starts: the submission builds the index in
the submitting transaction and marks it invalid, so that the catalog lists it as soon as that
transaction commits, as DSQL's does; the job then only marks it valid. Statements the runner
does run (a build that failed at submission, a VALIDATE) run one at a time (two ``CREATE INDEX
CONCURRENTLY`` at once on one table can deadlock), each on a connection logged in as the role
that submitted it: its rights, and no way back to the endpoint's (``SET ROLE`` on a superuser's
connection could be undone by the statement). The statement must be the one kind of statement
its job runs. The runner's bookkeeping runs as the endpoint's role, ``dsqlkit_endpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from pglast import ast, parse_sql
from pglast.enums import AlterTableType
from psycopg.rows import TupleRow

from dsqlkit.local.backend import BackendAddress
from dsqlkit.local.catalog import ENDPOINT_ROLE, INTERNAL_SCHEMA

log = logging.getLogger(__name__)

# DSQL reports a duplicate found while building a unique index in these words.
DUPLICATE_KEY_DETAILS = "Found duplicate key while validating index for UCVs"
_JOBS = f"{INTERNAL_SCHEMA}.dsqlkit_jobs"
# DSQL purges completed and failed jobs after 30 minutes.
_PURGE = (f"DELETE FROM {_JOBS} WHERE status IN ('completed', 'failed') "
          "AND update_time < now() - interval '30 minutes'")


class JobRefused(Exception):
    """A job whose statement is not what its kind runs, or with no role to run it as."""


def check_statement(job_type: str, statement: str) -> None:
    """Raise :class:`JobRefused` unless ``statement`` is exactly one statement of the kind
    ``job_type`` runs: CREATE INDEX CONCURRENTLY, or ALTER TABLE ... VALIDATE CONSTRAINT."""
    try:
        parsed = parse_sql(statement) or ()
    except Exception as exc:
        raise JobRefused(f"the job's statement does not parse: {exc}") from None
    node = parsed[0].stmt if len(parsed) == 1 else None
    if job_type == "INDEX_BUILD" and isinstance(node, ast.IndexStmt) and node.concurrent:
        return
    cmds = (node.cmds or ()) if isinstance(node, ast.AlterTableStmt) else ()
    if (job_type == "VALIDATE_CONSTRAINT" and len(cmds) == 1
            and getattr(cmds[0], "subtype", None) == AlterTableType.AT_ValidateConstraint):
        return
    raise JobRefused(f"the job's statement is not a {job_type} statement")


class JobRunner:
    def __init__(
        self,
        address: Callable[[], BackendAddress],
        on_finished: Callable[[], None],
        *,
        min_duration: float = 0.2,
    ) -> None:
        self.address = address
        self.on_finished = on_finished
        # DSQL builds take a while even on empty tables; code that does not wait for the
        # job (CALL sys.wait_for_job) should fail here as it would there.
        self.min_duration = min_duration
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._listen_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                # The backend restarted (or is restarting): listen again shortly.
                log.debug("job runner lost its backend connection: %s", exc)
                await asyncio.sleep(0.5)

    async def _bookkeeping(self) -> psycopg.AsyncConnection[TupleRow]:
        conn = await psycopg.AsyncConnection.connect(self.address().dsn(), autocommit=True)
        try:
            await conn.execute(f"SET ROLE {ENDPOINT_ROLE}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self) -> None:
        conn = await self._bookkeeping()
        async with conn:
            await conn.execute("LISTEN dsqlkit_jobs")
            # Jobs submitted while no runner listened (endpoint restarts).
            cur = await conn.execute(f"SELECT job_id FROM {_JOBS} WHERE status = 'submitted'")
            for (job_id,) in await cur.fetchall():
                self._spawn(job_id)
            async for notice in conn.notifies():
                self._spawn(notice.payload)

    def _spawn(self, job_id: str) -> None:
        task = asyncio.ensure_future(self._run(job_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, job_id: str) -> None:
        try:
            conn = await self._bookkeeping()
        except psycopg.Error as exc:
            log.warning("job %s: backend unreachable: %s", job_id, exc)
            return
        async with conn:
            cur = await conn.execute(
                f"UPDATE {_JOBS} SET status = 'processing', update_time = now() "
                "WHERE job_id = %s AND status = 'submitted' "
                "RETURNING job_type, statement, object_name, relation, prepared, object_id, "
                "submitted_by",
                [job_id],
            )
            row = await cur.fetchone()
            if row is None:
                return  # another runner has it
            job_type, statement, object_name, relation, prepared, object_id, role = row
            started = asyncio.get_running_loop().time()
            status, details = "completed", None
            try:
                if prepared is None:
                    check_statement(job_type, statement)
                    async with self._one_at_a_time:
                        await self._as_role(role, statement)
                    object_id, object_name = await self._object(conn, job_type, object_name,
                                                                relation)
            except psycopg.Error as exc:
                status = "failed"
                details = (DUPLICATE_KEY_DETAILS if exc.sqlstate == "23505"
                           else (exc.diag.message_primary or str(exc)))
                log.info("job %s failed: %s", job_id, details)
            except JobRefused as exc:
                status, details = "failed", str(exc)
                log.warning("job %s refused: %s", job_id, details)
            remaining = self.min_duration - (asyncio.get_running_loop().time() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
            async with conn.transaction():
                if prepared == "built":
                    # Built at submission, maintained since: now it may serve queries.
                    await conn.execute(
                        "UPDATE pg_index SET indisvalid = true WHERE indexrelid = %s "
                        "AND indisready", [object_id])
                await conn.execute(
                    f"UPDATE {_JOBS} SET status = %s, details = %s, object_id = %s, "
                    "object_name = coalesce(%s, object_name), update_time = now() "
                    "WHERE job_id = %s",
                    [status, details, object_id, object_name, job_id],
                )
                await conn.execute(_PURGE)
        # A finished build changes the catalog: other sessions may see OC001, as on DSQL.
        self.on_finished()

    async def _as_role(self, role: str | None, statement: str) -> None:
        """Run ``statement`` logged in as the role that submitted it."""
        if role is None:
            raise JobRefused("the job was submitted before the endpoint recorded roles")
        conn = await psycopg.AsyncConnection.connect(self.address().dsn(role), autocommit=True)
        async with conn:
            await conn.execute(statement.encode())

    @staticmethod
    async def _object(
        conn: psycopg.AsyncConnection[tuple[object, ...]], job_type: str,
        object_name: str | None, relation: str,
    ) -> tuple[int | None, str | None]:
        if job_type != "INDEX_BUILD":
            return None, object_name
        if object_name is not None:
            cur = await conn.execute(
                "SELECT c.oid::int8, c.relname FROM pg_class c WHERE c.oid = to_regclass("
                "quote_ident(coalesce((SELECT n.nspname FROM pg_class t JOIN pg_namespace n "
                "ON n.oid = t.relnamespace WHERE t.oid = to_regclass(%s)), 'public')) || '.' "
                "|| quote_ident(%s))",
                [relation, object_name],
            )
        else:
            cur = await conn.execute(
                "SELECT i.indexrelid::int8, c.relname FROM pg_index i JOIN pg_class c "
                "ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s) "
                "ORDER BY i.indexrelid DESC LIMIT 1",
                [relation],
            )
        row = await cur.fetchone()
        if row is None:
            return None, object_name
        return int(str(row[0])), str(row[1])
