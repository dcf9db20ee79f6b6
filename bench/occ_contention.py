"""Hot-row contention: how OCC retry strategies trade waiting against wasted work.

Ten workers move money among ten accounts (1,000 transfers, each a two-row transaction), so
almost every transaction collides with another. The same seeded list of transfers runs once
per strategy, in the same process and against the same endpoint:

* ``dsqlkit high_contention`` - ``OCCRetryConfig.high_contention()`` through ``run_transaction``;
* ``immediate, unbounded`` - the DAT401 chapter 5 loop: retry at once, forever. (Chapter 5 only
  retries conflicts raised by COMMIT, which is where DSQL raises them; a PostgreSQL backend
  raises them at the statement, so here any OCC error is retried, as on DSQL.)
* ``AWS Python connector`` - the official connector's defaults: 3 retries (4 attempts), 1 ms
  base, 100 ms cap, 25 % jitter;
* ``seed defaults`` - the Rust sqlx connector's documented defaults: 3 attempts, 100 ms base,
  5 s cap, 25 % jitter.

For each strategy it prints goodput (committed transfers per second of wall time), transfers
that failed, attempts per committed transfer, and p50/p99 latency of committed transfers (first
attempt to commit, retries and waits included), as medians over interleaved rounds, then the
preset's goodput against the best baseline, paired round by round. It checks after every run
that money was conserved (no lost update).

    python bench/occ_contention.py                 # starts dsqlkit local in a child process
    python bench/occ_contention.py --dsn "host=... user=... password=... sslmode=..."
    python bench/occ_contention.py --rounds 20     # more rounds, steadier medians

The two UPDATEs of a transfer touch the lower account id first. DSQL never waits on a lock, but
a PostgreSQL backend does, and opposite lock orders would turn conflicts into deadlocks that
stall for ``deadlock_timeout`` and fail with 40P01, which no strategy should retry; ordering
measures the retry policies instead of PostgreSQL's deadlock detector.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ import OCCMetrics, OCCRetryConfig, is_occ_error, run_transaction

INITIAL_BALANCE = Decimal("1000000.00")


@dataclass(frozen=True)
class Transfer:
    payer: int
    payee: int
    amount: Decimal


def make_transfers(count: int, accounts: int, seed: int) -> list[Transfer]:
    rng = random.Random(seed)
    transfers = []
    for _ in range(count):
        payer, payee = rng.sample(range(1, accounts + 1), 2)
        amount = Decimal(rng.randint(1, 1000)) / 100  # 0.01 .. 10.00, as DAT401's invoke-test
        transfers.append(Transfer(payer, payee, amount))
    return transfers


def transfer_body(t: Transfer) -> Callable[[psycopg.Connection[Any]], None]:
    first, second = sorted((t.payer, t.payee))
    delta = {t.payer: -t.amount, t.payee: t.amount}

    def body(conn: psycopg.Connection[Any]) -> None:
        for account in (first, second):
            row = conn.execute(
                "UPDATE accounts SET balance = balance + %s WHERE id = %s RETURNING balance",
                (delta[account], account),
            ).fetchone()
            if row is None:
                raise LookupError(f"account {account} not found")
            if account == t.payer and row[0] < 0:
                raise ValueError("Insufficient balance")

    return body


# -- strategies ------------------------------------------------------------------------------


@dataclass
class Outcome:
    committed: bool
    attempts: int
    latency: float


Runner = Callable[[psycopg.Connection[Any], Transfer], Outcome]


def config_runner(config: OCCRetryConfig) -> Runner:
    def run(conn: psycopg.Connection[Any], t: Transfer) -> Outcome:
        metrics = OCCMetrics()  # per call, to read this transfer's attempt count
        start = time.perf_counter()
        try:
            run_transaction(conn, transfer_body(t), config, metrics=metrics)
            committed = True
        except OCCRetryExhausted:
            committed = False
        snap = metrics.snapshot()
        attempts = next(iter(snap.attempts_histogram))
        return Outcome(committed, attempts, time.perf_counter() - start)

    return run


def immediate_unbounded(conn: psycopg.Connection[Any], t: Transfer) -> Outcome:
    body = transfer_body(t)
    start = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        try:
            with conn.transaction():
                body(conn)
        except psycopg.Error as exc:
            if is_occ_error(exc):
                continue
            raise
        return Outcome(True, attempts, time.perf_counter() - start)


PRESET = "dsqlkit high_contention"

STRATEGIES: dict[str, Runner] = {
    PRESET: config_runner(OCCRetryConfig.high_contention()),
    "immediate, unbounded (DAT401 ch05)": immediate_unbounded,
    "AWS Python connector defaults": config_runner(
        OCCRetryConfig(max_attempts=4, base_delay=0.001, max_delay=0.1, jitter_factor=0.25)
    ),
    "seed defaults (3, 100 ms, 5 s)": config_runner(OCCRetryConfig()),
}


# -- running ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    wall: float
    outcomes: list[Outcome] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def committed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.committed]

    @property
    def failures(self) -> int:
        return len(self.outcomes) - len(self.committed) + self.errors.total()

    @property
    def goodput(self) -> float:
        return len(self.committed) / self.wall

    @property
    def attempts_per_success(self) -> float:
        total = sum(o.attempts for o in self.outcomes)
        return total / len(self.committed) if self.committed else float("inf")

    def latency(self, q: float) -> float:
        ordered = sorted(o.latency for o in self.committed)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def reset_accounts(dsn: str, accounts: int) -> None:
    # A fresh table per run: on a PostgreSQL backend the previous run's thousands of dead row
    # versions would otherwise slow the next strategy down (and DSQL has no VACUUM to call).
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS accounts")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL)")
        with conn.transaction():
            for i in range(1, accounts + 1):
                conn.execute(
                    "INSERT INTO accounts (id, balance) VALUES (%s, %s)", (i, INITIAL_BALANCE)
                )


def total_balance(dsn: str) -> Decimal:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT sum(balance) FROM accounts").fetchone()
    assert row is not None
    return Decimal(row[0])


def run_strategy(
    name: str, runner: Runner, dsn: str, transfers: list[Transfer], workers: int, accounts: int
) -> Result:
    reset_accounts(dsn, accounts)
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(workers)]
    queue = iter(transfers)
    lock = threading.Lock()
    result = Result(name, 0.0)
    barrier = threading.Barrier(workers + 1)

    def worker(conn: psycopg.Connection[Any]) -> None:
        barrier.wait()
        while True:
            with lock:
                t = next(queue, None)
            if t is None:
                return
            try:
                outcome = runner(conn, t)
            except Exception as exc:  # a failed transfer, counted, not a crashed benchmark
                with lock:
                    result.errors[f"{type(exc).__name__}: {exc}"] += 1
                continue
            with lock:
                result.outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(c,)) for c in connections]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    result.wall = time.perf_counter() - start
    for c in connections:
        c.close()
    expected = INITIAL_BALANCE * accounts
    actual = total_balance(dsn)
    if actual != expected:
        raise SystemExit(f"{name}: money not conserved: {actual} != {expected}")
    return result


def _line(cells: tuple[str, ...]) -> str:
    widths = (36, 10, 7, 12, 8, 8)
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    note = f" (median of {rounds} rounds)" if rounds > 1 else ""
    print(f"\nhot-row contention{note}")
    print(_line(("strategy", "goodput/s", "failed", "attempts/ok", "p50 ms", "p99 ms")))
    # failed: transfers that did not commit, summed over all rounds; the rest are medians.
    for r in rows:
        print(
            _line(
                (
                    r["name"],
                    f"{r['goodput']:.1f}",
                    f"{r['failed']:g}",
                    f"{r['attempts']:.2f}",
                    f"{r['p50'] * 1000:.1f}",
                    f"{r['p99'] * 1000:.1f}",
                )
            )
        )


def summarize(name: str, results: list[Result]) -> dict[str, Any]:
    return {
        "name": name,
        "goodput": statistics.median(r.goodput for r in results),
        "failed": sum(r.failures for r in results),
        "attempts": statistics.median(r.attempts_per_success for r in results),
        "p50": statistics.median(r.latency(0.50) for r in results),
        "p99": statistics.median(r.latency(0.99) for r in results),
    }


# -- the endpoint ----------------------------------------------------------------------------


def _serve_local(pipe: Any) -> None:
    # In its own process so that the endpoint's event loop does not compete with the
    # benchmark's worker threads for one interpreter lock.
    from dsqlkit.local import LocalDSQL

    with LocalDSQL(ephemeral=True, port=0) as ep:
        pipe.send("ready")
        while pipe.recv() == "dsn":
            pipe.send(ep.dsn(user="admin"))


@contextmanager
def local_endpoint() -> Iterator[Callable[[], str]]:
    try:
        import dsqlkit.local  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"dsqlkit.local is not available ({exc}): pass --dsn") from exc
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_local, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(120) or parent.recv() != "ready":
        proc.terminate()
        raise SystemExit("dsqlkit local did not start within 120 s")

    def dsn() -> str:
        parent.send("dsn")
        return str(parent.recv())

    try:
        yield dsn
    finally:
        parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.terminate()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", help="libpq connection string (default: start dsqlkit local)")
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--transfers", type=int, default=1000)
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved repetitions; medians are reported (default 5: one ~1 s run varies "
        "by 15-20 %% on a shared two-core machine)",
    )
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument(
        "--only", action="append", default=None, help="run strategies whose name contains this"
    )
    args = p.parse_args(argv)

    strategies = {
        n: r for n, r in STRATEGIES.items() if not args.only or any(o in n for o in args.only)
    }
    transfers = make_transfers(args.transfers, args.accounts, args.seed)

    @contextmanager
    def given(dsn: str) -> Iterator[Callable[[], str]]:
        yield lambda: dsn

    source = given(args.dsn) if args.dsn else local_endpoint()
    results: dict[str, list[Result]] = {n: [] for n in strategies}
    order_rng = random.Random(args.seed)
    with source as dsn:
        for round_no in range(args.rounds):
            names = list(strategies)
            order_rng.shuffle(names)  # no strategy always runs first on a cold backend
            for name in names:
                r = run_strategy(
                    name, strategies[name], dsn(), transfers, args.workers, args.accounts
                )
                results[name].append(r)
                print(
                    f"round {round_no + 1}: {name}: {r.goodput:.1f}/s, "
                    f"{r.failures} failed, {r.attempts_per_success:.2f} attempts/ok",
                    file=sys.stderr,
                )
    print(
        f"{args.transfers} transfers, {args.workers} workers, {args.accounts} accounts"
        + (", --dsn" if args.dsn else ", dsqlkit local")
    )
    rows = [summarize(n, results[n]) for n in strategies]
    print_table(rows, args.rounds)
    print_verdict(rows, results)
    for name in strategies:
        errors: Counter[str] = Counter()
        for r in results[name]:
            errors.update(r.errors)
        for text, count in errors.most_common(3):
            print(f"  {name}: {count} transfer(s) failed with a non-OCC error: {text[:120]}")


def print_verdict(rows: list[dict[str, Any]], results: dict[str, list[Result]]) -> None:
    """Preset against the best baseline, paired round by round to cancel machine drift."""
    if PRESET not in results or len(rows) < 2:
        return
    baselines = [r for r in rows if r["name"] != PRESET]
    best = max(baselines, key=lambda r: r["goodput"])
    ratios = [
        ours.goodput / theirs.goodput
        for ours, theirs in zip(results[PRESET], results[best["name"]], strict=True)
    ]
    preset = next(r for r in rows if r["name"] == PRESET)
    wins = sum(ratio >= 1.0 for ratio in ratios)
    print(
        f"\n{PRESET} vs best baseline ({best['name']}): goodput ratio "
        f"{statistics.median(ratios):.3f} (median per round), ahead in {wins}/{len(ratios)} "
        f"rounds; failed transfers {preset['failed']:g} vs {best['failed']:g}"
    )


if __name__ == "__main__":
    main()
