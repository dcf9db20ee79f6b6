"""OCC retry against a real database, with real conflicts, through every supported driver.

Runs against the ``dsql_local`` fixture (``dsqlkit.local``'s pytest plugin). Until the endpoint
reports conflicts at COMMIT as DSQL does, its PostgreSQL backend reports them at the statement
that touches a row changed since the snapshot; the runners handle both, and these tests accept
either, plus both DSQL's ``OC000`` text and PostgreSQL's code-less ``40001``.

Conflicts are forced deterministically where a test needs an exact count: inside the
transaction, after the first read, a second connection commits a change to the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import psycopg.conninfo
import psycopg2
import psycopg2.pool
import pytest
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from dsqlkit.errors import DsqlError, OCCRetryExhausted
from dsqlkit.occ import (
    OCCMetrics,
    OCCRetryConfig,
    OCCType,
    classify_occ,
    is_occ_error,
    occ_attempts,
    occ_attempts_async,
    occ_retry,
    retry_on_occ,
    run_transaction,
    run_transaction_async,
)

pytestmark = pytest.mark.slow

# Short waits keep the suite fast; the conflict behaviour under test does not depend on them.
QUICK = OCCRetryConfig(max_attempts=5, base_delay=0.005, max_delay=0.05)
EXPECTED_TYPES = {OCCType.DATA, OCCType.UNKNOWN}


@dataclass
class Database:
    """Connection parameters for every driver, derived from one libpq DSN."""

    make_dsn: Callable[[], str]
    backend_dsn: str | None = None

    @property
    def dsn(self) -> str:
        return self.make_dsn()

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit)

    def asyncpg_kwargs(self) -> dict[str, Any]:
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        kwargs: dict[str, Any] = {
            "host": params.get("host"),
            "port": int(params.get("port") or 5432),
            "user": params.get("user"),
            "password": params.get("password"),
            "database": params.get("dbname"),
        }
        mode = params.get("sslmode")
        if mode in {"require", "verify-ca", "verify-full"}:
            context = ssl.create_default_context(cafile=params.get("sslrootcert"))
            if mode != "verify-full":
                context.check_hostname = False
            kwargs["ssl"] = context
        return kwargs

    def engine(self, **kwargs: Any) -> sqlalchemy.Engine:
        dsn = self.dsn
        # Without use_native_hstore=False, SQLAlchemy's psycopg dialect looks up the hstore type
        # inside its first-connect transaction, through a SAVEPOINT, which DSQL refuses.
        return sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(dsn),
            use_native_hstore=False,
            **kwargs,
        )

    async def asyncpg_pool(self, size: int) -> Any:
        # asyncpg's default reset on release calls pg_advisory_unlock_all(), which DSQL
        # refuses; RESET ALL is what is left of it that DSQL supports.
        async def reset(conn: Any) -> None:
            await conn.execute("RESET ALL")

        return await asyncpg.create_pool(
            min_size=size, max_size=size, reset=reset, **self.asyncpg_kwargs()
        )

    def async_engine(self, **kwargs: Any) -> Any:
        # SQLAlchemy's asyncio layer needs greenlet, which only sqlalchemy[asyncio] pulls in.
        pytest.importorskip("greenlet", reason="SQLAlchemy asyncio needs sqlalchemy[asyncio]")
        from sqlalchemy.ext.asyncio import create_async_engine

        connect_kwargs = self.asyncpg_kwargs()

        async def creator() -> Any:
            return await asyncpg.connect(**connect_kwargs)

        return create_async_engine("postgresql+asyncpg://", async_creator=creator, **kwargs)


@pytest.fixture(scope="module")
def db(request: pytest.FixtureRequest) -> Database:
    try:
        endpoint = request.getfixturevalue("dsql_local")
    except pytest.FixtureLookupError:
        pytest.skip("needs the dsql_local fixture (dsqlkit.local's pytest plugin)")
    return Database(lambda: endpoint.dsn(user="admin"), endpoint.backend_dsn)


@pytest.fixture
def table(db: Database) -> Iterator[str]:
    """A one-row counter table private to the test (id 1, value 0)."""
    name = f"occ_{uuid.uuid4().hex[:12]}"
    with db.connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, value int NOT NULL)")
        conn.execute(f"INSERT INTO {name} (id, value) VALUES (1, 0)")
    yield name
    with db.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def read_counter(db: Database, table: str) -> int:
    with db.connect() as conn:
        row = conn.execute(f"SELECT value FROM {table} WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


class Interferer:
    """Commits ``value = value + 100`` on the counter from its own connection, on request."""

    def __init__(self, db: Database, table: str, times: int = 1) -> None:
        self.db = db
        self.table = table
        self.remaining = times
        self.done = 0

    def maybe(self) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            self.done += 1
            with self.db.connect() as conn:
                conn.execute(f"UPDATE {self.table} SET value = value + 100 WHERE id = 1")

    async def maybe_async(self) -> None:
        await asyncio.to_thread(self.maybe)


def assert_one_conflict_then_success(metrics: OCCMetrics) -> None:
    snap = metrics.snapshot()
    assert snap.successes == 1
    assert snap.attempts_histogram == {2: 1}
    assert snap.total_conflicts == 1
    assert set(snap.conflicts) <= EXPECTED_TYPES


# -- the seed experiment ---------------------------------------------------------------------

WRITERS = 5
# The writers' first attempts all read before any of them writes (a barrier between read
# and write), so they read one snapshot and all but one of them must conflict: at least
# WRITERS - 1 conflicts, every run. Later attempts run unsynchronised. (A barrier that does
# not fill within this many seconds fails the test instead of hanging it.) The backoff
# between attempts is recorded, not waited for: the outcomes do not depend on it.
SYNC_TIMEOUT = 30.0


def check_backoff(delays: list[float], snap: Any) -> None:
    """Every conflict but a writer's last was followed by a positive wait."""
    assert len(delays) == snap.total_conflicts - snap.exhausted
    assert all(d > 0 for d in delays)


def seed_experiment_sync(db: Database, table: str, config: OCCRetryConfig) -> tuple[int, int]:
    metrics = OCCMetrics()
    barrier = threading.Barrier(WRITERS)
    read_all = threading.Barrier(WRITERS, timeout=SYNC_TIMEOUT)
    first = threading.local()
    outcomes: list[str] = []
    delays: list[float] = []

    def increment(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(f"SELECT value FROM {table} WHERE id = 1").fetchone()
        assert row is not None
        if not getattr(first, "done", False):
            first.done = True
            read_all.wait()
        conn.execute(f"UPDATE {table} SET value = %s WHERE id = 1", (row[0] + 1,))

    with ConnectionPool(db.dsn, min_size=WRITERS, max_size=WRITERS, open=True) as pool:

        def task() -> None:
            barrier.wait()
            try:
                run_transaction(pool, increment, config, metrics=metrics,
                                sleep=delays.append)
                outcomes.append("ok")
            except OCCRetryExhausted as exc:
                assert is_occ_error(exc.__cause__)  # type: ignore[arg-type]
                outcomes.append("exhausted")

        threads = [threading.Thread(target=task) for _ in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    snap = metrics.snapshot()
    assert len(outcomes) == WRITERS
    assert snap.successes == outcomes.count("ok")
    assert snap.exhausted == outcomes.count("exhausted")
    # A final value alone proves nothing: the writers must really have collided.
    assert snap.total_conflicts >= WRITERS - 1
    assert set(snap.conflicts) <= EXPECTED_TYPES
    check_backoff(delays, snap)
    return snap.successes, read_counter(db, table)


def test_seed_experiment_default_config_threads(db: Database, table: str) -> None:
    successes, final = seed_experiment_sync(db, table, OCCRetryConfig())
    # Some writers may exhaust their three attempts, but no committed increment is lost.
    assert final == successes
    assert successes >= 1


def test_seed_experiment_ten_attempts_threads(db: Database, table: str) -> None:
    successes, final = seed_experiment_sync(db, table, OCCRetryConfig(max_attempts=10))
    assert successes == WRITERS
    assert final == WRITERS


async def seed_experiment_async(
    db: Database, table: str, config: OCCRetryConfig, driver: str
) -> tuple[int, int]:
    metrics = OCCMetrics()
    start = asyncio.Event()
    read_all = asyncio.Event()  # a barrier as in seed_experiment_sync (asyncio.Barrier: 3.11+)
    first_reads = [WRITERS]
    delays: list[float] = []

    async def backoff(delay: float) -> None:
        delays.append(delay)

    async def all_read() -> None:
        # No writer retries before the barrier fills, so the first WRITERS reads are the
        # writers' first attempts.
        if first_reads[0] > 0:
            first_reads[0] -= 1
            if first_reads[0] == 0:
                read_all.set()
            await asyncio.wait_for(read_all.wait(), SYNC_TIMEOUT)

    async def increment(conn: Any) -> None:
        if driver == "asyncpg":
            value = await conn.fetchval(f"SELECT value FROM {table} WHERE id = 1")
            await all_read()
            await conn.execute(f"UPDATE {table} SET value = $1 WHERE id = 1", value + 1)
        else:
            cur = await conn.execute(f"SELECT value FROM {table} WHERE id = 1")
            (value,) = await cur.fetchone()
            await all_read()
            await conn.execute(f"UPDATE {table} SET value = %s WHERE id = 1", (value + 1,))

    async def task(pool: Any) -> str:
        await start.wait()
        try:
            await run_transaction_async(pool, increment, config, metrics=metrics,
                                        sleep=backoff)
        except OCCRetryExhausted:
            return "exhausted"
        return "ok"

    if driver == "asyncpg":
        pool: Any = await db.asyncpg_pool(WRITERS)
    else:
        pool = AsyncConnectionPool(db.dsn, min_size=WRITERS, max_size=WRITERS, open=False)
        await pool.open(wait=True)
    try:
        tasks = [asyncio.create_task(task(pool)) for _ in range(WRITERS)]
        await asyncio.sleep(0)
        start.set()
        outcomes = await asyncio.gather(*tasks)
    finally:
        await pool.close()

    snap = metrics.snapshot()
    assert snap.successes == outcomes.count("ok")
    assert snap.exhausted == outcomes.count("exhausted")
    assert snap.total_conflicts >= WRITERS - 1
    assert set(snap.conflicts) <= EXPECTED_TYPES
    check_backoff(delays, snap)
    return snap.successes, read_counter(db, table)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_seed_experiment_default_config_tasks(db: Database, table: str, driver: str) -> None:
    successes, final = await seed_experiment_async(db, table, OCCRetryConfig(), driver)
    assert final == successes
    assert successes >= 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_seed_experiment_ten_attempts_tasks(db: Database, table: str, driver: str) -> None:
    config = OCCRetryConfig(max_attempts=10)
    successes, final = await seed_experiment_async(db, table, config, driver)
    assert (successes, final) == (WRITERS, WRITERS)


# -- every runner target: one forced conflict, then success ----------------------------------


def increment_with_interference(interferer: Interferer, calls: list[int]) -> Callable[[Any], int]:
    """A transaction body for DBAPI-style connections (psycopg, psycopg2)."""

    def body(conn: Any) -> int:
        calls.append(1)
        cur = conn.cursor()
        cur.execute(f"SELECT value FROM {interferer.table} WHERE id = 1")
        (value,) = cur.fetchone()
        interferer.maybe()
        cur.execute(f"UPDATE {interferer.table} SET value = %s WHERE id = 1", (value + 1,))
        return int(value) + 1

    return body


def sqlalchemy_body(interferer: Interferer, calls: list[int]) -> Callable[[Any], int]:
    """The same transaction for a SQLAlchemy Connection or Session."""
    select = sqlalchemy.text(f"SELECT value FROM {interferer.table} WHERE id = 1")
    update = sqlalchemy.text(f"UPDATE {interferer.table} SET value = :v WHERE id = 1")

    def body(conn: Any) -> int:
        calls.append(1)
        value = conn.execute(select).scalar_one()
        interferer.maybe()
        conn.execute(update, {"v": value + 1})
        return int(value) + 1

    return body


SYNC_TARGETS = [
    "psycopg-connection",
    "psycopg-connection-autocommit",
    "psycopg-pool",
    "psycopg2-connection",
    "psycopg2-connection-autocommit",
    "psycopg2-pool",
    "sqlalchemy-engine",
    "sqlalchemy-engine-autocommit",
    "sqlalchemy-connection",
    "sqlalchemy-sessionmaker",
    "sqlalchemy-sessionmaker-autocommit",
]


@contextlib.contextmanager
def sync_target(db: Database, name: str) -> Iterator[tuple[Any, str]]:
    """The runner target under test, and which body dialect it speaks."""
    if name.startswith("psycopg-connection"):
        with db.connect(autocommit=name.endswith("autocommit")) as conn:
            yield conn, "dbapi"
            # A single connection is handed back idle, in the mode it came in.
            assert conn.info.transaction_status.name == "IDLE"
            assert conn.autocommit is name.endswith("autocommit")
    elif name == "psycopg-pool":
        with ConnectionPool(db.dsn, min_size=1, max_size=2, open=True) as pool:
            yield pool, "dbapi"
    elif name.startswith("psycopg2-connection"):
        conn2 = psycopg2.connect(db.dsn)
        conn2.autocommit = name.endswith("autocommit")
        try:
            yield conn2, "dbapi"
            assert conn2.get_transaction_status() == 0  # idle
            assert conn2.autocommit is name.endswith("autocommit")
        finally:
            conn2.close()
    elif name == "psycopg2-pool":
        pool2 = psycopg2.pool.ThreadedConnectionPool(1, 2, db.dsn)
        try:
            yield pool2, "dbapi"
        finally:
            pool2.closeall()
    else:
        autocommit = name.endswith("autocommit")
        engine = db.engine(isolation_level="AUTOCOMMIT") if autocommit else db.engine()
        try:
            if name == "sqlalchemy-connection":
                with engine.connect() as conn3:
                    yield conn3, "sqlalchemy"
            elif name.startswith("sqlalchemy-sessionmaker"):
                yield sqlalchemy.orm.sessionmaker(bind=engine), "sqlalchemy"
            else:
                yield engine, "sqlalchemy"
        finally:
            engine.dispose()


def sync_body(kind: str, interferer: Interferer, calls: list[int]) -> Callable[[Any], int]:
    if kind == "dbapi":
        return increment_with_interference(interferer, calls)
    return sqlalchemy_body(interferer, calls)


@pytest.mark.parametrize("name", SYNC_TARGETS)
def test_runner_retries_a_real_conflict(db: Database, table: str, name: str) -> None:
    metrics = OCCMetrics()
    interferer = Interferer(db, table)
    calls: list[int] = []
    with sync_target(db, name) as (target, kind):
        result = run_transaction(target, sync_body(kind, interferer, calls), QUICK, metrics=metrics)
    assert result == 101  # the retry read the interferer's committed +100
    assert calls == [1, 1]
    assert read_counter(db, table) == 101
    assert_one_conflict_then_success(metrics)


@pytest.mark.parametrize("name", SYNC_TARGETS)
def test_runner_exhausts_with_the_drivers_error_as_cause(
    db: Database, table: str, name: str
) -> None:
    metrics = OCCMetrics()
    interferer = Interferer(db, table, times=2)
    config = QUICK.with_options(max_attempts=2)
    with sync_target(db, name) as (target, kind), pytest.raises(OCCRetryExhausted) as info:
        run_transaction(target, sync_body(kind, interferer, []), config, metrics=metrics)
    exc = info.value
    assert exc.attempts == 2
    assert exc.occ_type in EXPECTED_TYPES
    assert str(exc).startswith("OCC retry exhausted after 2 attempts: ")
    cause = exc.__cause__
    assert cause is not None and is_occ_error(cause)
    if kind == "sqlalchemy":
        # SQLAlchemy's wrapper was recognised through .orig in a real runner.
        assert isinstance(cause, sqlalchemy.exc.DBAPIError)
        assert getattr(cause.orig, "sqlstate", None) == "40001"
    assert read_counter(db, table) == 200  # neither attempt committed anything
    assert metrics.snapshot().exhausted == 1


@pytest.mark.parametrize("name", SYNC_TARGETS)
def test_runner_rolls_back_and_propagates_other_errors(db: Database, table: str, name: str) -> None:
    metrics = OCCMetrics()
    calls: list[int] = []

    def body(conn: Any) -> None:
        calls.append(1)
        statement = f"UPDATE {table} SET value = 7 WHERE id = 1"
        if kind == "sqlalchemy":
            conn.execute(sqlalchemy.text(statement))
        else:
            conn.cursor().execute(statement)
        raise LookupError("application error after a write")

    with sync_target(db, name) as (target, kind), pytest.raises(LookupError):
        run_transaction(target, body, QUICK, metrics=metrics)
    assert calls == [1]
    # Atomic even on AUTOCOMMIT engines and autocommit connections.
    assert read_counter(db, table) == 0
    assert metrics.snapshot().failures == 1


ASYNC_TARGETS = [
    "psycopg-async-connection",
    "psycopg-async-pool",
    "asyncpg-connection",
    "asyncpg-pool",
    "asyncpg-pool-connection",
    "sqlalchemy-async-engine",
    "sqlalchemy-async-engine-autocommit",
    "sqlalchemy-async-connection",
    "sqlalchemy-async-sessionmaker",
    "sqlalchemy-async-sessionmaker-autocommit",
]


@contextlib.asynccontextmanager
async def async_target(db: Database, name: str) -> AsyncIterator[tuple[Any, str]]:
    if name == "psycopg-async-connection":
        async with await psycopg.AsyncConnection.connect(db.dsn, autocommit=True) as conn:
            yield conn, "psycopg"
            assert conn.info.transaction_status.name == "IDLE"
    elif name == "psycopg-async-pool":
        async with AsyncConnectionPool(db.dsn, min_size=1, max_size=2, open=False) as pool:
            yield pool, "psycopg"
    elif name == "asyncpg-connection":
        conn2 = await asyncpg.connect(**db.asyncpg_kwargs())
        try:
            yield conn2, "asyncpg"
            assert not conn2.is_in_transaction()
        finally:
            await conn2.close()
    elif name.startswith("asyncpg-pool"):
        pool2 = await db.asyncpg_pool(2)
        try:
            if name == "asyncpg-pool-connection":
                async with pool2.acquire() as proxy:
                    yield proxy, "asyncpg"
            else:
                yield pool2, "asyncpg"
        finally:
            await pool2.close()
    else:
        autocommit = name.endswith("autocommit")
        engine = db.async_engine(isolation_level="AUTOCOMMIT") if autocommit else db.async_engine()
        try:
            if name == "sqlalchemy-async-connection":
                async with engine.connect() as conn3:
                    yield conn3, "sqlalchemy"
            elif name.startswith("sqlalchemy-async-sessionmaker"):
                from sqlalchemy.ext.asyncio import async_sessionmaker

                yield async_sessionmaker(bind=engine), "sqlalchemy"
            else:
                yield engine, "sqlalchemy"
        finally:
            await engine.dispose()


def async_body(
    kind: str, interferer: Interferer, calls: list[int]
) -> Callable[[Any], Awaitable[int]]:
    table = interferer.table

    async def read(conn: Any) -> int:
        if kind == "asyncpg":
            return int(await conn.fetchval(f"SELECT value FROM {table} WHERE id = 1"))
        if kind == "psycopg":
            cur = await conn.execute(f"SELECT value FROM {table} WHERE id = 1")
            row = await cur.fetchone()
            return int(row[0])
        result = await conn.execute(sqlalchemy.text(f"SELECT value FROM {table} WHERE id = 1"))
        return int(result.scalar_one())

    async def write(conn: Any, value: int) -> None:
        if kind == "asyncpg":
            await conn.execute(f"UPDATE {table} SET value = $1 WHERE id = 1", value)
        elif kind == "psycopg":
            await conn.execute(f"UPDATE {table} SET value = %s WHERE id = 1", (value,))
        else:
            statement = sqlalchemy.text(f"UPDATE {table} SET value = :v WHERE id = 1")
            await conn.execute(statement, {"v": value})

    async def body(conn: Any) -> int:
        calls.append(1)
        value = await read(conn)
        await interferer.maybe_async()
        await write(conn, value + 1)
        return value + 1

    return body


@pytest.mark.parametrize("name", ASYNC_TARGETS)
async def test_async_runner_retries_a_real_conflict(db: Database, table: str, name: str) -> None:
    metrics = OCCMetrics()
    calls: list[int] = []
    async with async_target(db, name) as (target, kind):
        body = async_body(kind, Interferer(db, table), calls)
        result = await run_transaction_async(target, body, QUICK, metrics=metrics)
    assert result == 101
    assert calls == [1, 1]
    assert read_counter(db, table) == 101
    assert_one_conflict_then_success(metrics)


@pytest.mark.parametrize("name", ASYNC_TARGETS)
async def test_async_runner_exhausts_and_rolls_back(db: Database, table: str, name: str) -> None:
    metrics = OCCMetrics()
    config = QUICK.with_options(max_attempts=2)
    async with async_target(db, name) as (target, kind):
        body = async_body(kind, Interferer(db, table, times=2), [])
        with pytest.raises(OCCRetryExhausted) as info:
            await run_transaction_async(target, body, config, metrics=metrics)
    assert info.value.attempts == 2
    assert info.value.__cause__ is not None and is_occ_error(info.value.__cause__)
    if kind == "sqlalchemy":
        assert isinstance(info.value.__cause__, sqlalchemy.exc.DBAPIError)
    assert read_counter(db, table) == 200


@pytest.mark.parametrize("name", ["asyncpg-pool", "sqlalchemy-async-engine-autocommit"])
async def test_async_runner_rolls_back_on_other_errors(db: Database, table: str, name: str) -> None:
    calls: list[int] = []

    async def body(conn: Any) -> None:
        calls.append(1)
        statement = f"UPDATE {table} SET value = 7 WHERE id = 1"
        if kind == "asyncpg":
            await conn.execute(statement)
        else:
            await conn.execute(sqlalchemy.text(statement))
        raise LookupError("application error after a write")

    async with async_target(db, name) as (target, kind):
        with pytest.raises(LookupError):
            await run_transaction_async(target, body, QUICK, metrics=OCCMetrics())
    assert calls == [1]
    assert read_counter(db, table) == 0


# -- where the conflict is reported ---------------------------------------------------------


@pytest.mark.parametrize("path", ["dsql-at-commit", "postgres-at-statement"])
def test_conflicts_reported_at_commit_and_at_the_statement_are_both_retried(
    db: Database, table: str, path: str
) -> None:
    """DSQL lets the loser's statements succeed and fails its COMMIT; PostgreSQL fails the
    statement that touches a row changed since the snapshot. Same runner, same outcome."""
    if path == "postgres-at-statement":
        assert db.backend_dsn is not None
        conn = psycopg.connect(db.backend_dsn, autocommit=True)
        # DSQL always runs at REPEATABLE READ; plain PostgreSQL needs to be asked.
        conn.execute("SET default_transaction_isolation = 'repeatable read'")
    else:
        conn = db.connect()
    calls: list[int] = []
    finished: list[int] = []  # numbers of the attempts whose body ran to the end
    seen: list[OCCType | None] = []
    body = increment_with_interference(Interferer(db, table), calls)

    def tracked(c: psycopg.Connection[Any]) -> int:
        result = body(c)
        finished.append(len(calls))
        return result

    config = QUICK.with_options(on_retry=lambda n, d, e: seen.append(classify_occ(e)))
    with conn:
        assert run_transaction(conn, tracked, config, metrics=OCCMetrics()) == 101
    assert read_counter(db, table) == 101
    if path == "dsql-at-commit":
        # The first attempt's body ran to the end: the conflict came from COMMIT, as (OC000).
        assert finished == [1, 2]
        assert seen == [OCCType.DATA]
    else:
        assert finished == [2]  # the first attempt failed at its UPDATE
        assert seen == [OCCType.UNKNOWN]


# -- errors that must not be retried ---------------------------------------------------------


def test_syntax_error_is_not_retried(db: Database, table: str) -> None:
    metrics = OCCMetrics()
    calls: list[int] = []

    def body(conn: psycopg.Connection[Any]) -> None:
        calls.append(1)
        conn.execute("SELEC value FROM " + table)

    with (
        ConnectionPool(db.dsn, min_size=1, max_size=1) as pool,
        pytest.raises(psycopg.errors.SyntaxError),
    ):
        run_transaction(pool, body, QUICK, metrics=metrics)
    assert calls == [1]
    assert metrics.snapshot().failures == 1
    assert metrics.snapshot().total_conflicts == 0


def test_wrapped_syntax_error_is_not_retried(db: Database, table: str) -> None:
    engine = db.engine()
    calls: list[int] = []

    def body(conn: Any) -> None:
        calls.append(1)
        conn.execute(sqlalchemy.text("SELEC 1"))

    try:
        with pytest.raises(sqlalchemy.exc.ProgrammingError) as info:
            run_transaction(engine, body, QUICK, metrics=OCCMetrics())
    finally:
        engine.dispose()
    assert isinstance(info.value.orig, psycopg.errors.SyntaxError)
    assert calls == [1]


def test_unique_violation_is_not_retried(db: Database, table: str) -> None:
    calls: list[int] = []

    def body(conn: psycopg.Connection[Any]) -> None:
        calls.append(1)
        conn.execute(f"INSERT INTO {table} (id, value) VALUES (1, 5)")

    with db.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        run_transaction(conn, body, QUICK, metrics=OCCMetrics())
    assert calls == [1]


def test_a_connection_with_an_open_transaction_is_refused(db: Database, table: str) -> None:
    with db.connect(autocommit=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(DsqlError, match="no transaction open"):
            run_transaction(conn, lambda c: None)


async def test_an_asyncpg_connection_in_a_transaction_is_refused(db: Database) -> None:
    conn = await asyncpg.connect(**db.asyncpg_kwargs())
    try:
        async with conn.transaction():
            with pytest.raises(DsqlError, match="no transaction open"):
                await run_transaction_async(conn, lambda c: asyncio.sleep(0))
    finally:
        await conn.close()


def test_deadline_stops_real_retries(db: Database, table: str) -> None:
    interferer = Interferer(db, table, times=1000)
    config = OCCRetryConfig(
        max_attempts=1000, base_delay=0.1, max_delay=0.1, jitter_factor=0.0, deadline=0.35
    )
    with db.connect() as conn, pytest.raises(OCCRetryExhausted) as info:
        run_transaction(conn, increment_with_interference(interferer, []), config)
    assert info.value.deadline_exceeded
    # Each attempt plus its 100 ms wait takes well over 100 ms, so a 350 ms budget allows
    # at most four attempts; without the budget there would have been a thousand.
    assert 1 <= info.value.attempts <= 4
    assert interferer.done == info.value.attempts


# -- the other call-site forms, as documented in dsqlkit.occ ---------------------------------


def test_retry_on_occ_with_a_callback_owning_the_transaction(db: Database, table: str) -> None:
    metrics = OCCMetrics()
    interferer = Interferer(db, table)
    body = increment_with_interference(interferer, [])
    with ConnectionPool(db.dsn, min_size=1, max_size=2) as pool:

        def work() -> int:
            with pool.connection() as conn, conn.transaction():
                return body(conn)

        assert retry_on_occ(QUICK, work, metrics=metrics) == 101
    assert_one_conflict_then_success(metrics)


def test_decorator_on_a_real_transaction(db: Database, table: str) -> None:
    metrics = OCCMetrics()
    interferer = Interferer(db, table)
    body = increment_with_interference(interferer, [])
    seen: list[tuple[int, float]] = []

    with ConnectionPool(db.dsn, min_size=1, max_size=2) as pool:

        @occ_retry(QUICK, metrics=metrics, on_retry=lambda n, d, e: seen.append((n, d)))
        def increment() -> int:
            with pool.connection() as conn, conn.transaction():
                return body(conn)

        assert increment() == 101
    assert [n for n, _ in seen] == [1]
    assert_one_conflict_then_success(metrics)


def test_attempt_loop_on_a_real_transaction(db: Database, table: str) -> None:
    metrics = OCCMetrics()
    body = increment_with_interference(Interferer(db, table), [])
    result = None
    with db.connect() as conn:
        for attempt in occ_attempts(QUICK, metrics=metrics):
            with attempt, conn.transaction():
                result = body(conn)
    assert result == 101
    assert_one_conflict_then_success(metrics)


async def test_async_attempt_loop_on_a_real_transaction(db: Database, table: str) -> None:
    metrics = OCCMetrics()
    body = async_body("asyncpg", Interferer(db, table), [])
    result = None
    pool = await db.asyncpg_pool(2)
    try:
        async for attempt in occ_attempts_async(QUICK, metrics=metrics):
            with attempt:
                async with pool.acquire() as conn, conn.transaction():
                    result = await body(conn)
    finally:
        await pool.close()
    assert result == 101
    assert_one_conflict_then_success(metrics)
