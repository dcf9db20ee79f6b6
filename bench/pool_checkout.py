"""Pool checkout + ``SELECT 1`` + return: dsqlkit's psycopg pool vs a bare psycopg_pool.

Both pools talk to the same ``dsqlkit local`` endpoint (in its own process) with the same
TLS settings (verify-full, direct TLS where libpq has it) and one connection each, so the
difference is what dsqlkit adds per checkout: its liveness and lifetime check (no round
trip). Rounds alternate between the pools to spread machine noise evenly.

    python bench/pool_checkout.py         # target: dsqlkit / bare <= 1.05
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _endpoint import fmt_us, local_endpoint


def per_op(pool: Any, ops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(ops):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    return (time.perf_counter() - t0) / ops


def main(rounds: int = 12, ops: int = 1500) -> int:
    from psycopg import pq
    from psycopg_pool import ConnectionPool

    from dsqlkit import psycopg as dp
    from dsqlkit.auth.sigv4 import Credentials
    from dsqlkit.config import DsqlConfig

    with local_endpoint() as ep:
        env = ep["env"]
        creds = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        ours = dp.create_pool(ep["url"], credentials=creds, min_size=1, max_size=1,
                              kwargs={"autocommit": True})
        # The bare pool gets the very parameters dsqlkit would use, with a token as password.
        config = DsqlConfig.from_connection_string(ep["url"], credentials=creds)
        params = config.libpq_params(ours.token_provider.token(), libpq_version=pq.version())
        bare: ConnectionPool[Any] = ConnectionPool(
            "", kwargs={**params, "autocommit": True}, min_size=1, max_size=1, open=True
        )
        bare.wait()
        try:
            for pool in (ours, bare):
                per_op(pool, 300)  # warm up
            samples: dict[str, list[float]] = {"dsqlkit": [], "bare": []}
            for i in range(rounds):
                order = [("dsqlkit", ours), ("bare", bare)]
                for name, pool in order if i % 2 == 0 else reversed(order):
                    samples[name].append(per_op(pool, ops))
        finally:
            ours.close()
            bare.close()
    med = {name: statistics.median(s) for name, s in samples.items()}
    ratio = med["dsqlkit"] / med["bare"]
    print(f"Pool checkout + SELECT 1 + return, one connection, {rounds} x {ops} ops "
          f"(median of round means)\n")
    print(f"  dsqlkit.psycopg.create_pool     {fmt_us(med['dsqlkit'])} per op")
    print(f"  bare psycopg_pool.ConnectionPool {fmt_us(med['bare'])} per op")
    print(f"\n  dsqlkit / bare: {ratio:.3f}x -> target <= 1.05x "
          f"{'met' if ratio <= 1.05 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
