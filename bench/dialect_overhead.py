"""What DSQL's rules cost in ``dsqlkit local``: all rules on vs a plain pass-through.

    python bench/dialect_overhead.py [--quick]

Target (issue 7): simple-query latency and a short read-write transaction with every DSQL
rule on (dialect analysis, transaction rules, commit-time OCC emulation, OC001 versions)
within 1.2x of the same endpoint relaying statements untouched (``--passthrough``). Both
endpoints run in their own processes over one backend PostgreSQL, measured in alternating
rounds. Then the transfer workload of the demo runs through an in-process endpoint to report
the hit rate of the statement-analysis cache.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _endpoint import endpoint, select1_roundtrip_us

from dsqlkit.local import LocalDSQL, dialect


def transaction_us(dsn: str, n: int) -> float:
    """BEGIN; SELECT; UPDATE; COMMIT on the session's own row (no conflicts)."""
    with psycopg.connect(dsn) as conn:
        row = random.randint(1, 1000)
        for _ in range(50):
            with conn.transaction():
                conn.execute("SELECT balance FROM bench_rules WHERE id = %s", [row])
        t = time.perf_counter()
        for _ in range(n):
            with conn.transaction():
                conn.execute("SELECT balance FROM bench_rules WHERE id = %s", [row]).fetchone()
                conn.execute("UPDATE bench_rules SET balance = balance + 1 WHERE id = %s", [row])
        return (time.perf_counter() - t) / n * 1e6


def hit_rate(transfers: int) -> tuple[float, int, int]:
    """Run demo-style transfers in-process and read analyze()'s cache counters."""
    with LocalDSQL(ephemeral=True, port=0) as ep:
        with psycopg.connect(ep.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric)")
            conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g")
        before = dialect.cache_stats()
        with psycopg.connect(ep.dsn()) as conn:
            rng = random.Random(7)
            for _ in range(transfers):
                payer, payee = rng.sample(range(1, 1001), 2)
                amount = Decimal(rng.randint(1, 1000)) / 100
                with conn.transaction():
                    conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s "
                                 "RETURNING balance", [amount, payer]).fetchone()
                    conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                                 [amount, payee])
        after = dialect.cache_stats()
    hits, misses = after.hits - before.hits, after.misses - before.misses
    return hits / max(hits + misses, 1), hits, misses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 1000 if args.quick else 4000
    rounds = 3 if args.quick else 5
    with endpoint() as rules_on:
        with psycopg.connect(rules_on.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_rules (id int PRIMARY KEY, balance numeric)")
            conn.execute("INSERT INTO bench_rules SELECT g, 0 FROM generate_series(1, 1000) g")
        with endpoint("--passthrough", "--backend-url", rules_on.backend_url) as plain:
            q_on, q_off, t_on, t_off = [], [], [], []
            for _ in range(rounds):
                q_on.append(select1_roundtrip_us(rules_on.dsn(), n))
                q_off.append(select1_roundtrip_us(plain.dsn(), n))
                t_on.append(transaction_us(rules_on.dsn(), n // 4))
                t_off.append(transaction_us(plain.dsn(), n // 4))
    rate, hits, misses = hit_rate(300 if args.quick else 2000)
    qo, qf, to, tf = (statistics.median(x) for x in (q_on, q_off, t_on, t_off))
    print(f"{'':42} {'rules on':>10} {'pass-through':>13} {'ratio':>7}  target")
    print(f"{'SELECT 1 round trip':42} {qo:>8.0f}µs {qf:>11.0f}µs {qo / qf:>6.2f}x  ≤ 1.2x")
    print(f"{'BEGIN; SELECT; UPDATE; COMMIT':42} {to:>8.0f}µs {tf:>11.0f}µs {to / tf:>6.2f}x"
          "  ≤ 1.2x")
    print(f"statement-analysis cache on the transfer workload: {rate:.2%} hits "
          f"({hits} hits, {misses} misses)")


if __name__ == "__main__":
    main()
