"""DSQL's background jobs, run by the endpoint: ``CREATE INDEX ASYNC`` and
``ALTER TABLE ASYNC … VALIDATE CONSTRAINT``.

A session submits a job by inserting it into ``sys.dsqlkit_jobs`` (the rows behind
``sys.jobs``) and notifying channel ``dsqlkit_jobs``; the notification is delivered when that
transaction commits, as DSQL starts a job once its statement has committed. The runner
LISTENs, claims each job (one runner wins even when several endpoints share a backend), runs
it on its own connection — an index build as ``CREATE INDEX CONCURRENTLY``, so that
``pg_index.indisvalid`` stays false until it is done, as on DSQL — and records the outcome.
``CALL sys.wait_for_job(id)`` (a procedure in the backend) polls ``sys.jobs``.

An index build is usually done already when its job starts: ``sys.dsqlkit_submit_job`` builds
the index in the submitting transaction and marks it invalid, so that the catalog lists it as
soon as that transaction commits, as DSQL's does; the job then only marks it valid. Statements
the runner does run (a build that failed at submission, a VALIDATE) run one at a time, as the
role that submitted them: two ``CREATE INDEX CONCURRENTLY`` at once on one table can deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from dsqlkit.local.backend import BackendAddress

log = logging.getLogger(__name__)

# DSQL reports a duplicate found while building a unique index in these words.
DUPLICATE_KEY_DETAILS = "Found duplicate key while validating index for UCVs"


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

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.address().dsn(), autocommit=True)
        async with conn:
            await conn.execute("LISTEN dsqlkit_jobs")
            # Jobs submitted while no runner listened (endpoint restarts).
            cur = await conn.execute(
                "SELECT job_id FROM sys.dsqlkit_jobs WHERE status = 'submitted'")
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
            conn = await psycopg.AsyncConnection.connect(self.address().dsn(), autocommit=True)
        except psycopg.Error as exc:
            log.warning("job %s: backend unreachable: %s", job_id, exc)
            return
        async with conn:
            cur = await conn.execute(
                "UPDATE sys.dsqlkit_jobs SET status = 'processing', update_time = now() "
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
                    async with self._one_at_a_time:
                        await self._as_role(conn, role, statement)
                    object_id, object_name = await self._object(conn, job_type, object_name,
                                                                relation)
            except psycopg.Error as exc:
                status = "failed"
                details = (DUPLICATE_KEY_DETAILS if exc.sqlstate == "23505"
                           else (exc.diag.message_primary or str(exc)))
                log.info("job %s failed: %s", job_id, details)
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
                    "UPDATE sys.dsqlkit_jobs SET status = %s, details = %s, object_id = %s, "
                    "object_name = coalesce(%s, object_name), update_time = now() "
                    "WHERE job_id = %s",
                    [status, details, object_id, object_name, job_id],
                )
        # A finished build changes the catalog: other sessions may see OC001, as on DSQL.
        self.on_finished()

    @staticmethod
    async def _as_role(conn: psycopg.AsyncConnection[tuple[object, ...]], role: str | None,
                       statement: str) -> None:
        """Run ``statement`` with the privileges of the role that submitted it."""
        if role is None:  # submitted before roles were recorded
            await conn.execute(statement)
            return
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        try:
            await conn.execute(statement)
        finally:
            await conn.execute("RESET ROLE")

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
