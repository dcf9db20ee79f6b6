"""dsqlkit bench --function: the DAT401 chapter 4 and 5 handlers behind ``dsqlkit lambda serve``.

The load tester invokes through boto3 exactly as invoke-test did; the functions reach the
session-wide ``dsql_local`` endpoint. Balances are summed here around each run: in Lambda mode
the bench cannot see the database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsqlkit.bench import LoadPlan, TargetSpec, run_bench, setup_accounts, validate
from dsqlkit.bench.outcomes import Outcome
from dsqlkit.bench.targets import sum_balances
from dsqlkit.local import LocalDSQL

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "dat401"

try:
    from dsqlkit.lambda_local import LambdaServer
except ImportError as exc:  # pragma: no cover - depends on the lambda_local package
    pytest.skip(f"dsqlkit.lambda_local is not available ({exc}); the --function target "
                "needs 'dsqlkit lambda serve' to be tested locally", allow_module_level=True)
if not (EXAMPLES / "ch04" / "handler.py").exists():  # pragma: no cover
    pytest.skip("examples/dat401/ch04 is missing", allow_module_level=True)


def function_env(ep: LocalDSQL) -> dict[str, str]:
    env = {k: v for k, v in ep.env().items() if k.startswith("AWS_")}
    env.update(CLUSTER_ENDPOINT=ep.host, CLUSTER_PORT=str(ep.port),
               DSQL_SSLROOTCERT=ep.ca_path, CLUSTER_USER="admin")
    return env


@pytest.fixture(scope="module")
def lambda_server(dsql_local: LocalDSQL) -> Iterator[Any]:
    with LambdaServer(EXAMPLES, env=function_env(dsql_local), concurrency=4,
                      inherit_env=False) as srv:
        yield srv


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 signs every request; the local server does not care with which keys.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bench-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bench-test")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def total(ep: LocalDSQL) -> Decimal:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        return sum_balances(conn)[0]


@pytest.mark.parametrize("function", ["ch04", "ch05"])
def test_lambda_target_counts_add_up(dsql_local: LocalDSQL, lambda_server: Any, aws_env: None,
                                     function: str) -> None:
    setup_accounts(TargetSpec("direct", conn=dsql_local.url(),
                              credentials=dsql_local.credentials), 1000)
    before = total(dsql_local)
    spec = TargetSpec("lambda", function=function, endpoint_url=lambda_server.endpoint_url,
                      region="us-east-1")
    result = run_bench(spec, LoadPlan(threads=4, accounts=4, iterations=80, seed=7))
    s = result.summary
    assert s.transfers == 80 and s.successes + s.failures == 80
    assert s.successes > 0
    assert s.other_failures == 0, result.stats.examples
    # The handlers report their own transaction time; the bench keeps it apart.
    assert s.server_latency is not None and s.server_latency.count == s.successes
    assert s.latency is not None and s.latency.p50 >= s.server_latency.p50 * 0.5
    if function == "ch05":
        # Chapter 5 retries inside the function: no conflict reaches the caller, and the
        # attempts it reports are aggregated.
        assert s.conflict_failures == 0
        assert s.total_conflicts_seen == s.retries
    assert result.balances is None and result.config.target == "lambda"
    assert validate(json.loads(json.dumps(result.to_dict()))) == []
    assert total(dsql_local) == before


def test_errors_come_back_classified(dsql_local: LocalDSQL, lambda_server: Any,
                                     aws_env: None) -> None:
    # Only accounts 1..2 exist: transfers to 3..5 fail with "Payee account not found" and
    # those from them are refused too, all as function errors with the handler's message.
    setup_accounts(TargetSpec("direct", conn=dsql_local.url(),
                              credentials=dsql_local.credentials), 2)
    spec = TargetSpec("lambda", function="ch04", endpoint_url=lambda_server.endpoint_url,
                      region="us-east-1")
    result = run_bench(spec, LoadPlan(threads=2, accounts=5, iterations=40, seed=1))
    s = result.summary
    assert s.transfers == 40 and s.other_failures > 0
    examples = " ".join(result.stats.examples[Outcome.OTHER])
    assert "not found" in examples


def test_cli_function_target(dsql_local: LocalDSQL, lambda_server: Any, tmp_path: Path) -> None:
    setup_accounts(TargetSpec("direct", conn=dsql_local.url(),
                              credentials=dsql_local.credentials), 1000)
    out = tmp_path / "ch05.json"
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "bench-test",
           "AWS_SECRET_ACCESS_KEY": "bench-test", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "dsqlkit", "bench", "transfer", "--function", "ch05",
         "--endpoint-url", lambda_server.endpoint_url, "--iters", "30", "--threads", "3",
         "--accounts", "10", "--json", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ch05" in proc.stdout and "In function" in proc.stdout
    doc = json.loads(out.read_text())
    assert validate(doc) == [] and doc["summary"]["transfers"] == 30
    assert doc["config"]["target"] == "lambda" and doc["balances"] is None
