"""CLI start-up: ``dsqlkit token`` and ``dsqlkit local --help`` next to a bare interpreter.

Each variant is a fresh process, measured in interleaved rounds (every variant once per
round, in turn), bytecode caches warm as in an installed package, fake credentials in the
environment. Reported per variant: the median wall time, its difference from
``python -c pass`` and the median of the per-round ratios to it, with their range: on a small
virtual machine the speed of the whole machine drifts within a minute, which a ratio of two
separately measured medians would take for a difference between the variants.

    python bench/cli_startup.py [--rounds 40]    # target: dsqlkit token <= 60 ms over python
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(__file__))
from _endpoint import child_env

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEBENCH0001",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "us-east-1",
}
TARGET_MS = 60.0


def variants() -> dict[str, list[str]]:
    python = sys.executable
    script = shutil.which("dsqlkit", path=os.path.dirname(python)) or shutil.which("dsqlkit")
    out = {
        "python -c pass": [python, "-c", "pass"],
        "python -m dsqlkit token": [python, "-m", "dsqlkit", "token", "--hostname", HOST],
    }
    if script is not None:
        out["dsqlkit token"] = [script, "token", "--hostname", HOST]
        out["dsqlkit --help"] = [script, "--help"]
        out["dsqlkit local --help"] = [script, "local", "--help"]
    return out


def wall(argv: Sequence[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    env = child_env(CREDS)
    targets = variants()
    for argv in targets.values():  # warm the bytecode caches and the page cache
        wall(argv, env)
    results: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, argv in targets.items():
            results[name].append(wall(argv, env))
    base = results["python -c pass"]
    print(f"{args.rounds} interleaved rounds, {sys.executable} ({sys.version.split()[0]})")
    print(f"{'variant':26} {'median':>9} {'over python':>12} {'ratio (min-max)':>22}")
    verdict = 0
    for name, times in results.items():
        median_ms = statistics.median(times) * 1000
        over_ms = statistics.median(t - b for t, b in zip(times, base, strict=True)) * 1000
        ratios = [t / b for t, b in zip(times, base, strict=True)]
        spread = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{name:26} {median_ms:7.1f}ms {over_ms:+10.1f}ms {spread:>22}")
        if name in ("dsqlkit token", "python -m dsqlkit token") and over_ms > TARGET_MS:
            verdict = 1
    print(f"target: dsqlkit token <= {TARGET_MS:g} ms over python -c pass: "
          f"{'met' if verdict == 0 else 'MISSED'}")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
