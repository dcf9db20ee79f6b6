"""The hot-rows bench, A/B: this checkout's endpoint against another revision's, in one run.

A change to the endpoint's OCC moves the hot-rows numbers by a few per cent, less than this
machine drifts from one run to the next. So both endpoints run side by side, each in its own
process, and the workloads alternate between them round by round (the order flips every
round): drift then hits both alike. The baseline is another revision's ``src`` directory (a
``git worktree``); it runs on this environment's dependencies.

    git worktree add /tmp/base 3a1e0e5
    python bench/occ_hot_rows_ab.py --baseline-src /tmp/base/src --rounds 12
    python bench/occ_hot_rows_ab.py --baseline-src src --rounds 12    # A/A: the noise floor

Prints, for each side, the medians of p50, p90 and throughput on 10 and on 1,000 accounts,
and the medians of the per-round ratios hot/cold that bench/occ_hot_rows.py reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _endpoint import endpoint
from occ_hot_rows import Run, run_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-src", required=True,
                    help="the baseline revision's src directory (it holds dsqlkit/)")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    baseline = Path(args.baseline_src).resolve()
    if not (baseline / "dsqlkit" / "local").is_dir():
        ap.error(f"{baseline} holds no dsqlkit package")
    runs: dict[tuple[str, int], list[Run]] = {}
    with contextlib.ExitStack() as stack:
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(baseline)
        try:
            base = stack.enter_context(endpoint())
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved
        this = stack.enter_context(endpoint())
        sides = [("baseline", base), ("this", this)]
        for _, ep in sides:
            run_workload(ep, 10, 0)  # warm up
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for accounts in (10, 1000):
                for name, ep in order:
                    runs.setdefault((name, accounts), []).append(
                        run_workload(ep, accounts, r + 1))
    for name, _ in sides:
        for accounts in (10, 1000):
            rs = runs[(name, accounts)]
            print(f"{name:>8} {accounts:5} accounts: "
                  f"p50 {statistics.median(r.pct(0.5) for r in rs):6.2f} ms  "
                  f"p90 {statistics.median(r.pct(0.9) for r in rs):6.2f} ms  "
                  f"{statistics.median(r.throughput for r in rs):6.0f}/s")
    for name, _ in sides:
        pairs = list(zip(runs[(name, 10)], runs[(name, 1000)], strict=True))
        p90 = statistics.median(h.pct(0.9) / c.pct(0.9) for h, c in pairs)
        tput = statistics.median(h.throughput / c.throughput for h, c in pairs)
        print(f"{name:>8}: p90 ratio {p90:.2f}, throughput ratio {tput:.2f}")


if __name__ == "__main__":
    main()
