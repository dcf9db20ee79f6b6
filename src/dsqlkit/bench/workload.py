"""The DAT401 transfer workload: what one transfer is, how transfers are drawn, and the SQL.

Each transfer moves a random amount between two distinct random accounts, exactly as the
seed's ``invoke-test`` drew them: payer and payee uniform in ``1..accounts`` and different,
amount uniform in 0.01 to 10.00 with two decimals. The transaction is chapter 4's, written once
(:func:`transfer_transaction`); chapter 5 is the same transaction re-run on OCC conflicts,
which is the runner's business, not this module's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dsqlkit.errors import DsqlError

__all__ = [
    "ACCOUNTS_DDL",
    "INITIAL_BALANCE",
    "InsufficientBalance",
    "PayeeNotFound",
    "PayerNotFound",
    "Transfer",
    "TransferGenerator",
    "TransferRejected",
    "transfer_transaction",
]

# The seed's table (DAT401 chapter 3) and its setup.sql balance.
ACCOUNTS_DDL = "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance numeric)"
INITIAL_BALANCE = 100

DEBIT_SQL = "UPDATE accounts SET balance = balance - %s WHERE id = %s RETURNING balance"
CREDIT_SQL = "UPDATE accounts SET balance = balance + %s WHERE id = %s"

# Cents 1..1000 as Decimals, built once: a Decimal per transfer from a string would cost more
# than the rest of drawing a transfer.
_AMOUNTS = tuple(Decimal(cents).scaleb(-2) for cents in range(0, 1001))


@dataclass(frozen=True, slots=True)
class Transfer:
    payer: int
    payee: int
    amount: Decimal

    def payload(self) -> bytes:
        """The Lambda request body the chapter 4/5 handlers take (invoke-test's shape).

        Written by hand because ``json`` cannot encode a Decimal, and a float would not keep
        the two decimals exact; ``str`` of a two-decimal Decimal is a valid JSON number.
        """
        return (
            b'{"payer_id": %d, "payee_id": %d, "amount": %s}'
            % (self.payer, self.payee, str(self.amount).encode())
        )


class TransferGenerator:
    """Draws transfers from its own seeded random stream (one generator per worker)."""

    __slots__ = ("_accounts", "_randbelow")

    def __init__(self, accounts: int, rng: random.Random) -> None:
        if accounts < 2:
            raise ValueError(f"a transfer needs two distinct accounts; got accounts={accounts}")
        self._accounts = accounts
        self._randbelow = rng.randrange

    def __call__(self) -> Transfer:
        n = self._accounts
        payer = self._randbelow(n) + 1
        # Uniform over the other n-1 accounts without a rejection loop.
        payee = self._randbelow(n - 1) + 1
        if payee >= payer:
            payee += 1
        return Transfer(payer, payee, _AMOUNTS[self._randbelow(1000) + 1])


class TransferRejected(DsqlError):
    """The transfer's business rules refused it; the transaction was rolled back."""


class InsufficientBalance(TransferRejected):
    def __init__(self, balance: Decimal) -> None:
        super().__init__(f"Insufficient balance: {balance}")
        self.balance = balance


class PayeeNotFound(TransferRejected):
    def __init__(self, payee: int) -> None:
        super().__init__(f"Payee account not found: {payee}")


class PayerNotFound(TransferRejected):
    def __init__(self, payer: int) -> None:
        super().__init__(f"Payer account not found: {payer}")


def transfer_transaction(conn: Any, t: Transfer) -> Decimal:
    """Chapter 4's transfer, inside a transaction the caller opened: returns the payer's new
    balance, or raises :class:`TransferRejected` so that the caller rolls back.

    ``conn`` is a psycopg 3 connection. The payer is debited first and the check happens
    after the debit, as in the seed: the UPDATE's RETURNING is both the read and the write,
    one round trip instead of two.
    """
    if t.payer == t.payee:
        raise TransferRejected("Payer and payee must be different accounts")
    row = conn.execute(DEBIT_SQL, (t.amount, t.payer)).fetchone()
    if row is None:
        raise PayerNotFound(t.payer)
    balance: Decimal = row[0]
    if balance < 0:
        raise InsufficientBalance(balance)
    if conn.execute(CREDIT_SQL, (t.amount, t.payee)).rowcount != 1:
        raise PayeeNotFound(t.payee)
    return balance
