"""The DAT401 bank, shared by the handlers of ch03-ch05: configuration, the connection pool,
request parsing and the transfer itself.

Every function deploys this directory as its code, so ``import bank`` works on Lambda (the
code root is on ``sys.path``) as it does under ``dsqlkit lambda serve --functions
examples/dat401``.

Configuration (environment variables):

``CLUSTER_ENDPOINT``  the cluster's hostname, ``<cluster-id>.dsql.<region>.on.aws`` (required)
``CLUSTER_USER``      the database role, default ``admin`` (``dsql:DbConnectAdmin``; any other
                      role needs ``dsql:DbConnect`` and an IAM mapping)
``AWS_REGION``        set by Lambda; needed when the endpoint is not a DSQL hostname
``DSQL_TOKEN_DURATION_SECS``  lifetime of each IAM token, default 900 (tokens only admit new
                      connections: an open connection outlives its token)
``CLUSTER_PORT``      only for a local endpoint (``dsqlkit local``), default 5432
``DSQL_SSLROOTCERT``  only for a local endpoint: the CA to verify it with (on AWS the system
                      trust store verifies DSQL's certificate)
``ACCOUNTS_KEY``      ``int`` (default: ``accounts``, ids 1-1000) or ``uuid`` (``accounts_uuid``)
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

from dsqlkit.psycopg import DsqlConnectionPool, create_pool


class BankError(Exception):
    """An error the caller caused or can act on; its message is safe to show."""


class InvalidRequest(BankError):
    """The event is not a valid request."""


class AccountNotFound(BankError):
    """The account does not exist."""


class InsufficientBalance(BankError):
    """The payer's balance would go negative."""


class ConfigurationError(BankError):
    """An environment variable the function needs is missing or invalid."""


# -- configuration and the connection ----------------------------------------------------------

_pool: DsqlConnectionPool | None = None
_pool_lock = threading.Lock()


def table() -> str:
    """The accounts table for the key type chosen by ``ACCOUNTS_KEY``."""
    key = os.environ.get("ACCOUNTS_KEY", "int")
    if key not in ("int", "uuid"):
        raise ConfigurationError(f"ACCOUNTS_KEY must be int or uuid, not {key!r}")
    return "accounts" if key == "int" else "accounts_uuid"


def connection_params() -> dict[str, Any]:
    """dsqlkit connection parameters from the environment (see the module docstring)."""
    endpoint = os.environ.get("CLUSTER_ENDPOINT", "").strip()
    if not endpoint:
        raise ConfigurationError(
            "CLUSTER_ENDPOINT is not set: set it to the cluster endpoint, "
            "<cluster-id>.dsql.<region>.on.aws (the CDK app's ClusterEndpoint output)"
        )
    params: dict[str, Any] = {"host": endpoint, "user": os.environ.get("CLUSTER_USER", "admin")}
    if os.environ.get("DSQL_TOKEN_DURATION_SECS"):
        params["token_duration_secs"] = os.environ["DSQL_TOKEN_DURATION_SECS"]
    if os.environ.get("CLUSTER_PORT"):
        params["port"] = os.environ["CLUSTER_PORT"]
    if os.environ.get("DSQL_SSLROOTCERT"):
        params["sslrootcert"] = os.environ["DSQL_SSLROOTCERT"]
    return params


def get_pool() -> DsqlConnectionPool:
    """The execution environment's pool: created on first use, then reused by every
    invocation this environment serves.

    One connection is enough (an environment runs one invocation at a time). The pool, not a
    bare connection, is what makes reuse safe: it mints an IAM token for each new connection,
    so an expired token never matters, and it checks the connection at checkout, replacing one
    that DSQL closed (at 60 minutes) or that outlived its 55-minute lifetime while the
    environment sat frozen between invocations.
    """
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                params = connection_params()
                # autocommit: a lone SELECT needs no BEGIN/ROLLBACK round trips; transfers
                # open their transaction explicitly.
                _pool = create_pool("", min_size=1, max_size=1, kwargs={"autocommit": True},
                                    **params)
    return _pool


# -- requests ------------------------------------------------------------------------------------

_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
# DSQL stores an unqualified NUMERIC as numeric(18,6): at most 12 digits before the point.
_MAX_AMOUNT = Decimal(10) ** 12
_CENT = Decimal("0.01")


def _field(event: Any, name: str) -> Any:
    if not isinstance(event, dict):
        raise InvalidRequest("The request must be a JSON object")
    if name not in event or event[name] is None:
        raise InvalidRequest(f"Missing field {name}")
    return event[name]


def account_id(event: Any, name: str) -> int | str:
    """``event[name]`` as an account key: an int4 (``accounts``) or a UUID string."""
    value = _field(event, name)
    if table() == "accounts_uuid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidRequest(f"{name} must be a UUID") from None
    if isinstance(value, bool) or not isinstance(value, int) or not (
            _INT4_MIN <= value <= _INT4_MAX):
        raise InvalidRequest(f"{name} must be a 32-bit integer")
    return value


def amount(event: Any) -> Decimal:
    """A positive amount with at most two decimal places (a JSON number or a string)."""
    value = _field(event, "amount")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest("Amount must be a number")
    try:
        # str() first: Decimal(0.1) would carry the binary float's 55 digits.
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidRequest("Amount must be a number") from None
    if not result.is_finite():
        raise InvalidRequest("Amount must be a number")
    if result <= 0:
        raise InvalidRequest("Amount must be positive")
    if result >= _MAX_AMOUNT:
        raise InvalidRequest(f"Amount must be less than {_MAX_AMOUNT:f}")
    if result != result.quantize(_CENT):
        raise InvalidRequest("Amount must have at most 2 decimal places")
    return result


@dataclass(frozen=True)
class Transfer:
    payer_id: int | str
    payee_id: int | str
    amount: Decimal


def transfer_request(event: Any) -> Transfer:
    request = Transfer(account_id(event, "payer_id"), account_id(event, "payee_id"),
                       amount(event))
    if request.payer_id == request.payee_id:
        raise InvalidRequest("Payer and payee must be different accounts")
    return request


# -- the work ------------------------------------------------------------------------------------


def text(value: Decimal) -> str:
    """Exact decimal text, never exponent notation (``Decimal('1E+1')`` prints as 10)."""
    return f"{value:f}"


def balance(conn: psycopg.Connection[Any], account: int | str) -> Decimal:
    row = conn.execute(f"SELECT balance FROM {table()} WHERE id = %s", (account,)).fetchone()
    if row is None:
        raise AccountNotFound("Account not found")
    value: Decimal = row[0]
    return value


def transfer(conn: psycopg.Connection[Any], request: Transfer) -> Decimal:
    """Move the money inside the caller's transaction; return the payer's new balance.

    Raises (and so rolls the caller's transaction back) when the payer does not exist, its
    balance would go negative, or the payee does not exist -- checked in that order.

    The two UPDATEs run in key order. On DSQL the order does not matter: nothing waits, and a
    conflict is reported at COMMIT. On PostgreSQL (``dsqlkit local``) each UPDATE takes a row
    lock, and two transfers between the same accounts in opposite directions would deadlock;
    PostgreSQL breaks that only after ``deadlock_timeout`` with 40P01, which is not an OCC
    error and not retryable. Key order avoids it, at no cost on DSQL.
    """
    name = table()
    payer_balance: Decimal | None = None
    payee_found = False
    for account in _key_order(request.payer_id, request.payee_id):
        if account == request.payer_id:
            row = conn.execute(
                f"UPDATE {name} SET balance = balance - %s WHERE id = %s RETURNING balance",
                (request.amount, account),
            ).fetchone()
            payer_balance = row[0] if row is not None else None
        else:
            cur = conn.execute(f"UPDATE {name} SET balance = balance + %s WHERE id = %s",
                               (request.amount, account))
            payee_found = cur.rowcount == 1
    if payer_balance is None:
        raise AccountNotFound("Payer account not found")
    if payer_balance < 0:
        raise InsufficientBalance("Insufficient balance")
    if not payee_found:
        raise AccountNotFound("Payee account not found")
    return payer_balance


def _key_order(a: int | str, b: int | str) -> tuple[int | str, int | str]:
    if isinstance(a, int) and isinstance(b, int):
        return (a, b) if a < b else (b, a)
    # Canonical UUID text sorts as the uuid type does (byte by byte).
    return (a, b) if str(a) < str(b) else (b, a)


def milliseconds(seconds: float) -> str:
    """``transaction_time`` as the seed prints it: milliseconds with three decimals."""
    return f"{seconds * 1000:.3f}ms"
