"""The dialect analysis on the proxy's hot path: cached analyze() vs a fresh parse, per call.

    python bench/dialect_cache.py [--quick]

The local endpoint calls ``analyze()`` for every statement a client sends. The transfer workload
repeats three statement texts millions of times, so a repeated text must cost one dict lookup,
not a parse. This prints the per-call time of the cached path, of the uncached path
(``analyze_uncached``: scan, parse, tree walk), and their ratio, plus the cost of feeding each
analyzed statement through ``TransactionRules`` as the proxy does. No timing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from dsqlkit.local.dialect import TransactionRules, analyze, analyze_uncached, cache_stats

# The transfer workload's three statements (DAT401 ch05 shape): lock the source row, then move
# the money.
TRANSFER = (
    "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE",
    "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
)


def per_call_ns(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the mean time per call, in nanoseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    calls, repeats = (20_000, 3) if args.quick else (200_000, 5)
    uncached_calls = calls // 100

    texts = iter(TRANSFER * (calls + 1))
    for sql in TRANSFER:
        analyze(sql)  # warm the cache, as the first transfer does
    cached = per_call_ns(lambda: analyze(next(texts)), calls, repeats)

    texts = iter(TRANSFER * (uncached_calls * repeats + 1))
    uncached = per_call_ns(lambda: analyze_uncached(next(texts)), uncached_calls, repeats)

    rules = TransactionRules()
    begin, commit = analyze("BEGIN").statements[0], analyze("COMMIT").statements[0]
    statements = [analyze(sql).statements[0] for sql in TRANSFER]

    def transaction() -> None:
        for stmt in (begin, *statements, commit):
            if rules.check(stmt).allowed:
                rules.completed(stmt, rows=1 if stmt.writes_rows else 0)

    per_transaction = per_call_ns(transaction, calls // 5, repeats)

    info = cache_stats()
    print(f"analyze() cached:    {cached / 1000:8.3f} µs per call")
    print(f"analyze() uncached:  {uncached / 1000:8.3f} µs per call")
    print(f"ratio uncached/cached: {uncached / cached:.0f}x")
    print(f"TransactionRules, one 5-statement transfer: {per_transaction / 1000:.3f} µs "
          f"({per_transaction / 5 / 1000:.3f} µs per statement)")
    print(f"cache: {info.hits} hits, {info.misses} misses, hit rate "
          f"{info.hits / max(1, info.hits + info.misses):.4%}")


if __name__ == "__main__":
    main()
