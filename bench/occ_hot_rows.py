"""Hot rows on dsqlkit local: do conflicts cost waits, or only retries, as on DSQL?

DSQL takes no locks: two transfers that touch the same account both run at full speed and
the second to COMMIT fails with OC000. So the DAT401 transfer workload on 10 accounts should
run about as fast as on 1,000 accounts, with many more conflicts. PostgreSQL under the endpoint
locks rows; the endpoint's OCC (dsqlkit.local.occ) must make the difference small.

Ten threads run the chapter 4 transfer (BEGIN; debit RETURNING the balance; credit; COMMIT;
no retry) through their own connections, 1,000 transfers per run, on 10 accounts and on 1,000
accounts, alternating in interleaved rounds against one endpoint in its own process. For each
round it prints p50/p90 latency, throughput and where conflicts were reported (at COMMIT, as
DSQL does, or at a statement), then the median of the per-round ratios hot/cold with their
range, and the latency of the committed and of the lost transfers apart. Targets (issue 12):
p90 ratio <= 1.5, throughput ratio >= 0.7, conflicts reported.
Then the hot workload runs once more with retry (OCCRetryConfig.high_contention()): 0 failures.

    python bench/occ_hot_rows.py              # 5 rounds
    python bench/occ_hot_rows.py --rounds 9   # steadier medians
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _endpoint import Endpoint, endpoint

from dsqlkit.bench.workload import (
    INITIAL_BALANCE,
    Transfer,
    TransferGenerator,
    TransferRejected,
    transfer_transaction,
)
from dsqlkit.occ import OCCRetryConfig, OCCRetryExhausted, retry_on_occ

THREADS = 10
TRANSFERS = 1000


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    committed: int = 0
    at_commit: int = 0  # OC000 (or OC001) raised by COMMIT, as DSQL does
    at_statement: int = 0  # raised by a statement before COMMIT
    rejected: int = 0  # the transfer's own checks (insufficient balance)
    failed: int = 0  # anything else, or retries exhausted
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    # Latencies by outcome (without retry): "committed", "lost" (an OCC conflict), "other".
    by_outcome: dict[str, list[float]] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed


def reset(ep: Endpoint, accounts: int) -> None:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, "
                     "balance numeric)")
        conn.execute("DELETE FROM accounts")
        for low in range(1, accounts + 1, 1000):
            conn.execute("INSERT INTO accounts SELECT g, %s FROM "
                         "generate_series(%s::int, %s::int) g",
                         [INITIAL_BALANCE, low, min(low + 999, accounts)])


def once(conn: psycopg.Connection[Any], t: Transfer, run: Run, lock: threading.Lock) -> str:
    """One attempt of chapter 4's transfer, as dsqlkit's runners open it (psycopg's
    transaction(): simple-protocol BEGIN and COMMIT); records where a conflict was
    reported."""
    at_statement = False
    try:
        with conn.transaction():
            try:
                transfer_transaction(conn, t)
            except psycopg.errors.SerializationFailure:
                at_statement = True
                raise
    except psycopg.errors.SerializationFailure:
        with lock:
            if at_statement:
                run.at_statement += 1
            else:
                run.at_commit += 1
        raise
    except TransferRejected:
        with lock:
            run.rejected += 1
        return "other"
    with lock:
        run.committed += 1
    return "committed"


def run_workload(ep: Endpoint, accounts: int, seed: int,
                 retry: OCCRetryConfig | None = None) -> Run:
    reset(ep, accounts)
    rng = random.Random(seed)
    draw = TransferGenerator(accounts, rng)
    transfers = [draw() for _ in range(TRANSFERS)]
    run = Run()
    lock = threading.Lock()
    conns = [psycopg.connect(ep.dsn(), autocommit=True) for _ in range(THREADS)]

    def worker(conn: psycopg.Connection[Any]) -> None:
        while True:
            with lock:
                if not transfers:
                    return
                t = transfers.pop()
            started = time.perf_counter()
            outcome = "other"
            try:
                if retry is None:
                    outcome = once(conn, t, run, lock)
                else:
                    retry_on_occ(retry, partial(once, conn, t, run, lock))
            except psycopg.errors.SerializationFailure:
                outcome = "lost"  # counted in once()
            except OCCRetryExhausted as exc:
                with lock:
                    run.failed += 1
                    run.errors.append(str(exc))
            except psycopg.Error as exc:
                with lock:
                    run.failed += 1
                    run.errors.append(f"{exc.sqlstate}: {exc}")
            elapsed = time.perf_counter() - started
            with lock:
                run.latencies.append(elapsed)
                run.by_outcome.setdefault(outcome, []).append(elapsed)

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    run.elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        total = conn.execute("SELECT sum(balance), count(*) FROM accounts").fetchone()
    assert total == (INITIAL_BALANCE * accounts, accounts), f"money not conserved: {total}"
    return run


def describe(name: str, run: Run) -> str:
    return (f"{name:>5}: p50 {run.pct(0.5):6.2f} ms  p90 {run.pct(0.9):6.2f} ms  "
            f"{run.throughput:7.0f}/s  committed {run.committed:4d}  OC000 at COMMIT "
            f"{run.at_commit:4d}, at a statement {run.at_statement:3d}  rejected "
            f"{run.rejected:3d}  other {run.failed}")


def by_outcome(name: str, runs: list[Run]) -> str:
    """Mean and p90 latency of the committed and of the lost transfers, over all runs."""
    parts = []
    for outcome in ("committed", "lost"):
        values = sorted(v for r in runs for v in r.by_outcome.get(outcome, []))
        if values:
            share = len(values) / sum(len(r.latencies) for r in runs)
            parts.append(f"{outcome} {share:4.0%}: mean {statistics.mean(values) * 1000:5.2f} "
                         f"p90 {values[int(0.9 * len(values))] * 1000:5.2f} ms")
    return f"{name:>5}: " + ";  ".join(parts)


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (rounds {min(values):.2f}..{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    p90_ratios: list[float] = []
    tput_ratios: list[float] = []
    hot_runs: list[Run] = []
    cold_runs: list[Run] = []
    with endpoint() as ep:
        run_workload(ep, 1000, 0)  # warm up: caches, connections, JIT-free paths
        for r in range(args.rounds):
            order = (10, 1000) if r % 2 == 0 else (1000, 10)
            runs = {n: run_workload(ep, n, args.seed + r) for n in order}
            hot, cold = runs[10], runs[1000]
            hot_runs.append(hot)
            cold_runs.append(cold)
            p90_ratios.append(hot.pct(0.9) / cold.pct(0.9))
            tput_ratios.append(hot.throughput / cold.throughput)
            print(f"round {r + 1}")
            print("  " + describe("hot", hot))
            print("  " + describe("cold", cold))
        retried = run_workload(ep, 10, args.seed, retry=OCCRetryConfig.high_contention())
    print()
    print(f"p90 latency, 10 accounts / 1,000 accounts: {median_range(p90_ratios)}  "
          "(target <= 1.5)")
    print(f"throughput,  10 accounts / 1,000 accounts: {median_range(tput_ratios)}  "
          "(target >= 0.7)")
    print("by outcome (all rounds; a lost transfer is one that failed with OC000):")
    print("  " + by_outcome("hot", hot_runs))
    print("  " + by_outcome("cold", cold_runs))
    at_commit = sum(r.at_commit for r in hot_runs)
    at_statement = sum(r.at_statement for r in hot_runs)
    print(f"conflicts on 10 accounts: {at_commit} reported at COMMIT, {at_statement} at a "
          f"statement, over {len(hot_runs) * TRANSFERS} transfers")
    print(f"with retry (high_contention): {retried.committed} committed, {retried.failed} "
          f"failed, {retried.rejected} rejected by the transfer's checks, "
          f"{retried.at_commit + retried.at_statement} conflicts retried; "
          f"p50 {retried.pct(0.5):.2f} ms, p90 {retried.pct(0.9):.2f} ms (with backoff), "
          f"{retried.throughput:.0f}/s")
    if retried.errors:
        print("  e.g.", retried.errors[0])


if __name__ == "__main__":
    main()
