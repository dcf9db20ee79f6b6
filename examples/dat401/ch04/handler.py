"""Chapter 04: transfer money in one transaction, reusing the connection across invocations.

``{"payer_id": 1, "payee_id": 2, "amount": 10}`` ->
``{"payer_balance": "90", "transaction_time": "3.141ms"}``

Both UPDATEs run in one transaction; :func:`bank.transfer` checks the payer exists, its
balance stays non-negative ("Insufficient balance") and the payee exists ("Payee account not
found"), raising -- and so rolling back -- otherwise.

No retry: when two transfers touch the same account at the same time, DSQL lets both run and
fails the later COMMIT with SQLSTATE 40001 (OC000). Here that error reaches the caller as a
function error (``errorType: SerializationFailure``). Chapter 05 retries it.
"""

from __future__ import annotations

import time
from typing import Any

import bank


def handler(event: Any, context: Any) -> dict[str, str]:
    request = bank.transfer_request(event)
    started = time.perf_counter()
    with bank.get_pool().connection() as conn, conn.transaction():
        payer_balance = bank.transfer(conn, request)
    return {
        "payer_balance": bank.text(payer_balance),
        "transaction_time": bank.milliseconds(time.perf_counter() - started),
    }
