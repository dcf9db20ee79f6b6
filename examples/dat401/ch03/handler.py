"""Chapter 03: read an account's balance from Aurora DSQL.

``{"id": 1}`` -> ``{"balance": "100"}``: the balance as exact decimal text (a JSON number
would pass through a binary float). An unknown id is an error (``AccountNotFound``).

The seed opened a new connection in every invocation, paying for TLS and authentication each
time; here the connection comes from :func:`bank.get_pool`, created once per execution
environment (chapter 04 explains why that is the right default).
"""

from __future__ import annotations

from typing import Any

import bank


def handler(event: Any, context: Any) -> dict[str, str]:
    account = bank.account_id(event, "id")
    with bank.get_pool().connection() as conn:
        return {"balance": bank.text(bank.balance(conn, account))}
