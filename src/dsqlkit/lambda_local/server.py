"""The Lambda Invoke API over HTTP, for boto3's ``lambda`` client and ``aws lambda invoke``.

Routes (REST-JSON, API version 2015-03-31, as the SDKs call them):

* ``POST /2015-03-31/functions/{FunctionName}/invocations`` -- Invoke. ``X-Amz-Invocation-Type``
  ``RequestResponse`` (default: 200 with the function's JSON), ``Event`` (202, runs in the
  background), ``DryRun`` (204). ``X-Amz-Log-Type: Tail`` adds ``X-Amz-Log-Result`` (the
  last 4 KB of the log, base64). A function error is still HTTP 200, flagged with
  ``X-Amz-Function-Error: Unhandled``; the body is ``{"errorMessage", "errorType",
  "requestId", "stackTrace"}``.
* ``GET /2015-03-31/functions/`` and ``GET /2015-03-31/functions/{FunctionName}`` --
  ListFunctions and GetFunction (configuration only), so ``aws lambda list-functions`` works.

``FunctionName`` may be a name, ``name:$LATEST``, a partial ARN (``123456789012:function:name``)
or a full ARN. Service errors are answered as Lambda answers them: the status, an
``x-amzn-ErrorType`` header and a JSON body with ``Type`` and ``message``, e.g. 404
``ResourceNotFoundException``, 400 ``InvalidRequestContentException`` (payload is not JSON),
413 ``RequestEntityTooLargeException`` (payload over 6 MB), 429 ``TooManyRequestsException``.
Requests are not authenticated: any SigV4 signature (or none) is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dsqlkit.errors import ConfigError
from dsqlkit.lambda_local.environment import (
    FunctionEnvironments,
    LogSink,
    Outcome,
    Throttled,
    _package_parent,
    _request_id,
    log_stream_name,
)
from dsqlkit.lambda_local.functions import FunctionSpec, discover, parse_spec

logger = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"
# Lambda's limit on a synchronous request payload.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# Bodies a little over the limit are read and discarded so the client, still sending, sees
# the 413 instead of a reset connection; far bigger ones are cut off.
_DRAIN_LIMIT = 64 * 1024 * 1024
# Lambda's limit on X-Amz-Client-Context (base64 text).
MAX_CLIENT_CONTEXT = 3583

_API = "/2015-03-31/functions"
_INVOKE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
_FUNCTION = re.compile(r"^/2015-03-31/functions/([^/]+)/?$")
_ARN = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?(?:function:)?"
    r"([A-Za-z0-9_-]{1,64})(?::(\$LATEST|[A-Za-z0-9_-]+))?$"
)

# What an environment inherits from the server's environment when inherit_env is on: the AWS
# credentials and configuration a Lambda would get from its execution role, and what a
# process needs to run at all.
_INHERITED = (
    "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
)


class _ServiceError(Exception):
    def __init__(self, status: int, error_type: str, message: str,
                 extra: Mapping[str, Any] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = dict(extra or {})
        self.close = close


def _not_found(arn: str) -> _ServiceError:
    return _ServiceError(404, "ResourceNotFoundException", f"Function not found: {arn}")


class LambdaServer:
    """A local Lambda Invoke API endpoint serving Python handlers.

    >>> with LambdaServer("examples/dat401", env={"CLUSTER_ENDPOINT": "..."}) as srv:
    ...     boto3.client("lambda", endpoint_url=srv.endpoint_url).invoke(FunctionName="ch01")

    ``functions_dir``: each subdirectory with ``handler.py`` is a function named after it
    (see :func:`~dsqlkit.lambda_local.functions.discover`); ``functions``: more, as
    :class:`FunctionSpec` or ``"name=path/to/module.handler"`` strings (these win on a name
    clash). ``env``: variables every environment gets, after Lambda's own and (with
    ``inherit_env``) the server's AWS credentials and configuration. ``concurrency``: the
    most environments one function runs at once; ``on_throttle`` decides what happens to an
    invocation beyond it: ``"queue"`` waits up to ``queue_timeout`` seconds for an idle one,
    ``"reject"`` answers 429 ``TooManyRequestsException`` at once, as Lambda does when a
    function's reserved concurrency is used up. ``freeze`` stops environments between
    invocations, as Lambda does. ``log`` receives each environment's output and REPORT lines.
    """

    def __init__(
        self,
        functions_dir: str | os.PathLike[str] | None = None,
        *,
        functions: Iterable[FunctionSpec | str] = (),
        env: Mapping[str, str] | None = None,
        concurrency: int = 10,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str | None = None,
        timeout: float | None = None,
        memory_mb: int | None = None,
        on_throttle: str = "queue",
        queue_timeout: float = 60.0,
        freeze: bool = True,
        inherit_env: bool = True,
        log: LogSink | None = None,
    ) -> None:
        specs: dict[str, FunctionSpec] = {}
        if functions_dir is not None:
            for spec in discover(functions_dir):
                specs[spec.name] = spec
        for item in functions:
            spec = item if isinstance(item, FunctionSpec) else parse_spec(item, functions_dir)
            specs[spec.name] = spec
        if timeout is not None or memory_mb is not None:
            specs = {name: FunctionSpec(
                s.name, s.code_root, s.handler,
                timeout=timeout if timeout is not None else s.timeout,
                memory_mb=memory_mb if memory_mb is not None else s.memory_mb, env=s.env,
            ) for name, s in specs.items()}
        if not specs:
            where = f" in {functions_dir}" if functions_dir is not None else ""
            raise ConfigError(f"no functions to serve{where}: a function is a subdirectory "
                              "with handler.py (def handler(event, context)), or pass "
                              "NAME=path/to/module.handler")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        if on_throttle not in ("queue", "reject"):
            raise ConfigError(f"on_throttle must be 'queue' or 'reject', not {on_throttle!r}")
        self.specs = specs
        self.env = dict(env or {})
        self.concurrency = concurrency
        self.host = host
        self.requested_port = port
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or "us-east-1"
        self.on_throttle = on_throttle
        self.queue_timeout = queue_timeout
        self.freeze = freeze
        self.inherit_env = inherit_env
        self.log = log
        self.pools: dict[str, FunctionEnvironments] = {
            name: FunctionEnvironments(
                spec, lambda spec=spec: self.environment_for(spec),  # type: ignore[misc]
                concurrency=concurrency, on_throttle=on_throttle,
                queue_timeout=queue_timeout, sink=log, freeze=freeze)
            for name, spec in specs.items()
        }
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._background: set[threading.Thread] = set()

    # -- identity -------------------------------------------------------------------------

    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return int(self._httpd.server_address[1])

    @property
    def endpoint_url(self) -> str:
        """The URL to pass as ``endpoint_url=`` (boto3) or ``--endpoint-url`` (AWS CLI)."""
        host = self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def environment_for(self, spec: FunctionSpec) -> dict[str, str]:
        """The environment variables of a new execution environment of ``spec``."""
        environ: dict[str, str] = {}
        if self.inherit_env:
            environ.update({k: os.environ[k] for k in _INHERITED if k in os.environ})
        environ.setdefault("PATH", os.defpath)
        environ.setdefault("LANG", "C.UTF-8")
        python_path = [str(spec.code_root), _package_parent()]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        environ.update({
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}",
            "LAMBDA_TASK_ROOT": str(spec.code_root),
            "LAMBDA_RUNTIME_DIR": str(Path(_package_parent()) / "dsqlkit" / "lambda_local"),
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
            "TZ": ":UTC",
        })
        environ.update(self.env)
        environ.update(spec.env)
        return environ

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LambdaServer:
        if self._httpd is not None:
            return self
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), handler)
        self._httpd.daemon_threads = True
        # A short poll interval: stop() waits for the loop to notice, up to one interval.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True, name="dsqlkit-lambda-http")
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        for pool in self.pools.values():
            pool.close()
        for t in list(self._background):
            t.join(5)

    def serve_forever(self) -> None:
        """Block until interrupted (what ``dsqlkit lambda serve`` does)."""
        assert self._thread is not None, "start() the server first"
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> LambdaServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per function: ``invocations``, ``cold_starts``, ``environments_started``,
        ``environments`` (alive now), ``busy``, ``peak_concurrency``, ``function_errors``,
        ``throttles``, ``queued``, ``init_errors``."""
        return {name: pool.snapshot() for name, pool in self.pools.items()}

    # -- the API --------------------------------------------------------------------------

    def resolve(self, raw_name: str, qualifier: str | None) -> FunctionSpec:
        name = unquote(raw_name)
        m = _ARN.match(name)
        if m is None:
            raise _ServiceError(
                400, "ValidationException",
                f"1 validation error detected: Value '{name}' at 'functionName' failed to "
                "satisfy constraint: Member must satisfy regular expression pattern: "
                r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?"
                r"(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?")
        fname, in_name = m.group(1), m.group(2)
        if in_name and qualifier and in_name != qualifier:
            raise _ServiceError(400, "InvalidParameterValueException",
                                "The derived qualifier from the function name does not match "
                                "the specified qualifier.")
        qualifier = qualifier or in_name
        spec = self.specs.get(fname)
        if spec is None or (qualifier is not None and qualifier != "$LATEST"):
            arn = self.arn(fname) + (f":{qualifier}" if qualifier else "")
            raise _not_found(arn)
        return spec

    def configuration(self, spec: FunctionSpec) -> dict[str, Any]:
        return {
            "FunctionName": spec.name,
            "FunctionArn": self.arn(spec.name),
            "Runtime": f"python{sys.version_info[0]}.{sys.version_info[1]}",
            "Role": f"arn:aws:iam::{ACCOUNT_ID}:role/dsqlkit-lambda-local",
            "Handler": spec.handler,
            "Timeout": int(spec.timeout),
            "MemorySize": spec.memory_mb,
            "Version": "$LATEST",
            "PackageType": "Zip",
            "State": "Active",
            "Architectures": ["x86_64"],
            "Environment": {"Variables": dict(sorted({**self.env, **spec.env}.items()))},
        }

    def invoke(self, spec: FunctionSpec, payload: str, client_context: Any) -> Outcome:
        return self.pools[spec.name].invoke(payload, self.arn(spec.name), client_context)

    def invoke_event(self, spec: FunctionSpec, payload: str, client_context: Any) -> None:
        def run() -> None:
            try:
                outcome = self.invoke(spec, payload, client_context)
                if outcome.function_error and self.log is not None:
                    self.log(spec.name, f"async invocation {outcome.request_id} failed: "
                             f"{outcome.body.decode(errors='replace')}\n")
            except Throttled:
                logger.warning("dropped an asynchronous invocation of %s: throttled",
                               spec.name)
            finally:
                self._background.discard(threading.current_thread())

        t = threading.Thread(target=run, daemon=True, name=f"lambda-{spec.name}-event")
        self._background.add(t)
        t.start()


def _decode_client_context(value: str | None) -> Any:
    if value is None:
        return None
    if len(value) > MAX_CLIENT_CONTEXT:
        raise _ServiceError(400, "InvalidRequestContentException",
                            f"Client context must be no longer than {MAX_CLIENT_CONTEXT} "
                            "bytes.")
    try:
        return json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        raise _ServiceError(400, "InvalidRequestContentException",
                            "Client context must be a valid Base64-encoded JSON object.")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Unrecognized token '{name}'")


def parse_payload(body: bytes) -> str:
    """The payload as JSON text ("{}" when empty), or InvalidRequestContentException."""
    if not body.strip():
        # Lambda hands an empty payload to the function as an empty object.
        return "{}"
    try:
        text = body.decode("utf-8")
        json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _ServiceError(400, "InvalidRequestContentException",
                            f"Could not parse request body into json: Could not parse "
                            f"payload into json: {exc}") from None
    return text


class _Handler(BaseHTTPRequestHandler):
    app: LambdaServer
    protocol_version = "HTTP/1.1"
    server_version = "dsqlkit-lambda"
    sys_version = ""
    # Seconds a connection may sit idle (or dribble a request) before it is closed.
    timeout = 120
    # Headers and body go out in separate writes; with Nagle's algorithm the body waits for
    # the client's delayed ACK, adding ~40 ms to every warm invocation.
    disable_nagle_algorithm = True

    # -- plumbing -------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None,
              content_type: str | None = "application/json") -> None:
        self.send_response(status)
        if content_type is not None and body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_service_error(self, error: _ServiceError) -> None:
        if error.close:
            self.close_connection = True
        body: dict[str, Any] = {"Type": "User", "message": error.message, **error.extra}
        self._send(error.status, json.dumps(body).encode(), {
            "x-amzn-ErrorType": error.error_type,
            "x-amzn-RequestId": _request_id(),
        })

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # Malformed HTTP (bad request line, oversized headers, unsupported method): answer
        # in the service's JSON error format and close, as the request cannot be trusted.
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # An unparsable request line leaves the default HTTP/0.9, which would make
            # http.server omit the status line and headers: answer as HTTP/1.1 instead.
            self.request_version = "HTTP/1.1"
        error_type = {404: "UnknownOperationException", 405: "UnknownOperationException",
                      501: "UnknownOperationException", 413: "RequestEntityTooLargeException",
                      }.get(code, "InvalidRequestException" if code < 500 else
                            "ServiceException")
        text = message or explain or "malformed request"
        try:
            self._send_service_error(_ServiceError(code, error_type, text, close=True))
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit():
            raise _ServiceError(400, "InvalidRequestException",
                                f"invalid Content-Length {raw[:40]!r}", close=True)
        length = int(raw)
        if length > MAX_REQUEST_BYTES:
            self._drain(length)
            raise self._too_large()
        return self._read_exact(length)

    def _too_large(self) -> _ServiceError:
        return _ServiceError(413, "RequestEntityTooLargeException",
                             f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for "
                             "the InvokeFunction operation")

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise _ServiceError(400, "InvalidRequestException",
                                "the request body ended before Content-Length bytes",
                                close=True)
        return data

    def _drain(self, length: int) -> None:
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ServiceError(400, "InvalidRequestException", "malformed chunked body",
                                    close=True) from None
            if size == 0:
                # Trailers, up to the blank line.
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_REQUEST_BYTES:
                self.close_connection = True
                raise self._too_large()
            parts.append(self._read_exact(size))
            self.rfile.readline(1024)

    def _query(self) -> dict[str, str]:
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        return {k: v[-1] for k, v in query.items()}

    # -- methods --------------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            path = urlsplit(self.path).path
            m = _INVOKE.match(path)
            if m is None:
                self._read_body()
                raise _ServiceError(404, "UnknownOperationException", "Unknown operation "
                                    f"POST {path[:200]}")
            self._invoke(m.group(1))
        except _ServiceError as exc:
            self._send_service_error(exc)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug here must not take the connection down silently
            logger.exception("internal error serving %s", self.path[:200])
            self.close_connection = True
            self._send_service_error(_ServiceError(500, "ServiceException",
                                                   f"internal error: {type(exc).__name__}"))

    def do_GET(self) -> None:
        try:
            path = urlsplit(self.path).path
            if path.rstrip("/") == _API:
                functions = [self.app.configuration(s) for s in self.app.specs.values()]
                self._send(200, json.dumps({"Functions": functions}).encode())
                return
            m = _FUNCTION.match(path)
            if m is None:
                raise _ServiceError(404, "UnknownOperationException",
                                    f"Unknown operation GET {path[:200]}")
            spec = self.app.resolve(m.group(1), self._query().get("Qualifier"))
            self._send(200, json.dumps({"Configuration": self.app.configuration(spec)}).encode())
        except _ServiceError as exc:
            self._send_service_error(exc)

    def _invoke(self, raw_name: str) -> None:
        query = self._query()
        # Resolve before reading: an unknown function is a 404 whatever the body holds, but
        # the body must still be consumed to keep the connection usable.
        try:
            spec = self.app.resolve(raw_name, query.get("Qualifier"))
        except _ServiceError:
            self._read_body()
            raise
        body = self._read_body()
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            raise _ServiceError(400, "InvalidParameterValueException",
                                f"Unsupported invocation type: {invocation_type[:50]}")
        log_type = self.headers.get("X-Amz-Log-Type", "None")
        if log_type not in ("None", "Tail"):
            raise _ServiceError(400, "InvalidParameterValueException",
                                f"Unsupported log type: {log_type[:50]}")
        client_context = _decode_client_context(self.headers.get("X-Amz-Client-Context"))
        payload = parse_payload(body)
        if invocation_type == "DryRun":
            self._send(204, b"", {"x-amzn-RequestId": _request_id()})
            return
        if invocation_type == "Event":
            self.app.invoke_event(spec, payload, client_context)
            self._send(202, b"", {"x-amzn-RequestId": _request_id()})
            return
        started = time.perf_counter()
        try:
            outcome = self.app.invoke(spec, payload, client_context)
        except Throttled:
            raise _ServiceError(429, "TooManyRequestsException", "Rate Exceeded.",
                                {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"})
        logger.debug("invoked %s in %.1f ms (cold=%s, error=%s)", spec.name,
                     (time.perf_counter() - started) * 1000, outcome.cold,
                     outcome.function_error)
        if self.app.log is not None:
            report = outcome.log.rstrip("\n").rsplit("\n", 1)[-1]
            self.app.log(spec.name, report + "\n")
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": outcome.request_id,
                   "x-amzn-Remapped-Content-Length": "0"}
        if outcome.function_error:
            headers["X-Amz-Function-Error"] = outcome.function_error
        if log_type == "Tail":
            headers["X-Amz-Log-Result"] = outcome.log_tail()
        self._send(200, outcome.body, headers)
