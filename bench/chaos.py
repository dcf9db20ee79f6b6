"""Chaos on the DAT401 bank (issue 8, full run): the chapter 5 transfer workload under
injected OC000 conflicts, dropped connections and a SIGKILLed backend, with an idempotent
ledger; then the invariants.

    python bench/chaos.py                          # 10,000 transfers
    python bench/chaos.py --transfers 3000 --threads 8

Transfers run through a dsqlkit psycopg pool with ``dsqlkit.occ.run_transaction``
(``OCCRetryConfig.high_contention()``) around ``bank.transfer`` from examples/dat401, plus a
ledger row with a client-chosen UUID in the same transaction. The endpoint injects OC000 at
10 % of COMMITs and drops 1 % of connections mid-transaction; halfway through, the backend
PostgreSQL is SIGKILLed and restarted. A share of the transfers is submitted twice.

Checks: the sum of balances is unchanged; balances equal the initial ones plus every ledger
row's effect; every transfer the client saw succeed is in the ledger (exactly once: it is the
primary key); unknown COMMIT outcomes were resolved and the ledger agreed with the retry; the
same pool serves transfers afterwards. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
from reliability_chaos import ChaosPlan, ChaosReport, chaos_endpoint, run_chaos


def failures(report: ChaosReport) -> list[str]:
    out = []
    if report.sum_after != report.sum_before:
        out.append("the sum of balances changed")
    if report.balance_mismatches:
        out.append("balances do not match the ledger")
    if report.phantom_ledger_rows or report.rejected_in_ledger:
        out.append("the ledger holds transfers that were never made")
    if report.lost_acknowledged:
        out.append("acknowledged transfers are missing")
    if report.outcomes["gave-up"] or report.outcomes["pending"]:
        out.append("transfers gave up")
    if report.unknown_disagreements:
        out.append("the ledger and a retried transfer disagreed")
    if report.unexpected_errors:
        out.append("unexpected errors")
    if report.after_failed:
        out.append("the pool did not recover")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfers", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--occ", type=float, default=0.10, help="share of COMMITs failed (OC000)")
    ap.add_argument("--disconnect", type=float, default=0.01,
                    help="share of transaction statements whose connection is dropped")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="share of transfers done when the backend is SIGKILLed")
    ap.add_argument("--duplicates", type=float, default=0.05)
    ap.add_argument("--after", type=int, default=500,
                    help="transfers on the same pool after the chaos")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"  ... {done:,} of {total:,}", flush=True)

    plan = ChaosPlan(transfers=args.transfers, threads=args.threads, accounts=args.accounts,
                     kill_at=args.kill_at, duplicates=args.duplicates, after=args.after,
                     seed=args.seed)
    print(f"== chaos: {args.transfers:,} transfers, {args.threads} threads, {args.accounts} "
          f"accounts; inject occ={args.occ}, disconnect={args.disconnect}; backend SIGKILL "
          f"at {args.kill_at:.0%}", flush=True)
    with chaos_endpoint(occ=args.occ, disconnect=args.disconnect, seed=args.seed) as ep:
        report = run_chaos(ep, plan, progress=progress)
    for line in report.lines():
        print("  " + line)
    broken = failures(report)
    for b in broken:
        print(f"  FAILED: {b}")
    print(f"== {'PASS' if not broken else 'FAIL'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
