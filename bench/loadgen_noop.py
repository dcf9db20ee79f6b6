"""Is the load generator the bottleneck? The demo's transfer rate vs the same generator on noop.

    python bench/loadgen_noop.py            # the demo's workload, then noop, 3 rounds each
    python bench/loadgen_noop.py --quick    # 1 round, smaller runs

Target (issue 6): against ``--target noop`` (a transfer that returns at once) the load
generator drives at least 5x the transfer rate that ``dsqlkit demo`` reaches through the
local endpoint. Both sides run exactly as the demo does: one process, 10 worker threads,
10 accounts, seeded transfers, every transfer drawn, timed and recorded into the HDR
histogram and timeline. The demo side is the demo's own code (``dsqlkit.demo.run_workloads``)
against the same in-process ``LocalDSQL`` the demo starts, so the endpoint shares this
interpreter, as it does for a user.

Printed: each round's rates, the medians, the generator's cost per transfer, and the ratio
(noop rate / the faster of the demo's two runs). Exit status 1 if the ratio is below 5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from dsqlkit.bench import LoadPlan, TargetSpec, run_bench
from dsqlkit.demo import run_workloads
from dsqlkit.local import LocalDSQL

TARGET_RATIO = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="demo transfers per run")
    parser.add_argument("--noop-iters", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.noop_iters = 1, 100_000

    print(f"load generator: 1 process, {args.threads} threads, {args.accounts} accounts "
          f"(the demo's settings); {args.rounds} round(s)\n")
    ch04: list[float] = []
    ch05: list[float] = []
    t = time.perf_counter()
    with LocalDSQL(ephemeral=True, port=0) as ep:
        print(f"local endpoint up in {time.perf_counter() - t:.1f} s")
        for n in range(args.rounds):
            runs = run_workloads(ep, iters=args.iters, threads=args.threads,
                                 accounts=args.accounts, seed=401)
            a, b = (r.summary for r in runs)
            ch04.append(a.throughput)
            ch05.append(b.throughput)
            print(f"  round {n + 1}: demo ch04 (no retry) {a.throughput:8,.0f}/s   "
                  f"ch05 (retry) {b.throughput:8,.0f}/s   "
                  f"[{a.conflict_failures} / {b.conflict_failures} conflict failures]")

    noop: list[float] = []
    noop_p2: list[float] = []
    for n in range(args.rounds):
        plan = LoadPlan(threads=args.threads, accounts=args.accounts,
                        iterations=args.noop_iters, seed=401)
        r = run_bench(TargetSpec("noop"), plan)
        noop.append(r.summary.throughput)
        plan2 = LoadPlan(threads=args.threads, accounts=args.accounts,
                         iterations=args.noop_iters * 2, processes=2, seed=401)
        r2 = run_bench(TargetSpec("noop"), plan2)
        noop_p2.append(r2.summary.throughput)
        print(f"  round {n + 1}: noop, 1 process {noop[-1]:10,.0f}/s   "
              f"2 processes {noop_p2[-1]:10,.0f}/s")

    demo_rate = max(statistics.median(ch04), statistics.median(ch05))
    noop_rate = statistics.median(noop)
    ratio = noop_rate / demo_rate
    print()
    print(f"demo through the endpoint (median): ch04 {statistics.median(ch04):,.0f}/s, "
          f"ch05 {statistics.median(ch05):,.0f}/s")
    print(f"noop, same generator settings (median): {noop_rate:,.0f}/s "
          f"({1e6 / noop_rate:.1f} µs of generator time per transfer); "
          f"2 processes: {statistics.median(noop_p2):,.0f}/s")
    verdict = "OK" if ratio >= TARGET_RATIO else "FAIL"
    print(f"ratio noop / demo: {ratio:,.0f}x (target >= {TARGET_RATIO:g}x) {verdict}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
