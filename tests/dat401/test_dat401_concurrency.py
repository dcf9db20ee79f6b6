"""The seed's closing experiment, as tests: 10 concurrent callers moving money among a few
accounts. ch04 (no retry) loses some transfers to OCC conflicts (SQLSTATE 40001); ch05
retries them and every transfer succeeds. Either way money is conserved, and the balances
are exactly what the successful transfers imply: a failed invocation changed nothing."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import psycopg
from dat401_support import Result, balances, invoke

THREADS = 10
PER_THREAD = 15

# psycopg's name for SQLSTATE 40001, the class of every OCC conflict (OC000/OC001 on DSQL;
# "could not serialize access" on PostgreSQL).
SERIALIZATION_FAILURE = "SerializationFailure"


def run_transfers(client: Any, function: str, accounts: int, seed: int,
                  ) -> list[tuple[dict[str, Any], Result]]:
    rng = random.Random(seed)
    plans = []
    for _ in range(THREADS):
        batch = []
        for _ in range(PER_THREAD):
            payer, payee = rng.sample(range(1, accounts + 1), 2)
            # Amounts small enough that no balance can approach zero: only conflicts fail.
            amount = f"{rng.randint(1, 100) / 100:.2f}"
            batch.append({"payer_id": payer, "payee_id": payee, "amount": amount})
        plans.append(batch)

    def worker(batch: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Result]]:
        return [(event, invoke(client, function, event)) for event in batch]

    with ThreadPoolExecutor(THREADS) as pool:
        return [item for chunk in pool.map(worker, plans) for item in chunk]


def expected_balances(outcomes: list[tuple[dict[str, Any], Result]], accounts: int,
                      ) -> dict[int, Decimal]:
    expected = {i: Decimal(100) for i in range(1, accounts + 1)}
    for event, result in outcomes:
        if result.ok:
            expected[event["payer_id"]] -= Decimal(event["amount"])
            expected[event["payee_id"]] += Decimal(event["amount"])
    return expected


def test_ch04_reports_conflicts_under_contention(
    client: Any, db: psycopg.Connection[Any], fresh_accounts: None, bank_server: Any
) -> None:
    outcomes = run_transfers(client, "ch04", accounts=3, seed=4)
    failures = [r for _, r in outcomes if not r.ok]
    kinds = Counter(r.body["errorType"] for r in failures)
    # Some transfers lost a conflict, and nothing failed for any other reason.
    assert kinds[SERIALIZATION_FAILURE] > 0, kinds
    others = [r.body for r in failures if r.body["errorType"] != SERIALIZATION_FAILURE]
    assert others == [], others[:2]
    assert all(r.function_error == "Unhandled" and r.status == 200 for r in failures)
    assert len(failures) < len(outcomes)

    rows = balances(db)
    assert sum(rows.values()) == 100_000
    expected = expected_balances(outcomes, 3)
    assert {i: rows[i] for i in (1, 2, 3)} == expected
    # Concurrent invocations ran in separate environments, as on Lambda.
    assert bank_server.stats()["ch04"]["peak_concurrency"] > 1


def test_ch05_retries_conflicts_and_conserves_money(
    client: Any, db: psycopg.Connection[Any], fresh_accounts: None
) -> None:
    outcomes = run_transfers(client, "ch05", accounts=3, seed=5)
    failures = [r.body for _, r in outcomes if not r.ok]
    assert failures == []
    attempts = [r.body["attempts"] for _, r in outcomes]
    # Retries did happen (the same load made ch04 fail), and stayed within the bound.
    assert max(attempts) > 1, attempts
    assert max(attempts) <= 20

    rows = balances(db)
    assert sum(rows.values()) == 100_000
    assert {i: rows[i] for i in (1, 2, 3)} == expected_balances(outcomes, 3)
    assert all(rows[i] == 100 for i in range(4, 1001))
    # Each reported payer balance is one the payer really had at some point: at least it is
    # a well-formed two-decimal amount, never negative.
    for _, r in outcomes:
        balance = Decimal(r.body["payer_balance"])
        assert balance >= 0 and balance == balance.quantize(Decimal("0.01"))
