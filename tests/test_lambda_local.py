"""``dsqlkit.lambda_local``: the Lambda Invoke API as boto3 sees it, the execution-environment
model (isolation, reuse, freezing, concurrency), the runtime's error contract, and hostile HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from clock_support import settles
from dsqlkit.errors import ConfigError
from dsqlkit.lambda_local import FunctionSpec, LambdaServer, discover, parse_spec

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

HANDLERS = {
    "echo/handler.py": """
        import json, logging, os, threading, time
        import shared

        COUNT = 0
        TICKS = 0

        def _tick():
            global TICKS
            while True:
                TICKS += 1
                time.sleep(0.01)

        threading.Thread(target=_tick, daemon=True).start()

        def handler(event, context):
            global COUNT
            COUNT += 1
            print("event:", json.dumps(event))
            logging.getLogger().warning("a warning")
            if isinstance(event, dict) and event.get("sleep"):
                time.sleep(event["sleep"])
            if isinstance(event, dict) and event.get("touch"):
                open(event["touch"], "w").write(context.aws_request_id)
            names = ("GREETING", "ONLY_HERE", "AWS_LAMBDA_FUNCTION_NAME", "AWS_REGION",
                     "AWS_ACCESS_KEY_ID", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_VERSION")
            return {
                "event": event, "pid": os.getpid(), "count": COUNT, "ticks": TICKS,
                "shared": shared.VALUE, "cwd": os.getcwd(),
                "name": context.function_name, "arn": context.invoked_function_arn,
                "version": context.function_version, "memory": context.memory_limit_in_mb,
                "remaining": context.get_remaining_time_in_millis(),
                "request_id": context.aws_request_id,
                "client_context": context.client_context and {
                    "custom": context.client_context.custom, "env": context.client_context.env,
                    "installation_id": context.client_context.client.installation_id,
                },
                "identity": context.identity.cognito_identity_id,
                "log_group": context.log_group_name,
                "env": {k: os.environ.get(k) for k in names},
            }
    """,
    "shared.py": "VALUE = 'from the code root'\n",
    "fail/handler.py": """
        class BankruptError(Exception):
            pass

        def handler(event, context):
            print("about to fail")
            raise BankruptError("no money left")
    """,
    "chatty/handler.py": """
        def handler(event, context):
            for i in range(event["lines"]):
                print(f"{i:06d} " + "x" * 1000)
            return "done"
    """,
    "size/handler.py": """
        def handler(event, context):
            return {"length": len(event["data"])}
    """,
    "big/handler.py": """
        def handler(event, context):
            return "x" * 7_000_000
    """,
    "slow/handler.py": """
        import os, time

        def handler(event, context):
            if event.get("gate"):  # busy until the test opens the gate (creates the file)
                while not os.path.exists(event["gate"]):
                    time.sleep(0.002)
            time.sleep(event.get("seconds", 0))
            return {"pid": os.getpid()}
    """,
    "crash/handler.py": """
        import os

        def handler(event, context):
            if event.get("crash"):
                os._exit(3)
            return {"pid": os.getpid()}
    """,
    "badresult/handler.py": """
        from decimal import Decimal

        def handler(event, context):
            if event.get("decimal"):
                return {"value": Decimal("1.5")}
            return {1, 2}
    """,
    "badimport/handler.py": "import nonexistent_module_for_test\n",
    "sys/handler.py": "def handler(event, context):\n    return 1\n",
    "nohandler/handler.py": "def other(event, context):\n    return 1\n",
    "syntax/handler.py": "def handler(event, context:\n    return 1\n",
    "initfail/handler.py": "raise RuntimeError('init failed')\n",
    "console/lambda_function.py": """
        def lambda_handler(event, context):
            return "console style"
    """,
    "notafunction/README.txt": "no handler here\n",
    "_private/handler.py": "def handler(event, context):\n    return 1\n",
}


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    for name, source in HANDLERS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    return root


def client_for(url: str) -> Any:
    return boto3.client(
        "lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=30,
                      max_pool_connections=10),
    )


@pytest.fixture(scope="module")
def server(functions_dir: Path) -> Iterator[LambdaServer]:
    slow = FunctionSpec("slow", functions_dir, "slow.handler.handler", timeout=1.0)
    echo2 = FunctionSpec("echo2", functions_dir, "echo.handler.handler",
                         env={"ONLY_HERE": "yes"})
    with LambdaServer(functions_dir, functions=[slow, echo2], env={"GREETING": "hi"},
                      concurrency=3, region="eu-west-1", inherit_env=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LambdaServer) -> Any:
    return client_for(server.endpoint_url)


def call(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict[str, Any],
                                                                              Any]:
    if payload is not None:
        kwargs["Payload"] = payload if isinstance(payload, bytes) else json.dumps(payload)
    response = client.invoke(FunctionName=name, **kwargs)
    raw = response["Payload"].read()
    return response, (json.loads(raw) if raw else None)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return (exc.value.response["Error"]["Code"],
            exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


# -- discovery -----------------------------------------------------------------------------------


def test_discovery(functions_dir: Path) -> None:
    specs = {s.name: s for s in discover(functions_dir)}
    assert set(specs) == {"echo", "fail", "size", "chatty", "big", "slow", "crash", "badresult",
                          "badimport", "sys", "nohandler", "syntax", "initfail", "console"}
    assert specs["echo"].handler == "echo.handler.handler"
    assert specs["echo"].code_root == functions_dir.resolve()
    assert specs["console"].handler == "console.lambda_function.lambda_handler"


def test_function_specs(functions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(functions_dir.parent)
    rel = f"{functions_dir.name}/echo/handler.handler"
    inside = parse_spec(f"e={rel}", functions_dir)
    assert (inside.code_root, inside.handler) == (functions_dir.resolve(),
                                                  "echo.handler.handler")
    alone = parse_spec(f"e={rel}")
    assert (alone.code_root, alone.handler) == ((functions_dir / "echo").resolve(),
                                                "handler.handler")
    assert parse_spec(f"e={functions_dir}/shared.VALUE").handler == "shared.VALUE"
    for bad in ("noequals", "=x.y", "bad name=x.handler", f"e={rel[:-8]}",
                f"e={functions_dir}/missing.handler", "e=handler"):
        with pytest.raises(ConfigError):
            parse_spec(bad, functions_dir)
    with pytest.raises(ConfigError, match="no functions"):
        LambdaServer(functions_dir / "notafunction")


# -- invoking ------------------------------------------------------------------------------------


def test_invoke_returns_the_result_and_the_lambda_context(client: Any,
                                                          functions_dir: Path) -> None:
    response, body = call(client, "echo", {"a": [1, "two"]})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["event"] == {"a": [1, "two"]}
    assert body["name"] == "echo"
    assert body["arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:echo"
    assert body["version"] == "$LATEST"
    assert body["memory"] == "512"
    assert body["log_group"] == "/aws/lambda/echo"
    assert 25_000 < body["remaining"] <= 30_000
    assert body["request_id"] == response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    # Lambda's working directory and first sys.path entry: the code root.
    assert body["shared"] == "from the code root"
    assert body["cwd"] == str(functions_dir.resolve())
    assert body["env"] == {
        "GREETING": "hi", "ONLY_HERE": None, "AWS_LAMBDA_FUNCTION_NAME": "echo",
        "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": None,
        "LAMBDA_TASK_ROOT": str(functions_dir.resolve()), "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    }
    _, other = call(client, "echo2", {})
    assert other["env"]["ONLY_HERE"] == "yes"
    assert other["pid"] != body["pid"]  # another function, another environment


def test_names_qualifiers_and_arns(client: Any) -> None:
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:echo"
    for name, qualifier in (("echo", "$LATEST"), ("echo:$LATEST", None), (arn, None),
                            ("123456789012:function:echo", None)):
        kwargs = {"Qualifier": qualifier} if qualifier else {}
        _, body = call(client, name, {}, **kwargs)
        assert body["name"] == "echo"
    with pytest.raises(ClientError) as exc:
        call(client, "echo", {}, Qualifier="1")
    assert error_code(exc) == ("ResourceNotFoundException", 404)
    assert exc.value.response["Error"]["Message"] == f"Function not found: {arn}:1"


def test_unknown_function(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as exc:
        call(client, "nope", {"x": 1})
    assert exc.value.response["Error"]["Message"] == (
        "Function not found: arn:aws:lambda:eu-west-1:123456789012:function:nope")
    with pytest.raises(ClientError) as bad:
        call(client, "bad name!", {})
    assert error_code(bad)[1] == 400


def _stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc), as a frozen one is."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_environment_is_reused_and_frozen_between_invocations(client: Any) -> None:
    _, first = call(client, "echo", {})
    # Frozen before the answer is sent: SIGSTOP reaches it at once. A stopped process runs
    # none of its threads (its ticker included) however long it stays so: the kernel's
    # state says it, no stretch of real time needs to be waited out.
    settles(lambda: _stopped(first["pid"]), "the environment to stop")
    _, second = call(client, "echo", {})
    assert second["pid"] == first["pid"]
    assert second["count"] == first["count"] + 1
    settles(lambda: _stopped(first["pid"]), "the environment to stop again")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_unfrozen_environments_keep_running(functions_dir: Path) -> None:
    with LambdaServer(functions_dir, freeze=False, inherit_env=False) as srv:
        c = client_for(srv.endpoint_url)
        _, first = call(c, "echo", {})
        assert not _stopped(first["pid"])  # a frozen one is stopped before it answers
        # Its ticker runs between invocations: ask until it has ticked (no fixed wait).
        latest = [first]

        def ticked() -> bool:
            latest[0] = call(c, "echo", {})[1]
            return bool(latest[0]["ticks"] - first["ticks"] >= 10)

        settles(ticked, "the unfrozen environment's ticker to run")
        assert latest[0]["pid"] == first["pid"]
        assert not _stopped(first["pid"])


def test_log_tail(client: Any, server: LambdaServer) -> None:
    cold = server.stats()["fail"]["environments_started"] == 0
    response, _ = call(client, "fail", {}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    request_id = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    assert log.startswith(f"START RequestId: {request_id} Version: $LATEST\n")
    assert "about to fail\n" in log
    assert "[ERROR] BankruptError: no money left" in log
    assert f"END RequestId: {request_id}\n" in log
    assert f"REPORT RequestId: {request_id}\tDuration: " in log
    assert ("Init Duration" in log) == cold
    response, _ = call(client, "fail", {}, LogType="Tail")
    assert "Init Duration" not in base64.b64decode(response["LogResult"]).decode()
    response, _ = call(client, "echo", {})
    assert "LogResult" not in response
    response, _ = call(client, "echo", {"p": "x" * 10_000}, LogType="Tail")
    assert len(base64.b64decode(response["LogResult"])) <= 4096


def test_a_handler_printing_megabytes(client: Any) -> None:
    response, body = call(client, "chatty", {"lines": 3000}, LogType="Tail")
    assert body == "done"
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "002999 xxx" in tail and "REPORT RequestId" in tail


def test_function_error(client: Any) -> None:
    response, body = call(client, "fail", {})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "BankruptError"
    assert body["errorMessage"] == "no money left"
    assert body["requestId"] == response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    assert len(body["stackTrace"]) == 1
    assert body["stackTrace"][0].startswith('  File "') and "fail/handler.py" in \
        body["stackTrace"][0]


@pytest.mark.parametrize(("name", "error_type", "message"), [
    ("badimport", "Runtime.ImportModuleError",
     "Unable to import module 'badimport.handler': No module named "
     "'nonexistent_module_for_test'"),
    ("nohandler", "Runtime.HandlerNotFound",
     "Handler 'handler' missing on module 'nohandler.handler'"),
    ("syntax", "Runtime.UserCodeSyntaxError", None),
    ("initfail", "RuntimeError", "init failed"),
    ("sys", "Runtime.BuiltInModuleConflict",
     "Cannot use built-in module sys.handler as a handler module"),
    ("badresult", "Runtime.MarshalError",
     "Unable to marshal response: Object of type set is not JSON serializable"),
    ("big", "Function.ResponseSizeTooLarge",
     "Response payload size exceeded maximum allowed payload size (6291556 bytes)."),
])
def test_runtime_errors(client: Any, name: str, error_type: str, message: str | None) -> None:
    response, body = call(client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == error_type
    if message is not None:
        assert body["errorMessage"] == message


def test_decimal_results_marshal_as_numbers(client: Any) -> None:
    assert call(client, "badresult", {"decimal": True})[1] == {"value": 1.5}
    assert call(client, "console", {})[1] == "console style"


def test_timeout_and_crash_replace_the_environment(client: Any, server: LambdaServer) -> None:
    _, before = call(client, "slow", {})
    started = time.monotonic()
    # The function's 1 s timeout runs on the real clock (a deadline on the environment's
    # pipe): the handler would run for a minute, and the timeout, not the handler, ends it.
    response, body = call(client, "slow", {"seconds": 60})
    assert time.monotonic() - started < 25
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"].endswith("Error: Task timed out after 1.00 seconds")
    _, after = call(client, "slow", {})
    assert after["pid"] != before["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(before["pid"], 0)

    _, alive = call(client, "crash", {})
    response, body = call(client, "crash", {"crash": True})
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: exit status 3")
    _, again = call(client, "crash", {})
    assert again["pid"] != alive["pid"]


def test_payloads(client: Any) -> None:
    assert call(client, "echo")[1]["event"] == {}  # no payload: an empty object
    assert call(client, "echo", b"  ")[1]["event"] == {}
    assert call(client, "echo", b"[1, 2.5, null]")[1]["event"] == [1, 2.5, None]
    assert call(client, "echo", b'"text"')[1]["event"] == "text"
    for bad in (b"{bad json", b"\xff\xfe", b'{"a": NaN}', b"{} extra"):
        with pytest.raises(ClientError) as exc:
            call(client, "echo", bad)
        assert error_code(exc) == ("InvalidRequestContentException", 400)
        assert exc.value.response["Error"]["Message"].startswith(
            "Could not parse request body into json")
    # 6 MB is Lambda's limit for a synchronous payload, inclusive.
    envelope = len(json.dumps({"data": ""}))
    exact = json.dumps({"data": "x" * (6 * 1024 * 1024 - envelope)}).encode()
    assert len(exact) == 6 * 1024 * 1024
    assert call(client, "size", exact)[1] == {"length": 6 * 1024 * 1024 - envelope}
    with pytest.raises(ClientError) as exc:
        call(client, "size", exact + b" ")
    assert error_code(exc) == ("RequestEntityTooLargeException", 413)


def test_invocation_types(client: Any, tmp_path: Path) -> None:
    response, body = call(client, "echo", {}, InvocationType="DryRun")
    assert (response["StatusCode"], body) == (204, None)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        call(client, "nope", {}, InvocationType="DryRun")
    marker = tmp_path / "event.txt"
    response, body = call(client, "echo", {"touch": str(marker)}, InvocationType="Event")
    assert (response["StatusCode"], body) == (202, None)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()


def test_client_context(client: Any) -> None:
    context = {"custom": {"k": "v"}, "env": {"app": "test"}, "client": {"installation_id": "i"}}
    encoded = base64.b64encode(json.dumps(context).encode()).decode()
    _, body = call(client, "echo", {}, ClientContext=encoded)
    # Objects with attributes, as the AWS runtime gives them.
    assert body["client_context"] == {"custom": {"k": "v"}, "env": {"app": "test"},
                                      "installation_id": "i"}
    _, body = call(client, "echo", {})
    assert (body["client_context"], body["identity"]) == (None, None)
    with pytest.raises(ClientError) as exc:
        call(client, "echo", {}, ClientContext="not base64!")
    assert error_code(exc) == ("InvalidRequestContentException", 400)


def test_list_and_get_functions(client: Any) -> None:
    names = {f["FunctionName"] for f in client.list_functions()["Functions"]}
    assert {"echo", "echo2", "slow", "console"} <= names
    config = client.get_function(FunctionName="slow")["Configuration"]
    assert (config["Handler"], config["Timeout"], config["MemorySize"]) == (
        "slow.handler.handler", 1, 512)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function(FunctionName="nope")


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_invocations_get_their_own_environments(functions_dir: Path,
                                                           tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with LambdaServer(functions_dir, concurrency=2, inherit_env=False) as srv:
        c = client_for(srv.endpoint_url)
        call(c, "slow", {})  # one warm environment to start with

        def busy_and_queued() -> bool:
            stats = srv.stats()["slow"]
            return stats["busy"] == 2 and stats["queued"] >= 2

        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(call, c, "slow", {"gate": str(gate)}) for _ in range(4)]
            try:
                # Two run, held at the gate; the third and fourth wait for an idle one.
                settles(busy_and_queued, "two invocations running and two queued")
            finally:
                gate.touch()
            results = [f.result(timeout=60)[1] for f in calls]
        stats = srv.stats()["slow"]
    pids = {r["pid"] for r in results}
    assert len(pids) == 2  # two at a time, each in its own process, reused for the next two
    assert stats["peak_concurrency"] == 2
    assert stats["environments_started"] == 2
    assert stats["queued"] >= 2


def test_reject_mode_throttles_like_lambda(functions_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with LambdaServer(functions_dir, concurrency=1, on_throttle="reject",
                      inherit_env=False) as srv:
        c = client_for(srv.endpoint_url)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, c, "slow", {"gate": str(gate)})
            try:
                # The only environment is busy (held at the gate): the second call is refused.
                settles(lambda: srv.stats()["slow"]["busy"] == 1, "the first invocation")
                with pytest.raises(ClientError) as refused:
                    call(c, "slow", {})
            finally:
                gate.touch()
            assert first.result(timeout=60)[0]["StatusCode"] == 200
        assert srv.stats()["slow"]["throttles"] == 1
    assert (*error_code_raw(refused.value), refused.value.response.get("Reason")) == (
        "TooManyRequestsException", 429, "ReservedFunctionConcurrentInvocationLimitExceeded")


def error_code_raw(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_environment_variables_and_credentials(functions_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHESHELL")
    monkeypatch.setenv("GREETING", "from the shell")
    with LambdaServer(functions_dir, env={"AWS_REGION": "ap-south-1"}) as srv:
        env = call(client_for(srv.endpoint_url), "echo", {})[1]["env"]
    # AWS credentials pass on, like an execution role's; other variables do not; the
    # configured environment wins over Lambda's defaults.
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAFROMTHESHELL"
    assert env["GREETING"] is None
    assert env["AWS_REGION"] == "ap-south-1"
    with LambdaServer(functions_dir, inherit_env=False) as srv:
        env = call(client_for(srv.endpoint_url), "echo", {})[1]["env"]
    assert env["AWS_ACCESS_KEY_ID"] is None


def test_stop_ends_every_environment(functions_dir: Path) -> None:
    srv = LambdaServer(functions_dir, inherit_env=False).start()
    c = client_for(srv.endpoint_url)
    pids = [call(c, name, {})[1]["pid"] for name in ("echo", "slow", "crash")]
    srv.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- malformed HTTP ------------------------------------------------------------------------------


def raw_request(server: LambdaServer, data: bytes, *, close_write: bool = False
                ) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response: (status, lower-cased headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


INVOKE_ECHO = "/2015-03-31/functions/echo/invocations"


def test_malformed_http(server: LambdaServer) -> None:
    def expect(data: bytes, status: int, error_type: str | None, **kw: Any) -> dict[str, Any]:
        got, headers, body = raw_request(server, data, **kw)
        assert got == status, body
        if error_type is not None:
            assert headers["x-amzn-errortype"] == error_type
            decoded: dict[str, Any] = json.loads(body)
            assert decoded["Type"] == "User" and decoded["message"]
            return decoded
        return {}

    expect(b"GARBAGE\r\n\r\n", 400, "InvalidRequestException")
    expect(b"GET / HTTP/9.9\r\n\r\n", 505, "ServiceException")
    expect(b"PUT " + INVOKE_ECHO.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 501,
           "UnknownOperationException")
    expect(post("/2015-03-31/functions/echo/other", b"{}"), 404, "UnknownOperationException")
    expect(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "UnknownOperationException")
    expect(f"POST {INVOKE_ECHO} HTTP/1.1\r\nContent-Length: ten\r\n\r\n".encode(), 400,
           "InvalidRequestException")
    expect(post(INVOKE_ECHO, b"{}", "X-Amz-Invocation-Type: Sometimes\r\n"), 400,
           "InvalidParameterValueException")
    expect(post(INVOKE_ECHO, b"{}", "X-Amz-Log-Type: Everything\r\n"), 400,
           "InvalidParameterValueException")
    expect(post(INVOKE_ECHO, b"{"), 400, "InvalidRequestContentException")
    headers = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(150))
    expect(post(INVOKE_ECHO, b"{}", headers), 431, "InvalidRequestException")
    expect(f"POST {INVOKE_ECHO} HTTP/1.1\r\nX-Long: {'a' * 70_000}\r\n\r\n".encode(), 431,
           "InvalidRequestException")
    # The body is shorter than announced, and the client stops sending.
    expect(f"POST {INVOKE_ECHO} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{}}".encode(), 400,
           "InvalidRequestException", close_write=True)
    # Over 6 MB: 413, as Lambda answers, after reading the body the client is sending.
    big = b"[" + b"1," * (3 * 1024 * 1024) + b"1]"
    error = expect(post(INVOKE_ECHO, big), 413, "RequestEntityTooLargeException")
    assert error["message"] == ("Request must be smaller than 6291456 bytes for the "
                                "InvokeFunction operation")


def test_chunked_bodies(server: LambdaServer) -> None:
    body = b'{"chunked": true}'
    chunked = (f"POST {INVOKE_ECHO} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"{len(body[:5]):x}\r\n").encode() + body[:5] + \
        f"\r\n{len(body[5:]):x}\r\n".encode() + body[5:] + b"\r\n0\r\n\r\n"
    status, _, reply = raw_request(server, chunked)
    assert status == 200
    assert json.loads(reply)["event"] == {"chunked": True}
    status, headers, _ = raw_request(server, (
        f"POST {INVOKE_ECHO} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").encode())
    assert (status, headers["x-amzn-errortype"]) == (400, "InvalidRequestException")
    huge = (f"POST {INVOKE_ECHO} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{7 * 1024 * 1024:x}\r\n").encode()
    status, headers, _ = raw_request(server, huge)
    assert (status, headers["x-amzn-errortype"]) == (413, "RequestEntityTooLargeException")


def test_keep_alive_and_idle_connections(server: LambdaServer, client: Any) -> None:
    # An idle connection that never sends anything does not block other clients.
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for i in range(3):  # three requests on one connection
                sock.sendall(post(INVOKE_ECHO, json.dumps({"i": i}).encode()))
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += sock.recv(65536)
                assert json.loads(body)["event"] == {"i": i}
    finally:
        idle.close()
    assert call(client, "echo", {"after": "all that"})[1]["event"] == {"after": "all that"}


def test_environments_die_with_a_killed_server(functions_dir: Path) -> None:
    """A server killed without cleanup must not leave frozen (stopped) environments."""
    import select
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "dsqlkit", "lambda", "serve", "--functions", str(functions_dir),
         "--port", "0", "--json", "--quiet", "--no-inherit-env"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 30)[0], "the server did not start"
        url = json.loads(proc.stdout.readline())["endpoint_url"]
        pid = call(client_for(url), "echo", {})[1]["pid"]
        os.kill(pid, 0)  # alive, and frozen between invocations
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"environment {pid} outlived its killed server")
