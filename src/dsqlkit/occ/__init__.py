"""OCC retry for Aurora DSQL: classify conflicts, back off with jitter, re-run whole transactions.

DSQL never takes locks. Two transactions that write the same row both run to COMMIT, the
earlier commit wins, and the other fails with SQLSTATE ``40001`` (``OC000`` in the message; an
``OC001`` means the schema changed underneath). The loser must re-run the *whole* transaction,
reads included, because the values it read are what went stale. Everything here is built around
that unit of work; none of it retries a single statement.

Pick the form that reads best at the call site. Each of them shares one policy
(:class:`OCCRetryConfig`, :func:`delays`, :class:`RetryState`) and records into
:data:`default_metrics` unless given ``metrics=``.

A runner that owns the transaction (BEGIN, ``fn(conn)``, COMMIT; ROLLBACK on error; a fresh pool
connection per attempt)::

    from dsqlkit.occ import OCCRetryConfig, run_transaction

    def transfer(conn):
        conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2")
        return "done"

    run_transaction(pool, transfer, OCCRetryConfig.high_contention())

and with asyncio (psycopg ``AsyncConnectionPool``, asyncpg ``Pool``, SQLAlchemy ``AsyncEngine``
and their connections)::

    await run_transaction_async(asyncpg_pool, transfer_async)

A callback that holds its own transaction (the Rust connector's ``retry_on_occ``)::

    def work():
        with pool.connection() as conn, conn.transaction():
            return conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()

    row = retry_on_occ(OCCRetryConfig(max_attempts=10), work)
    row = await retry_on_occ_async(None, work_async)  # None: the defaults

A decorator, on plain or ``async def`` functions, bare or with options::

    @occ_retry(OCCRetryConfig.high_contention(), on_retry=lambda n, delay, err: ...)
    def increment(pool):
        with pool.connection() as conn, conn.transaction():
            ...

An attempt loop, for code that cannot be a callback (stamina/tenacity style)::

    for attempt in occ_attempts(OCCRetryConfig.low_latency()):
        with attempt:
            with pool.connection() as conn, conn.transaction():
                ...

    async for attempt in occ_attempts_async():
        with attempt:
            async with pool.connection() as conn, conn.transaction():
                ...

When attempts or the ``deadline`` budget run out, :class:`~dsqlkit.errors.OCCRetryExhausted`
is raised with ``.attempts``, ``.occ_type`` and the last conflict as ``__cause__``; any error
that is not an OCC conflict propagates unchanged on its first occurrence. Retries are logged at
DEBUG on the ``dsqlkit.occ`` loggers, without error text (it can quote SQL parameters).
"""

from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ.classify import OCCType, classify_occ, is_occ_error, sqlstate_of
from dsqlkit.occ.metrics import OCCMetrics, OCCMetricsSnapshot, default_metrics
from dsqlkit.occ.policy import OCCRetryConfig, OnRetry, RandomSource, RetryState, delays
from dsqlkit.occ.retry import (
    Attempt,
    occ_attempts,
    occ_attempts_async,
    occ_retry,
    retry_on_occ,
    retry_on_occ_async,
)
from dsqlkit.occ.runners import run_transaction, run_transaction_async

__all__ = [
    "Attempt",
    "OCCMetrics",
    "OCCMetricsSnapshot",
    "OCCRetryConfig",
    "OCCRetryExhausted",
    "OCCType",
    "OnRetry",
    "RandomSource",
    "RetryState",
    "classify_occ",
    "default_metrics",
    "delays",
    "is_occ_error",
    "occ_attempts",
    "occ_attempts_async",
    "occ_retry",
    "retry_on_occ",
    "retry_on_occ_async",
    "run_transaction",
    "run_transaction_async",
    "sqlstate_of",
]
