"""``dsqlkit lambda serve`` as a user runs it, driven by ``aws lambda invoke --endpoint-url``:
the DAT401 functions against the bank's local endpoint, configured with an --env-file."""

from __future__ import annotations

import base64
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dat401_support import EXAMPLES, function_env

from dsqlkit.local import LocalDSQL

AWS = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")


@pytest.fixture(scope="module")
def cli_server(bank_endpoint: LocalDSQL, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("cli")
    env_file = tmp / "endpoint.env"
    env_file.write_text("# as dsqlkit local prints them\n" + "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in function_env(bank_endpoint).items()))
    log = tmp / "server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsqlkit", "lambda", "serve", "--functions", str(EXAMPLES),
             "--port", "0", "--json", "--env-file", str(env_file), "--no-inherit-env",
             "--concurrency", "2"],
            stdout=subprocess.PIPE, stderr=log_file,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "dsqlkit lambda serve did not start"
            info = json.loads(proc.stdout.readline())
            assert info["functions"] == ["ch01", "ch03", "ch04", "ch05"]
            yield info["endpoint_url"], log
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0


def aws_invoke(url: str, tmp_path: Path, function: str, payload: Any,
               *extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    if AWS is None:
        pytest.skip("the AWS CLI is not installed: pip install -e '.[aws]' (.ci/run does)")
    out = tmp_path / f"{function}.json"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    run = subprocess.run(
        [AWS, "lambda", "invoke", "--endpoint-url", url, "--function-name", function,
         "--payload", json.dumps(payload), *extra, str(out)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    body = json.loads(out.read_text()) if out.exists() else None
    return run, body


def test_aws_cli_invokes_the_dat401_functions(cli_server: tuple[str, Path],
                                              tmp_path: Path, fresh_accounts: None) -> None:
    url, log = cli_server
    run, body = aws_invoke(url, tmp_path, "ch01", {"name": "cli"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    assert body == {"greeting": "hello cli"}

    run, body = aws_invoke(url, tmp_path, "ch04", {"payer_id": 31, "payee_id": 32,
                                                   "amount": 2.5})
    assert run.returncode == 0, run.stderr
    assert body["payer_balance"] == "97.5"

    run, body = aws_invoke(url, tmp_path, "ch03", {"id": 31}, "--log-type", "Tail")
    assert body == {"balance": "97.5"}
    output = json.loads(run.stdout)
    tail = base64.b64decode(output["LogResult"]).decode()
    assert "START RequestId:" in tail and "REPORT RequestId:" in tail

    # A function error: exit status 0, flagged in the output, the error in the file.
    run, body = aws_invoke(url, tmp_path, "ch03", {"id": 99999})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["FunctionError"] == "Unhandled"
    assert (body["errorType"], body["errorMessage"]) == ("AccountNotFound", "Account not found")

    run, _ = aws_invoke(url, tmp_path, "ch99", {})
    assert run.returncode != 0
    assert "ResourceNotFoundException" in run.stderr

    # Function output reaches the server's log, one line per REPORT.
    assert "[ch03] REPORT RequestId:" in log.read_text()


def test_cli_usage_errors(tmp_path: Path) -> None:
    def dsqlkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dsqlkit", *args], capture_output=True,
                              text=True, timeout=60)

    run = dsqlkit("lambda", "serve", "--functions", str(tmp_path), "--port", "0")
    assert run.returncode == 1
    assert "no functions to serve" in run.stderr
    run = dsqlkit("lambda", "serve", "--functions", str(EXAMPLES), "--env", "NOT_SET_ANYWHERE",
                  "--port", "0")
    assert run.returncode == 1
    assert "NOT_SET_ANYWHERE: not set" in run.stderr
    run = dsqlkit("lambda")
    assert run.returncode == 2
