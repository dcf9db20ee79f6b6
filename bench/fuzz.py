"""Fuzz the IAM token verifier and the local endpoint's wire front end (issue 8, full run).

    python bench/fuzz.py                      # 20,000 + 10,000 token cases, 100,000+ messages
    python bench/fuzz.py --messages 20000     # a shorter wire run
    python bench/fuzz.py --only tokens        # or: wire

1. Token verifier, in-process: mutated valid tokens (every parameter, the signature,
   encodings, duplicates, ordering, truncation, oversized values, re-signed wrong parameters,
   other users and clocks), from a seeded generator and then from hypothesis. A token must be
   accepted exactly when it is a neutral spelling of the valid one; every refusal must be a
   TokenRejected with one of DSQL's hints and no secret in it; anything else is a crash.
2. Bad passwords over the wire: each must get FATAL 08006 "unable to accept connection,
   access denied" with a DSQL hint.
3. Wire fuzzing: malformed and mutated messages in every protocol phase, from several
   threads, against an endpoint in its own process, while a healthy session runs transfers;
   then sessions holding hostile length fields while the endpoint's RSS is measured.

The shared code lives in tests/reliability/ (the CI runs bounded versions of the same).
Exits 1 if anything went wrong.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
from reliability_endpoint import Closed, EndpointInfo, RawConn, child_endpoint, error_of, hint_of
from reliability_tokens import (
    TEMPORARY,
    Context,
    HypothesisDraw,
    RandomDraw,
    dsql_hint,
    mutate,
    problems,
    verify,
)
from reliability_wire import Tally, fresh_login_works, run_wire_fuzz

from dsqlkit.local import wire


def family(mutation: str) -> str:
    return mutation.split("+")[0].split(":")[0]


def token_fuzz(cases: int, seed: int) -> bool:
    print(f"== token verifier: {cases:,} seeded random cases")
    draw = RandomDraw(random.Random(seed))
    by_family: Counter[str] = Counter()
    accepted = rejected = 0
    issues: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    example: dict[str, str] = {}
    started = time.perf_counter()
    for _ in range(cases):
        case = mutate(draw)
        outcome = verify(case)
        by_family[family(case.mutation)] += 1
        accepted += outcome.accepted
        rejected += not outcome.accepted and outcome.crash is None
        if outcome.crash is not None:
            crashes[type(outcome.crash).__name__] += 1
        for p in problems(case, outcome):
            issues[p[:90]] += 1
            example.setdefault(p[:90], case.token[:300])
    elapsed = time.perf_counter() - started
    print(f"  cases {cases:,} in {elapsed:.1f} s ({cases / elapsed:,.0f}/s): accepted {accepted:,} "
          f"(all neutral spellings: {not any('accepted' in k for k in issues)}), "
          f"refused {rejected:,}")
    print("  by mutation family: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_family.items())))
    print(f"  crashes (anything but TokenRejected): {sum(crashes.values())} "
          + ", ".join(f"{k} {v}" for k, v in crashes.items()))
    print(f"  problems (crashes, wrong answers, hints, leaks): {sum(issues.values())}")
    for k, v in issues.items():
        print(f"    {v}x {k}\n      e.g. {example[k]!r}")
    return not issues


def hypothesis_fuzz(examples: int) -> bool:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    print(f"== token verifier: {examples:,} hypothesis examples")
    seen = Counter[str]()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        case = mutate(HypothesisDraw(data))
        seen[family(case.mutation)] += 1
        outcome = verify(case)
        assert not problems(case, outcome), (case.mutation, case.token, outcome)

    started = time.perf_counter()
    try:
        prop()
    except Exception as exc:  # hypothesis re-raises the shrunk failure
        print(f"  FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    n = sum(seen.values())
    print(f"  examples run {n:,} in "
          f"{time.perf_counter() - started:.1f} s, no problem")
    return True


def password_fuzz(ep: EndpointInfo, n: int, seed: int) -> bool:
    print(f"== bad passwords over the wire: {n:,}")
    ctx = Context(hosts=ep.hostnames, now=datetime.now(timezone.utc), plain=ep.credentials,
                  temporary=TEMPORARY, users=("admin",), margin=120)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    sent = 0
    while sent < n:
        case = mutate(RandomDraw(rng), ctx)
        if case.expected() or "\0" in case.token or case.user != "admin":
            continue
        sent += 1
        c = RawConn(ep.port).tls(ep.ca_path)
        try:
            c.send(wire.startup_message({"user": "admin", "database": "postgres"}))
            c.read()
            c.send(wire.password(case.token))
            msgs, closed = c.rest(10)
        except Closed:
            msgs, closed = [], True
        finally:
            c.close()
        if (len(msgs) == 1 and closed and msgs[0][0] == wire.ERROR_RESPONSE
                and error_of(msgs[0][1]) == ("FATAL", "08006",
                                             "unable to accept connection, access denied")
                and dsql_hint(hint_of(msgs[0][1]))):
            outcomes["FATAL 08006 access denied, DSQL hint"] += 1
        else:
            outcomes[f"UNEXPECTED {[chr(m[0]) for m in msgs]} closed={closed}"] += 1
    elapsed = time.perf_counter() - started
    print(f"  {n:,} in {elapsed:.1f} s: " + ", ".join(f"{k} {v:,}" for k, v in outcomes.items()))
    return all(not k.startswith("UNEXPECTED") for k in outcomes)


def wire_fuzz(ep: EndpointInfo, messages: int, threads: int, seed: int, holders: int,
              relay_units: int) -> bool:
    print(f"== wire fuzzing: {messages:,} messages, {threads} threads")
    last = [0.0]

    def progress(tally: Tally) -> None:
        now = time.monotonic()
        if now - last[0] > 15:
            last[0] = now
            print(f"  ... {tally.messages:,} messages, {sum(tally.sessions.values()):,} sessions",
                  flush=True)

    report = run_wire_fuzz(ep, messages=messages, threads=threads, seed=seed, holders=holders,
                           relay_units=relay_units, progress=progress)
    for line in report.lines():
        print("  " + line)
    login = fresh_login_works(ep)
    print(f"  a fresh login after it all: {'works' if login else 'FAILS'}")
    return (not report.tally.violations and not report.healthy.errors and report.alive
            and login and not report.endpoint_log_problems
            and report.backends_after == report.backends_before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000, help="seeded random token cases")
    ap.add_argument("--hypothesis", type=int, default=10_000, help="hypothesis examples")
    ap.add_argument("--passwords", type=int, default=1_000, help="bad passwords over the wire")
    ap.add_argument("--messages", type=int, default=100_000, help="wire messages to send")
    ap.add_argument("--threads", type=int, default=8, help="wire fuzzing threads")
    ap.add_argument("--holders", type=int, default=150,
                    help="sessions holding hostile length fields at the end")
    ap.add_argument("--relay-units", type=int, default=120,
                    help="most units a logged-in fuzz session sends")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("tokens", "wire"), default=None)
    args = ap.parse_args()
    ok = True
    started = time.monotonic()
    if args.only in (None, "tokens"):
        ok &= token_fuzz(args.tokens, args.seed)
        ok &= hypothesis_fuzz(args.hypothesis)
    if args.only in (None, "wire"):
        with child_endpoint(trust={TEMPORARY.access_key: TEMPORARY}, connection_rate=1e6,
                            connection_burst=1_000_000) as ep:
            ok &= password_fuzz(ep, args.passwords, args.seed)
            ok &= wire_fuzz(ep, args.messages, args.threads, args.seed, args.holders,
                            args.relay_units)
    print(f"== {'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
