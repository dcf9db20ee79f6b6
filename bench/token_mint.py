"""Token for each new connection: dsqlkit vs the official Python connector.

The official connector (aurora-dsql-python-connector) builds a boto3 Session and a ``dsql``
client for every token, i.e. for every new connection. dsqlkit's pools hand each new
connection the provider's cached token (re-minted in the background at 80 % of its life);
a one-off ``connect(url)`` parses the string and takes the token of a process-wide shared
provider; a fresh mint (once per 80 % of the lifetime) reuses the day's signing key. Both
sign with the same fake credentials from the environment, with a session token as long as
the ones Lambda sets (~1 KB).

    python bench/token_mint.py            # target: dsqlkit median <= 50 µs per connection
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))
from _endpoint import BASELINE_HINT, BASELINE_PYTHON, baseline_available, child_env, fmt_us

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
REGION = "us-east-1"
CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEBENCH0001",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": ("IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/="
                          * 17)[:1020],
}
POOL = "pool: new connection (cached token)"
ONE_OFF = "one-off connect(url): parse + shared token"
MINT = "fresh mint, every 0.8 x lifetime (cached key)"
OFFICIAL = f"""
import json, time
from dsql_core.token_manager import TokenManager
params = {{"host": {HOST!r}, "region": {REGION!r}, "user": "admin", "token_duration_secs": 900}}
TokenManager.get_token(params)  # first call: imports and loads botocore data
samples = []
for _ in range({{n}}):
    t0 = time.perf_counter()
    TokenManager.get_token(params)
    samples.append(time.perf_counter() - t0)
print(json.dumps(samples))
"""


def per_call(fn: Callable[[], object], calls: int, batch: int) -> list[float]:
    """Seconds per call, one sample per batch of ``batch`` calls."""
    samples = []
    for _ in range(calls // batch):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
    return samples


def ours() -> dict[str, list[float]]:
    os.environ.update(CREDS)
    from dsqlkit.auth.tokens import TokenProvider
    from dsqlkit.config import DsqlConfig

    provider = TokenProvider(HOST, REGION, expires_in=900)
    provider.token()
    url = f"postgres://admin@{HOST}/postgres"

    def one_off() -> str:
        # What dsqlkit.psycopg.connect(url) does before the driver connects.
        return TokenProvider.shared(DsqlConfig.from_connection_string(url)).token()

    return {
        POOL: per_call(provider.token, 200_000, 1000),
        ONE_OFF: per_call(one_off, 20_000, 100),
        MINT: per_call(provider.refresh, 20_000, 100),
    }


def official(n: int) -> list[float] | None:
    if not baseline_available():
        return None
    out = subprocess.run([BASELINE_PYTHON, "-c", OFFICIAL.replace("{n}", str(n))],
                         env=child_env(CREDS), capture_output=True, text=True, check=True)
    samples: list[float] = json.loads(out.stdout)
    return samples


def main() -> int:
    results = ours()
    baseline = official(40)
    print("Token for each new connection (median per connection; p99 in parentheses)\n")
    for name, samples in results.items():
        med = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        print(f"  dsqlkit  {name:46s} {fmt_us(med)}  ({fmt_us(p99).strip()})")
    if baseline is None:
        print(f"\n  {BASELINE_HINT}")
        return 0
    off = statistics.median(baseline)
    print(f"  official {'boto3 Session + client per token':46s} {fmt_us(off)}  "
          f"({fmt_us(statistics.quantiles(baseline, n=100)[98]).strip()})\n")
    for name, samples in results.items():
        print(f"  official / dsqlkit [{name}]: {off / statistics.median(samples):,.0f}x")
    per_connection = max(statistics.median(results[POOL]), statistics.median(results[ONE_OFF]))
    print(f"\n  target: token for each new connection <= 50 µs: {fmt_us(per_connection).strip()} "
          f"-> {'met' if per_connection <= 50e-6 else 'NOT met'} "
          f"(a fresh mint: {fmt_us(statistics.median(results[MINT])).strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
