"""Chaos on the DAT401 bank: the chapter 5 transfer workload (a dsqlkit pool and
``dsqlkit.occ.run_transaction`` around ``bank.transfer``) under injected OC000 conflicts,
dropped connections and a SIGKILLed backend PostgreSQL, with a ledger that makes transfers
idempotent.

Each transfer has an id chosen by the client (a UUID). Its transaction first looks the id up
in ``transfer_ledger``; a row there means an earlier attempt committed, and the transfer
reports "already applied" without touching a balance. Otherwise it inserts the ledger row and
moves the money, all in one transaction, so the ledger row and the balance changes commit
together or not at all (a second insert of the id fails on the primary key).

An attempt that loses its connection during COMMIT has an unknown outcome. It is reported as
such: the client reads the ledger to learn whether it committed, then retries the transfer,
whose ledger check must agree (already applied exactly when the ledger said committed).

Afterwards the database is read directly (not through the endpoint): the sum of balances
must be unchanged; the balances must equal the initial ones plus the effect of every ledger
row (so every ledger row applied exactly once, and nothing else moved money); every transfer
the client saw succeed must be in the ledger. The pool that lived through it all must still
serve transfers.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ import OCCMetrics, OCCRetryConfig, run_transaction

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dat401"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
import bank  # noqa: E402  (the DAT401 bank: examples/dat401/bank.py)

LEDGER = """CREATE TABLE IF NOT EXISTS transfer_ledger (
  id uuid PRIMARY KEY,
  payer_id int NOT NULL,
  payee_id int NOT NULL,
  amount numeric NOT NULL
)"""
ACCOUNTS = "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance numeric)"
# A dropped connection, a restarting backend: errors after which the transfer is retried.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


@dataclass(frozen=True)
class ChaosPlan:
    transfers: int = 1500
    threads: int = 8
    accounts: int = 20
    initial_balance: Decimal = Decimal(100_000)
    # The backend is SIGKILLed when this share of the transfers has finished.
    kill_at: float = 0.5
    # This share of the transfers is submitted twice, from different threads.
    duplicates: float = 0.05
    # Transfers run on the same pool after everything, to show that it recovered.
    after: int = 100
    seed: int = 7
    max_app_attempts: int = 50


@dataclass
class Transfer:
    id: uuid.UUID
    payer: int
    payee: int
    amount: Decimal
    outcome: str = "pending"  # applied | already-applied | rejected | gave-up
    attempts: int = 0  # transaction attempts (OCC retries included)
    app_attempts: int = 0  # run_transaction calls
    unknown: list[tuple[bool, str]] = field(default_factory=list)  # (ledger said, retry said)
    errors: list[str] = field(default_factory=list)
    finished_at: float = 0.0


@dataclass
class ChaosReport:
    plan: ChaosPlan
    submitted: int
    unique: int
    outcomes: Counter[str]
    transaction_attempts: int
    occ_retries: int
    injected: Counter[str]
    connection_errors: Counter[str]
    unexpected_errors: list[str]
    unknown_outcomes: int
    unknown_committed: int
    unknown_disagreements: list[str]
    restart_attempts: int
    outage_seconds: float
    finished_after_restart: int
    sum_before: Decimal
    sum_after: Decimal
    ledger_rows: int
    balance_mismatches: list[str]
    lost_acknowledged: list[str]
    phantom_ledger_rows: int
    rejected_in_ledger: int
    after_ok: int
    after_failed: int
    seconds: float
    pool_stats: dict[str, int]

    def lines(self) -> list[str]:
        o = self.outcomes
        return [
            f"transfers                {self.unique:,} ({self.submitted:,} submissions, "
            f"{self.submitted - self.unique} duplicates) in {self.seconds:.1f} s with "
            f"{self.plan.threads} threads over {self.plan.accounts} accounts",
            "outcomes                 " + ", ".join(f"{k} {v:,}" for k, v in sorted(o.items())),
            f"transaction attempts     {self.transaction_attempts:,} ({self.occ_retries:,} OCC "
            "retries)",
            "faults injected          " + ", ".join(f"{k} {v:,}" for k, v in
                                                    sorted(self.injected.items())),
            f"backend                  SIGKILLed once, back after {self.outage_seconds:.2f} s "
            f"({self.restart_attempts} restart_backend() calls); {self.finished_after_restart:,}"
            " transfers finished after it, on the same pool",
            "connection errors seen   " + (", ".join(f"{k} {v:,}" for k, v in
                                                     self.connection_errors.most_common())
                                          or "none"),
            f"unexpected errors        {len(self.unexpected_errors)}",
            f"unknown COMMIT outcomes  {self.unknown_outcomes}: the ledger then held "
            f"{self.unknown_committed} of them (committed by that attempt or by a duplicate "
            f"submission), {self.unknown_outcomes - self.unknown_committed} not (retried); "
            f"the ledger and the retried transfer disagreed {len(self.unknown_disagreements)} "
            "times",
            f"sum of balances          {self.sum_before} before, {self.sum_after} after",
            f"ledger                   {self.ledger_rows:,} rows; balances off the ledger: "
            f"{len(self.balance_mismatches)}; phantom rows: {self.phantom_ledger_rows}; "
            f"rejected transfers in it: {self.rejected_in_ledger}",
            f"acknowledged but lost    {len(self.lost_acknowledged)}",
            f"after the chaos          {self.after_ok} of {self.after_ok + self.after_failed} "
            "transfers on the same pool succeeded",
            "pool                     " + ", ".join(f"{k} {v}" for k, v in
                                                    sorted(self.pool_stats.items())),
            *[f"  unexpected: {e}" for e in self.unexpected_errors[:10]],
            *[f"  disagreement: {e}" for e in self.unknown_disagreements[:10]],
            *[f"  lost: {e}" for e in self.lost_acknowledged[:10]],
            *[f"  mismatch: {e}" for e in self.balance_mismatches[:10]],
        ]


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


class Bank:
    """The workload's client side: a pool, the retry policy, and the idempotent transfer."""

    def __init__(self, pool: Any, metrics: OCCMetrics, max_app_attempts: int) -> None:
        self.pool = pool
        self.metrics = metrics
        self.config = OCCRetryConfig.high_contention()
        self.max_app_attempts = max_app_attempts
        self.lock = threading.Lock()
        self.connection_errors: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def ledger_has(self, tid: uuid.UUID) -> bool:
        """Whether the ledger holds ``tid``; waits out an outage (autocommit reads)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.pool.connection() as conn:
                    row = conn.execute("SELECT 1 FROM transfer_ledger WHERE id = %s",
                                       (tid,)).fetchone()
                    return row is not None
            except CONNECTION_ERRORS as exc:
                with self.lock:
                    self.connection_errors[_error_name(exc)] += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def transfer(self, t: Transfer) -> None:
        state = {"committing": False}

        def body(conn: psycopg.Connection[Any]) -> str:
            state["committing"] = False
            t.attempts += 1
            found = conn.execute("SELECT 1 FROM transfer_ledger WHERE id = %s",
                                 (t.id,)).fetchone()
            if found is not None:
                state["committing"] = True
                return "already-applied"
            conn.execute("INSERT INTO transfer_ledger (id, payer_id, payee_id, amount) "
                         "VALUES (%s, %s, %s, %s)", (t.id, t.payer, t.payee, t.amount))
            bank.transfer(conn, bank.Transfer(t.payer, t.payee, t.amount))
            # What follows is COMMIT: an error from here on leaves the outcome unknown.
            state["committing"] = True
            return "applied"

        pending: bool | None = None  # what the ledger said after an unknown outcome
        while t.app_attempts < self.max_app_attempts:
            t.app_attempts += 1
            try:
                result = run_transaction(self.pool, body, self.config, metrics=self.metrics)
            except psycopg.errors.UniqueViolation:
                # A concurrent duplicate committed the same id first.
                result = "already-applied"
            except bank.BankError:
                t.outcome = "rejected"
                return
            except OCCRetryExhausted as exc:
                t.errors.append(_error_name(exc))
                continue
            except CONNECTION_ERRORS as exc:
                with self.lock:
                    self.connection_errors[_error_name(exc)] += 1
                t.errors.append(_error_name(exc))
                if state["committing"]:
                    # Lost during COMMIT: report it, and learn from the ledger what happened.
                    pending = self.ledger_has(t.id)
                    t.unknown.append((pending, ""))
                continue
            except Exception as exc:
                with self.lock:
                    self.unexpected.append(f"{t.id}: {_error_name(exc)}: {exc}")
                t.errors.append(_error_name(exc))
                time.sleep(0.01)
                continue
            if pending is not None:
                t.unknown[-1] = (pending, result)
            t.outcome = result
            t.finished_at = time.monotonic()
            return
        t.outcome = "gave-up"


def _wait_backend(ep: Any, seconds: float) -> bool:
    """Whether the backend accepts a connection within ``seconds`` (False if it died)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            psycopg.connect(ep.backend_dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            if ep.postgres is not None and not ep.postgres.running:
                return False
            time.sleep(0.02)
    return False


def crash_and_restart(ep: Any) -> tuple[int, float]:
    """SIGKILL the backend, restart it, and wait until it accepts connections.

    Returns (restart calls, seconds from the kill until the backend accepted a connection).
    One call is enough since restart_backend() waits for the new postmaster and reaps the
    killed one's orphans (test_reliability_chaos.py pins both); the loop is the recovery an
    operator would script, and the count shows whether it was needed.
    """
    killed = time.monotonic()
    ep.kill_backend()
    calls = 0
    while True:
        calls += 1
        ep.restart_backend()
        if _wait_backend(ep, 15):
            return calls, time.monotonic() - killed
        if calls >= 20:
            raise RuntimeError("the backend did not come back after 20 restarts")
        time.sleep(0.2)


def setup(ep: Any, plan: ChaosPlan) -> None:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        conn.execute(ACCOUNTS)
        conn.execute(LEDGER)
        conn.execute("DELETE FROM transfer_ledger")
        conn.execute("DELETE FROM accounts")
        values = ", ".join(f"({i}, {plan.initial_balance})" for i in range(1, plan.accounts + 1))
        conn.execute(f"INSERT INTO accounts (id, balance) VALUES {values}")


def _draw(rng: random.Random, plan: ChaosPlan) -> Transfer:
    payer, payee = rng.sample(range(1, plan.accounts + 1), 2)
    return Transfer(uuid.UUID(int=rng.getrandbits(128), version=4), payer, payee,
                    Decimal(rng.randint(1, 10_000)) / 100)


def run_chaos(ep: Any, plan: ChaosPlan,
              progress: Callable[[int, int], None] | None = None) -> ChaosReport:
    """Run the chaos plan against ``ep`` (a started ``LocalDSQL`` with ``inject=``)."""
    from dsqlkit.psycopg import create_pool

    started = time.monotonic()
    setup(ep, plan)
    rng = random.Random(plan.seed)
    transfers = [_draw(rng, plan) for _ in range(plan.transfers)]
    queue: deque[Transfer] = deque(transfers)
    # Duplicate submissions: the same transfer (same id) queued again, later.
    dup_count = int(plan.transfers * plan.duplicates)
    copies = [Transfer(t.id, t.payer, t.payee, t.amount)
              for t in rng.sample(transfers, dup_count)]
    for c in copies:
        queue.insert(rng.randrange(len(queue) + 1), c)
    submissions = list(queue)
    sum_before = plan.initial_balance * plan.accounts
    metrics = OCCMetrics()
    pool = create_pool(ep.url(), credentials=ep.credentials, min_size=plan.threads,
                       max_size=plan.threads, timeout=60.0, kwargs={"autocommit": True})
    client = Bank(pool, metrics, plan.max_app_attempts)
    done = [0]
    lock = threading.Lock()
    crash: dict[str, float] = {}

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                t = queue.popleft()
            client.transfer(t)
            with lock:
                done[0] += 1

    def chaos() -> None:
        target = int(len(submissions) * plan.kill_at)
        while done[0] < target:
            time.sleep(0.005)
        crash["at"] = time.monotonic()
        calls, outage = crash_and_restart(ep)
        crash["calls"], crash["outage"], crash["back"] = calls, outage, time.monotonic()

    try:
        threads = [threading.Thread(target=worker, name=f"bank-{i}", daemon=True)
                   for i in range(plan.threads)]
        killer = threading.Thread(target=chaos, name="chaos", daemon=True)
        killer.start()
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(0.5)
            if progress is not None:
                progress(done[0], len(submissions))
        killer.join(120)
        # The same pool, after everything: fresh transfers must go through.
        after = [_draw(rng, plan) for _ in range(plan.after)]
        for t in after:
            client.transfer(t)
        after_ok = sum(t.outcome == "applied" for t in after)
        pool_stats = {k: v for k, v in pool.get_stats().items()
                      if k in ("connections_num", "connections_lost", "connections_errors",
                               "requests_num", "requests_errors", "pool_size")}
    finally:
        pool.close()
    elapsed = time.monotonic() - started
    return _verify(ep, plan, transfers, submissions, after, client, metrics, crash,
                   sum_before, after_ok, pool_stats, elapsed)


def _verify(ep: Any, plan: ChaosPlan, transfers: list[Transfer], submissions: list[Transfer],
            after: list[Transfer], client: Bank, metrics: OCCMetrics, crash: dict[str, float],
            sum_before: Decimal, after_ok: int, pool_stats: dict[str, int],
            elapsed: float) -> ChaosReport:
    with psycopg.connect(ep.backend_dsn, autocommit=True) as conn:
        balances = {r[0]: r[1] for r in conn.execute("SELECT id, balance FROM accounts")}
        ledger = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT id, payer_id, payee_id, amount FROM transfer_ledger")}
    expected = {i: plan.initial_balance for i in range(1, plan.accounts + 1)}
    for payer, payee, amount in ledger.values():
        expected[payer] -= amount
        expected[payee] += amount
    mismatches = [f"account {i}: {balances.get(i)} != {v}" for i, v in expected.items()
                  if balances.get(i) != v]
    by_id: dict[uuid.UUID, list[Transfer]] = {}
    for t in [*submissions, *after]:
        by_id.setdefault(t.id, []).append(t)
    acknowledged = {t.id for t in [*submissions, *after]
                    if t.outcome in ("applied", "already-applied")}
    lost = [f"{tid} ({', '.join(s.outcome for s in by_id[tid])})"
            for tid in sorted(acknowledged - set(ledger), key=str)]
    rejected_ids = {tid for tid, subs in by_id.items()
                    if all(s.outcome == "rejected" for s in subs)}
    outcomes = Counter(t.outcome for t in submissions)
    unknown = [(t, u) for t in [*submissions, *after] for u in t.unknown]
    # A transfer submitted twice can be committed by its other submission (in another
    # thread) between the ledger check and the retry; only single submissions must agree.
    disagreements = [f"{t.id}: ledger said committed={said}, retry said {retry}"
                     for t, (said, retry) in unknown
                     if retry and (retry == "already-applied") != said
                     and len(by_id[t.id]) == 1]
    done_after = sum(1 for t in submissions if crash.get("back") and
                     t.finished_at > crash["back"])
    snapshot = metrics.snapshot()
    attempts = sum(t.attempts for t in [*submissions, *after])
    return ChaosReport(
        plan=plan, submitted=len(submissions), unique=len(transfers), outcomes=outcomes,
        transaction_attempts=attempts,
        occ_retries=snapshot.retries,
        injected=Counter(ep.server.faults.injected),
        connection_errors=client.connection_errors, unexpected_errors=client.unexpected,
        unknown_outcomes=len(unknown), unknown_committed=sum(1 for _, u in unknown if u[0]),
        unknown_disagreements=disagreements,
        restart_attempts=int(crash.get("calls", 0)), outage_seconds=crash.get("outage", 0.0),
        finished_after_restart=done_after, sum_before=sum_before,
        sum_after=sum(balances.values(), Decimal(0)), ledger_rows=len(ledger),
        balance_mismatches=mismatches, lost_acknowledged=lost,
        phantom_ledger_rows=len(set(ledger) - set(by_id)),
        rejected_in_ledger=len(rejected_ids & set(ledger)), after_ok=after_ok,
        after_failed=len(after) - after_ok, seconds=elapsed, pool_stats=pool_stats,
    )


@contextlib.contextmanager
def chaos_endpoint(occ: float = 0.1, disconnect: float = 0.01,
                   seed: int = 7) -> Any:
    from dsqlkit.local import LocalDSQL

    with LocalDSQL(ephemeral=True, port=0, inject={"occ": occ, "disconnect": disconnect},
                   seed=seed) as ep:
        yield ep
