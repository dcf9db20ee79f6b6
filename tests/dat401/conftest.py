"""Fixtures for the DAT401 tests: a local DSQL endpoint with the bank's tables, the example
functions served by ``LambdaServer``, and a boto3 Lambda client pointed at it.

The endpoint is this directory's own (not the session-wide ``dsql_local``): the bank owns the
``accounts`` tables and resets them between tests, which must not collide with other suites.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from dat401_support import EXAMPLES, function_env, lambda_client, run_sql

from dsqlkit.lambda_local import FunctionSpec, LambdaServer
from dsqlkit.local import LocalDSQL


@pytest.fixture(scope="session")
def bank_endpoint() -> Iterator[LocalDSQL]:
    with LocalDSQL(ephemeral=True, port=0) as ep:
        run_sql(ep, "schema.sql", "setup.sql", "schema_uuid.sql", "setup_uuid.sql")
        yield ep


@pytest.fixture(scope="session")
def bank_server(bank_endpoint: LocalDSQL) -> Iterator[LambdaServer]:
    uuid_bank = FunctionSpec("ch05uuid", EXAMPLES, "ch05.handler.handler",
                             env={"ACCOUNTS_KEY": "uuid"})
    with LambdaServer(EXAMPLES, functions=[uuid_bank], env=function_env(bank_endpoint),
                      concurrency=10, inherit_env=False) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(bank_server: LambdaServer) -> Any:
    return lambda_client(bank_server.endpoint_url)


@pytest.fixture
def db(bank_endpoint: LocalDSQL) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(bank_endpoint.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def fresh_accounts(bank_endpoint: LocalDSQL) -> None:
    """Accounts 1-1000 back to a balance of 100."""
    run_sql(bank_endpoint, "setup.sql")
