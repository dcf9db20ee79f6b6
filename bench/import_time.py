"""Cold start: a fresh process that imports the library and mints its first token.

Each variant runs as its own subprocess, many times, alternating, with bytecode caches
warm (as an installed package has them) and fake credentials in the environment (as in
Lambda). Reported: the median wall time of the whole process, and of a bare interpreter
for reference.

    python bench/import_time.py           # target: dsqlkit import + first token <= 40 ms
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _endpoint import BASELINE_HINT, BASELINE_PYTHON, baseline_available, child_env

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEBENCH0001",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": ("IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/="
                          * 17)[:1020],
    "AWS_REGION": "us-east-1",
}
OURS = (
    "import dsqlkit\n"
    "from dsqlkit.auth.tokens import generate_token\n"
    f"generate_token('postgres://admin@{HOST}/postgres')\n"
)
OURS_DRIVER = (
    "import dsqlkit.psycopg\n"
    "from dsqlkit.auth.tokens import TokenProvider\n"
    "from dsqlkit.config import DsqlConfig\n"
    f"TokenProvider.shared(DsqlConfig.from_connection_string('{HOST}')).token()\n"
)
_PARAMS = (f"{{'host': '{HOST}', 'region': 'us-east-1', 'user': 'admin', "
           "'token_duration_secs': 900}")
OFFICIAL = (
    "from dsql_core.token_manager import TokenManager\n"
    f"TokenManager.get_token({_PARAMS})\n"
)
OFFICIAL_DRIVER = (
    "import aurora_dsql_psycopg\n"
    "from dsql_core.token_manager import TokenManager\n"
    f"TokenManager.get_token({_PARAMS})\n"
)


def wall(python: str, code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], env=child_env(CREDS), check=True)
    return time.perf_counter() - t0


def main(rounds: int = 25) -> int:
    variants = {
        "python -c pass (our interpreter)": (sys.executable, "pass"),
        "dsqlkit: import dsqlkit + first token": (sys.executable, OURS),
        "dsqlkit: import dsqlkit.psycopg + first token": (sys.executable, OURS_DRIVER),
    }
    have_baseline = baseline_available()
    if have_baseline:
        variants |= {
            "python -c pass (baseline interpreter)": (BASELINE_PYTHON, "pass"),
            "official: import + first token (dsql_core)": (BASELINE_PYTHON, OFFICIAL),
            "official: import aurora_dsql_psycopg + first token": (
                BASELINE_PYTHON, OFFICIAL_DRIVER),
        }
    for python, code in variants.values():
        wall(python, code)  # compile and cache bytecode
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (python, code) in variants.items():
            samples[name].append(wall(python, code))
    med = {name: statistics.median(s) * 1000 for name, s in samples.items()}
    print(f"Fresh process, import + first token (median of {rounds} runs, wall time)\n")
    for name, ms in med.items():
        print(f"  {name:52s} {ms:7.1f} ms")
    ours = med["dsqlkit: import dsqlkit + first token"]
    print(f"\n  target: dsqlkit import + first token <= 40 ms: {ours:.1f} ms -> "
          f"{'met' if ours <= 40 else 'NOT met'}")
    if not have_baseline:
        print(f"\n  {BASELINE_HINT}")
        return 0
    official = med["official: import + first token (dsql_core)"]
    print(f"  official / dsqlkit: {official / ours:.1f}x (token path), "
          f"{med['official: import aurora_dsql_psycopg + first token'] / med['dsqlkit: import dsqlkit.psycopg + first token']:.1f}x (with the psycopg driver)")  # noqa: E501
    return 0


if __name__ == "__main__":
    sys.exit(main())
