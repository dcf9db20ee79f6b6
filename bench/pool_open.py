"""Opening a 10-connection pool: dsqlkit vs the official Python connector.

Both open a psycopg_pool pool of 10 connections (``open(wait=True)``) against the same
``dsqlkit local`` endpoint (its own process), in fresh processes, with the same fake
credentials in the environment and verify-full TLS. Only the open is timed (imports are
not). The official connector mints each connection's token with a new boto3 Session and
client; dsqlkit mints once and shares the token.

    python bench/pool_open.py             # target: official / dsqlkit >= 5
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _endpoint import BASELINE_HINT, BASELINE_PYTHON, baseline_available, child_env, local_endpoint

SIZE = 10
OURS = """
import json, sys, time
from dsqlkit import psycopg as dp
url = sys.argv[1]
t0 = time.perf_counter()
pool = dp.create_pool(url, min_size={size}, max_size={size})   # opens and waits
t1 = time.perf_counter()
assert pool.get_stats()["pool_available"] == {size}
pool.close()
print(json.dumps(t1 - t0))
"""
OFFICIAL = """
import json, sys, time
import aurora_dsql_psycopg
url = sys.argv[1]
pool = aurora_dsql_psycopg.create_pool(url, min_size={size}, max_size={size})
t0 = time.perf_counter()
pool.open(wait=True)
t1 = time.perf_counter()
assert pool.get_stats()["pool_available"] == {size}
pool.close()
print(json.dumps(t1 - t0))
"""


def run(python: str, code: str, url: str, env: dict[str, str]) -> float:
    out = subprocess.run([python, "-c", code.replace("{size}", str(SIZE)), url],
                         env=child_env(env), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    value: float = json.loads(out.stdout)
    return value


def main(rounds: int = 7) -> int:
    have_baseline = baseline_available()
    with local_endpoint() as ep:
        creds = {k: v for k, v in ep["env"].items() if k.startswith("AWS_")}
        ours_url = ep["url"]
        # The official connector keeps localhost only in URL form, and needs TLS asked for.
        official_url = (f"postgresql://localhost:{ep['port']}/postgres?user=admin"
                        f"&region={ep['region']}&sslmode=verify-full"
                        f"&sslrootcert={ep['ca_path']}")
        samples: dict[str, list[float]] = {"dsqlkit": [], "official": []}
        for _ in range(rounds):
            samples["dsqlkit"].append(run(sys.executable, OURS, ours_url, creds))
            if have_baseline:
                samples["official"].append(run(BASELINE_PYTHON, OFFICIAL, official_url, creds))
    print(f"Opening a {SIZE}-connection pool (median of {rounds} fresh processes)\n")
    ours = statistics.median(samples["dsqlkit"]) * 1000
    print(f"  dsqlkit.psycopg.create_pool          {ours:8.1f} ms")
    if not have_baseline:
        print(f"\n  {BASELINE_HINT}")
        return 0
    official = statistics.median(samples["official"]) * 1000
    print(f"  aurora_dsql_psycopg.create_pool      {official:8.1f} ms")
    ratio = official / ours
    print(f"\n  official / dsqlkit: {ratio:.1f}x -> target >= 5x "
          f"{'met' if ratio >= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
