"""Connection load on the local endpoint: many connections held at once, then a storm of new
connections above the configured rate, with a pool working through it and a pool opened in
the middle of it.

Works with an in-process ``LocalDSQL`` and with a child-process endpoint alike: it needs
``dsn()``, ``url()``, ``credentials`` and ``backend_dsn``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg


def classify(exc: BaseException) -> str:
    """A connection error as DSQL's SQLSTATE where it is one of the quota errors."""
    text = str(exc)
    if "rate exceeded" in text:
        return "53400 rate exceeded"
    if "too many open connections" in text:
        return "53300 too many connections"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:120]}"


def _backend_sessions(ep: Any) -> int:
    with psycopg.connect(ep.backend_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend' AND pid <> pg_backend_pid()").fetchone()
        return int(row[0]) if row else -1


@dataclass
class HoldReport:
    target: int
    opened: int
    failures: Counter[str]
    open_seconds: float
    answered: int
    backend_sessions: int
    over_the_limit: str
    max_connections_setting: int
    endpoint_rss: int | None = None

    def lines(self) -> list[str]:
        return [
            f"held connections         {self.opened:,} of {self.target:,} opened in "
            f"{self.open_seconds:.1f} s ({self.opened / max(self.open_seconds, 1e-9):.0f}/s); "
            f"{self.answered:,} answered SELECT 1 while all were open",
            f"backend sessions         {self.backend_sessions:,} while held (PostgreSQL "
            f"max_connections {self.max_connections_setting:,})",
            "failures while opening   " + (", ".join(f"{k} {v}" for k, v in
                                                     self.failures.items()) or "none"),
            f"one more connection      {self.over_the_limit}",
            *([f"endpoint RSS while held  {self.endpoint_rss / 2**20:.0f} MiB"]
              if self.endpoint_rss is not None else []),
        ]


def hold_connections(ep: Any, n: int, *, threads: int = 32) -> HoldReport:
    """Open ``n`` connections at once, check each answers, try one more, close them all."""
    dsn = ep.dsn()  # one token for all: a token admits any number of connections
    conns: list[psycopg.Connection[Any]] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def open_one(_: int) -> None:
        try:
            c = psycopg.connect(dsn, autocommit=True, connect_timeout=60)
        except psycopg.Error as exc:
            with lock:
                failures[classify(exc)] += 1
            return
        with lock:
            conns.append(c)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(open_one, range(n)))
    open_seconds = time.monotonic() - started
    try:
        answered = 0

        def ask(c: psycopg.Connection[Any]) -> bool:
            try:
                return c.execute("SELECT 1").fetchone() == (1,)
            except psycopg.Error:
                return False

        with ThreadPoolExecutor(threads) as pool:
            answered = sum(pool.map(ask, conns))
        sessions = _backend_sessions(ep)
        rss = ep.rss() if hasattr(ep, "rss") else None
        with psycopg.connect(ep.backend_dsn, autocommit=True) as conn:
            setting = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        try:
            psycopg.connect(dsn, connect_timeout=30).close()
            over = "accepted"
        except psycopg.Error as exc:
            over = classify(exc)
    finally:
        for c in conns:
            c.close()
    return HoldReport(target=n, opened=len(conns), failures=failures, open_seconds=open_seconds,
                      answered=answered, backend_sessions=sessions, over_the_limit=over,
                      max_connections_setting=setting, endpoint_rss=rss)


@dataclass
class StormReport:
    attempts: int
    outcomes: Counter[str]
    seconds: float
    background_transfers: int
    background_errors: list[str]
    recovering_pool_ready_after: float | None
    recovering_pool_errors: int
    fresh_connection_after: str
    endpoint_stats: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.attempts / max(self.seconds, 1e-9)
        return [
            f"connection storm         {self.attempts:,} attempts in {self.seconds:.1f} s "
            f"({rate:.0f}/s): " + ", ".join(f"{k} {v:,}" for k, v in
                                            self.outcomes.most_common()),
            f"pool working through it  {self.background_transfers:,} transfers, "
            f"{len(self.background_errors)} errors",
            "pool opened during it    " + (
                f"full {self.recovering_pool_ready_after:.1f} s after the storm ended "
                f"({self.recovering_pool_errors} refused connection attempts on the way)"
                if self.recovering_pool_ready_after is not None else "never filled"),
            f"a new connection after  {self.fresh_connection_after}",
            *([f"endpoint counters        {self.endpoint_stats}"] if self.endpoint_stats else []),
            *[f"  background error: {e}" for e in self.background_errors[:5]],
        ]


def _setup_accounts(ep: Any) -> None:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS storm_accounts (id int PRIMARY KEY, "
                     "balance numeric NOT NULL)")
        conn.execute("DELETE FROM storm_accounts")
        conn.execute("INSERT INTO storm_accounts VALUES (1, 1000), (2, 1000)")


def connection_storm(ep: Any, attempts: int, *, threads: int = 32,
                     recovering_min_size: int = 4,
                     stats: Callable[[], dict[str, int]] | None = None) -> StormReport:
    """``attempts`` new connections as fast as ``threads`` can open them, while a pool opened
    before keeps running transfers and a pool opened at the start of the storm tries to fill.
    """
    from dsqlkit.occ import run_transaction
    from dsqlkit.psycopg import create_pool

    _setup_accounts(ep)
    background = create_pool(ep.url(), credentials=ep.credentials, min_size=2, max_size=2,
                             kwargs={"autocommit": True})
    stop = threading.Event()
    moved = [0]
    errors: list[str] = []

    def transfers() -> None:
        def move(conn: psycopg.Connection[Any]) -> None:
            conn.execute("UPDATE storm_accounts SET balance = balance - 1 WHERE id = 1")
            conn.execute("UPDATE storm_accounts SET balance = balance + 1 WHERE id = 2")

        while not stop.is_set():
            try:
                run_transaction(background, move)
                moved[0] += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)

    worker = threading.Thread(target=transfers, name="storm-background", daemon=True)
    worker.start()
    dsn = ep.dsn()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    refused = threading.Event()

    def attempt(_: int) -> None:
        try:
            c = psycopg.connect(dsn, connect_timeout=30)
        except psycopg.Error as exc:
            key = classify(exc)
            if key.startswith("53400"):
                refused.set()
        else:
            c.close()
            key = "connected"
        with lock:
            outcomes[key] += 1

    def storm() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(attempt, range(attempts)))
        refused.set()

    recovering = create_pool(ep.url(), credentials=ep.credentials, open=False,
                             min_size=recovering_min_size, max_size=recovering_min_size,
                             kwargs={"autocommit": True})
    started = time.monotonic()
    storming = threading.Thread(target=storm, name="storm", daemon=True)
    try:
        storming.start()
        # Open the pool once the quota is spent: its connections are refused until the
        # storm is over, and it must fill by itself afterwards.
        refused.wait(120)
        recovering.open(wait=False)
        storming.join()
        ended = time.monotonic()
        ready_after: float | None = None
        deadline = ended + 60
        while time.monotonic() < deadline:
            if recovering.get_stats().get("pool_available", 0) >= recovering_min_size:
                ready_after = time.monotonic() - ended
                break
            time.sleep(0.05)
        with recovering.connection() as conn:
            conn.execute("SELECT 1")
        recovering_errors = recovering.get_stats().get("connections_errors", 0)
    finally:
        stop.set()
        worker.join(30)
        recovering.close()
        background.close()
    # The rate quota refills: a new connection gets in again (waiting for a token if needed).
    fresh = "refused"
    for _ in range(100):
        try:
            psycopg.connect(ep.dsn(), connect_timeout=30).close()
            fresh = "accepted"
            break
        except psycopg.Error as exc:
            fresh = classify(exc)
            time.sleep(0.1)
    return StormReport(attempts=attempts, outcomes=outcomes, seconds=ended - started,
                       background_transfers=moved[0], background_errors=errors,
                       recovering_pool_ready_after=ready_after,
                       recovering_pool_errors=recovering_errors,
                       fresh_connection_after=fresh,
                       endpoint_stats=stats() if stats is not None else {})
