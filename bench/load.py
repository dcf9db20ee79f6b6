"""Connection load on ``dsqlkit local`` (issue 8, full run): 1,000 connections held at once,
then a storm of new connections above the rate quota.

    python bench/load.py                        # DSQL's quotas: 1,000 connections, 100/s
    python bench/load.py --held 500 --storm 1500

The endpoint runs in its own process with ``max_connections`` = ``--held`` and DSQL's rate
quota (``--rate`` 100/s, ``--burst`` 1,000). Phase 1 opens ``--held`` connections from a
thread pool, checks that each answers, tries one more (it must get 53300), and closes them.
Phase 2 opens ``--storm`` connections as fast as ``--threads`` threads can: past the burst
they must get 53400 and nothing else, while a pool opened before keeps running transfers
without an error and a pool opened mid-storm fills by itself once the storm is over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
from reliability_endpoint import child_endpoint
from reliability_load import connection_storm, hold_connections


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=64)
    args = ap.parse_args()
    with child_endpoint(max_connections=args.held, connection_rate=args.rate,
                        connection_burst=args.burst) as ep:
        rss_idle = ep.rss()
        print(f"== {args.held:,} connections held (endpoint max_connections {args.held:,}, "
              f"rate {args.rate:g}/s, burst {args.burst:,})", flush=True)
        held = hold_connections(ep, args.held, threads=args.threads)
        for line in held.lines():
            print("  " + line)
        print(f"  endpoint RSS {rss_idle / 2**20:.0f} MiB idle", flush=True)
        print(f"== storm: {args.storm:,} new connections from {args.threads} threads",
              flush=True)
        storm = connection_storm(ep, args.storm, threads=args.threads)
        for line in storm.lines():
            print("  " + line)
        alive = ep.alive()
    ok = (held.opened == args.held and not held.failures and held.answered == args.held
          and held.over_the_limit.startswith("53300")
          and set(storm.outcomes) <= {"connected", "53400 rate exceeded"}
          and not storm.background_errors and storm.recovering_pool_ready_after is not None
          and storm.fresh_connection_after == "accepted" and alive)
    print(f"== {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
