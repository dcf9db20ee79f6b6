"""Helpers shared by the DAT401 tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from dsqlkit.local import LocalDSQL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dat401"
SQL = EXAMPLES / "sql"


def sql_statements(name: str) -> list[str]:
    """The statements of one of the example's SQL files (same rule as setup_db.py)."""
    lines = [line.split("--", 1)[0] for line in (SQL / name).read_text().splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def run_sql(ep: LocalDSQL, *names: str) -> None:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        for name in names:
            for statement in sql_statements(name):
                conn.execute(statement)


def function_env(ep: LocalDSQL, *, port: int | None = None) -> dict[str, str]:
    """What a function needs to reach ``ep``: the endpoint's credentials and region, plus the
    bank's configuration pointing at it."""
    env = {k: v for k, v in ep.env().items() if k.startswith("AWS_")}
    env.update(CLUSTER_ENDPOINT=ep.host, CLUSTER_PORT=str(port or ep.port),
               DSQL_SSLROOTCERT=ep.ca_path, CLUSTER_USER="admin")
    return env


def lambda_client(endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    # No SDK retries: a test must see each invocation's own outcome.
    return boto3.client(
        "lambda", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60,
                      max_pool_connections=20),
    )


@dataclass
class Result:
    status: int
    function_error: str | None
    body: Any

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.function_error is None


def invoke(client: Any, name: str, payload: Any) -> Result:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    return Result(response["StatusCode"], response.get("FunctionError"),
                  json.loads(response["Payload"].read()))


def balances(conn: psycopg.Connection[Any], table: str = "accounts") -> dict[Any, Decimal]:
    return {row[0]: row[1] for row in conn.execute(f"SELECT id, balance FROM {table}")}
