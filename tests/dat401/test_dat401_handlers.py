"""Every DAT401 function through boto3 -> LambdaServer -> dsqlkit local: the happy paths, each
error path (and that the database is untouched after it), and the error format."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from dat401_support import EXAMPLES, balances, function_env, invoke

from dsqlkit.checker import check_sql
from dsqlkit.local import LocalDSQL

TIME = re.compile(r"^\d+\.\d{3}ms$")


def assert_function_error(result: Any, error_type: str, message: str) -> None:
    assert result.status == 200
    assert result.function_error == "Unhandled"
    assert result.body["errorType"] == error_type
    assert result.body["errorMessage"] == message
    assert isinstance(result.body["stackTrace"], list)


# -- ch01 ------------------------------------------------------------------------------------------


def test_ch01_greets(client: Any) -> None:
    result = invoke(client, "ch01", {"name": "reinvent"})
    assert result.ok
    assert result.body == {"greeting": "hello reinvent"}


@pytest.mark.parametrize("event", [{}, {"name": 3}, [1, 2]])
def test_ch01_rejects_a_request_without_a_name(client: Any, event: Any) -> None:
    assert_function_error(invoke(client, "ch01", event), "ValueError",
                          "The request must be a JSON object with a string field name")


# -- ch03 ------------------------------------------------------------------------------------------


def test_ch03_returns_the_balance_as_exact_text(
    client: Any, db: psycopg.Connection[Any], fresh_accounts: None
) -> None:
    assert invoke(client, "ch03", {"id": 1}).body == {"balance": "100"}
    # A value a binary float cannot hold exactly comes back digit for digit.
    db.execute("UPDATE accounts SET balance = 1234567.89 WHERE id = 7")
    assert invoke(client, "ch03", {"id": 7}).body == {"balance": "1234567.89"}


@pytest.mark.parametrize(("event", "error_type", "message"), [
    ({"id": 1001}, "AccountNotFound", "Account not found"),
    ({"id": -5}, "AccountNotFound", "Account not found"),
    ({"id": "1"}, "InvalidRequest", "id must be a 32-bit integer"),
    ({"id": 2**31}, "InvalidRequest", "id must be a 32-bit integer"),
    ({"id": True}, "InvalidRequest", "id must be a 32-bit integer"),
    ({}, "InvalidRequest", "Missing field id"),
    ("1", "InvalidRequest", "The request must be a JSON object"),
])
def test_ch03_errors(client: Any, event: Any, error_type: str, message: str) -> None:
    assert_function_error(invoke(client, "ch03", event), error_type, message)


# -- ch04 and ch05: the transfer ------------------------------------------------------------------


@pytest.mark.parametrize("function", ["ch04", "ch05"])
def test_transfer_moves_money(
    client: Any, db: psycopg.Connection[Any], fresh_accounts: None, function: str
) -> None:
    result = invoke(client, function, {"payer_id": 1, "payee_id": 2, "amount": 10})
    assert result.ok, result.body
    assert result.body["payer_balance"] == "90"
    assert TIME.match(result.body["transaction_time"]), result.body
    if function == "ch05":
        assert result.body["attempts"] == 1
        assert set(result.body) == {"payer_balance", "transaction_time", "attempts"}
    else:
        assert set(result.body) == {"payer_balance", "transaction_time"}

    # The payee may have the lower or the higher id (the updates run in key order), and
    # amounts may be strings or numbers with up to two decimals.
    result = invoke(client, function, {"payer_id": 500, "payee_id": 2, "amount": "0.01"})
    assert result.body["payer_balance"] == "99.99"
    result = invoke(client, function, {"payer_id": 2, "payee_id": 3, "amount": 10.5})
    assert result.body["payer_balance"] == "99.51"

    after = balances(db)
    assert (after[1], after[2], after[3], after[500]) == (
        Decimal("90"), Decimal("99.51"), Decimal("110.5"), Decimal("99.99"))
    assert sum(after.values()) == 100_000


def test_transfer_may_empty_an_account(
    client: Any, db: psycopg.Connection[Any], fresh_accounts: None
) -> None:
    result = invoke(client, "ch04", {"payer_id": 4, "payee_id": 5, "amount": 100})
    assert result.body["payer_balance"] == "0"
    assert balances(db)[4] == 0


TRANSFER_ERRORS = [
    ({"payer_id": 1, "payee_id": 1, "amount": 1}, "InvalidRequest",
     "Payer and payee must be different accounts"),
    ({"payer_id": 1, "payee_id": 2, "amount": 100.01}, "InsufficientBalance",
     "Insufficient balance"),
    ({"payer_id": 9, "payee_id": 2, "amount": 1000}, "InsufficientBalance",
     "Insufficient balance"),
    ({"payer_id": 1, "payee_id": 5000, "amount": 1}, "AccountNotFound",
     "Payee account not found"),
    # The payee's update runs first here (lower id): it must be undone too.
    ({"payer_id": 1, "payee_id": 0, "amount": 1}, "AccountNotFound",
     "Payee account not found"),
    ({"payer_id": 5000, "payee_id": 1, "amount": 1}, "AccountNotFound",
     "Payer account not found"),
    # Both checks fail: the payer's balance is reported first, as in the seed.
    ({"payer_id": 1, "payee_id": 5000, "amount": 500}, "InsufficientBalance",
     "Insufficient balance"),
    ({"payer_id": 1, "payee_id": 2, "amount": 0}, "InvalidRequest", "Amount must be positive"),
    ({"payer_id": 1, "payee_id": 2, "amount": -5}, "InvalidRequest", "Amount must be positive"),
    ({"payer_id": 1, "payee_id": 2, "amount": 1.005}, "InvalidRequest",
     "Amount must have at most 2 decimal places"),
    ({"payer_id": 1, "payee_id": 2, "amount": "0.001"}, "InvalidRequest",
     "Amount must have at most 2 decimal places"),
    ({"payer_id": 1, "payee_id": 2, "amount": "ten"}, "InvalidRequest", "Amount must be a number"),
    ({"payer_id": 1, "payee_id": 2, "amount": "NaN"}, "InvalidRequest", "Amount must be a number"),
    ({"payer_id": 1, "payee_id": 2, "amount": True}, "InvalidRequest", "Amount must be a number"),
    ({"payer_id": 1, "payee_id": 2, "amount": 1e15}, "InvalidRequest",
     "Amount must be less than 1000000000000"),
    ({"payer_id": 1, "payee_id": 2}, "InvalidRequest", "Missing field amount"),
    ({"payer_id": "1", "payee_id": 2, "amount": 1}, "InvalidRequest",
     "payer_id must be a 32-bit integer"),
    ({"payer_id": 1, "payee_id": 2.5, "amount": 1}, "InvalidRequest",
     "payee_id must be a 32-bit integer"),
]


@pytest.mark.parametrize("function", ["ch04", "ch05"])
@pytest.mark.parametrize(("event", "error_type", "message"), TRANSFER_ERRORS)
def test_transfer_errors_change_nothing(
    client: Any, db: psycopg.Connection[Any], bank_endpoint: LocalDSQL,
    function: str, event: Any, error_type: str, message: str,
) -> None:
    before = balances(db)
    assert_function_error(invoke(client, function, event), error_type, message)
    assert balances(db) == before
    # No transaction was left open on the function's connection: the next one works.
    ok = invoke(client, function, {"payer_id": 11, "payee_id": 12, "amount": "0.5"})
    assert ok.ok, ok.body
    invoke(client, function, {"payer_id": 12, "payee_id": 11, "amount": "0.5"})


def test_error_messages_have_no_unformatted_placeholders(client: Any) -> None:
    # The seed's ch04 answered "Insufficient balance: {payer_balance}", braces and all.
    result = invoke(client, "ch04", {"payer_id": 1, "payee_id": 2, "amount": 100000})
    assert "{" not in result.body["errorMessage"]


def test_uuid_keyed_accounts(client: Any, db: psycopg.Connection[Any]) -> None:
    ids = [str(r[0]) for r in db.execute("SELECT id FROM accounts_uuid ORDER BY id LIMIT 2")]
    before = balances(db, "accounts_uuid")
    total = sum(before.values())
    result = invoke(client, "ch05uuid", {"payer_id": ids[1], "payee_id": ids[0],
                                         "amount": "2.5"})
    assert result.ok, result.body
    after = balances(db, "accounts_uuid")
    assert result.body["payer_balance"] == f"{after[db_uuid(ids[1])]:f}"
    assert after[db_uuid(ids[1])] == before[db_uuid(ids[1])] - Decimal("2.5")
    assert sum(after.values()) == total == 100_000
    assert_function_error(
        invoke(client, "ch05uuid", {"payer_id": 1, "payee_id": ids[0], "amount": 1}),
        "InvalidRequest", "payer_id must be a UUID")
    assert_function_error(
        invoke(client, "ch05uuid", {"payer_id": ids[0],
                                    "payee_id": "00000000-0000-0000-0000-000000000000",
                                    "amount": 1}),
        "AccountNotFound", "Payee account not found")
    assert balances(db, "accounts_uuid") == after


def db_uuid(text: str) -> Any:
    import uuid

    return uuid.UUID(text)


def test_environments_are_reused(client: Any, bank_server: Any) -> None:
    before = bank_server.stats()["ch03"]
    for _ in range(5):
        assert invoke(client, "ch03", {"id": 3}).ok
    after = bank_server.stats()["ch03"]
    assert after["invocations"] - before["invocations"] == 5
    # Sequential invocations all went to one warm environment.
    assert after["environments_started"] == max(1, before["environments_started"])


def test_the_sql_is_accepted_by_dsql() -> None:
    for path in sorted((EXAMPLES / "sql").glob("*.sql")):
        assert check_sql(path.read_text(), filename=str(path)) == [], path


def test_setup_script(bank_endpoint: LocalDSQL, db: psycopg.Connection[Any],
                      tmp_path: Any) -> None:
    db.execute("UPDATE accounts SET balance = 5 WHERE id = 1")
    env = {"PATH": "/usr/bin:/bin", **function_env(bank_endpoint)}
    run = subprocess.run([sys.executable, str(EXAMPLES / "setup_db.py")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "accounts: 1000 accounts, total balance 100000"
    rows = balances(db)
    assert sorted(rows) == list(range(1, 1001))
    assert set(rows.values()) == {Decimal(100)}

    ids_file = tmp_path / "uuids.txt"
    run = subprocess.run([sys.executable, str(EXAMPLES / "setup_db.py"), "--uuid",
                          "--ids-out", str(ids_file)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    ids = ids_file.read_text().split()
    assert len(ids) == len(set(ids)) == 1000
    assert set(balances(db, "accounts_uuid")) == {db_uuid(i) for i in ids}

    del env["CLUSTER_ENDPOINT"]
    run = subprocess.run([sys.executable, str(EXAMPLES / "setup_db.py")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "CLUSTER_ENDPOINT is not set" in run.stderr
