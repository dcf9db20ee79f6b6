"""The process inside one execution environment: import the handler once, then serve invocations.

Started by the server as ``python -m dsqlkit.lambda_local.runtime IN_FD OUT_FD`` with the
function's environment variables and the code root as working directory (Lambda's
``/var/task``). It behaves like the AWS Python runtime (``awslambdaric``) where a handler can
tell the difference: the module is imported once per environment (the init phase), module
state survives between invocations, the handler gets ``(event, context)`` with the same
``context`` attributes, errors are reported as ``{"errorMessage", "errorType", "requestId",
"stackTrace"}`` with the runtime's own ``Runtime.*`` error types for import and marshalling
failures, ``Decimal`` results marshal as numbers, and ``print``/``logging`` output becomes the
invocation's log (``START``/``END``/``REPORT`` lines included).

Deliberately standard library only: its import time is part of every cold start.
"""

from __future__ import annotations

import decimal
import importlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from dsqlkit.lambda_local.protocol import ChannelClosed, read_frame, write_frame


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")
    cognito_identity_id: str | None
    cognito_identity_pool_id: str | None


class Client:
    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name",
                 "installation_id")


class ClientContext:
    __slots__ = ("client", "custom", "env")
    client: Client | None
    custom: Any
    env: Any


def _from_dict(cls: type[Any], data: Any) -> Any:
    # As awslambdaric builds them: an object per JSON object, missing fields None.
    if not isinstance(data, dict):
        return None
    obj = cls()
    for name in cls.__slots__:
        setattr(obj, name, data.get(name))
    return obj


def client_context_from(data: Any) -> ClientContext | None:
    context: ClientContext | None = _from_dict(ClientContext, data)
    if context is not None:
        context.client = _from_dict(Client, context.client)
    return context


class LambdaContext:
    """The ``context`` argument, with the attributes and method of the AWS runtime's."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_arn: str,
                 client_context: Any = None, identity: Any = None) -> None:
        env = os.environ
        self.aws_request_id = request_id
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = invoked_arn
        # A string in the AWS runtime too (it is read from the environment).
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.client_context = client_context_from(client_context)
        self.identity = _from_dict(CognitoIdentity, identity or {})
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return (f"LambdaContext(aws_request_id={self.aws_request_id!r}, "
                f"function_name={self.function_name!r}, "
                f"invoked_function_arn={self.invoked_function_arn!r})")


class _LogBuffer:
    """One invocation's log, stdout and stderr interleaved as written. Keeps the end only:
    the server needs 4 KB for a log tail, and a handler printing without bound must not grow
    the environment's memory or the frame that carries the log."""

    LIMIT = 256 * 1024

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.recording = False

    def add(self, text: str) -> None:
        if not self.recording:
            return
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.LIMIT:
            kept = "".join(self.parts)[-self.LIMIT:]
            self.parts = [kept]
            self.size = len(kept)

    def take(self) -> str:
        text = "".join(self.parts)[-self.LIMIT:]
        self.parts = []
        self.size = 0
        return text


class _Capture:
    """A text stream that records what the handler writes and passes it on to the real one
    (the server forwards that to its own log), like Lambda sending stdout to CloudWatch."""

    def __init__(self, original: TextIO, buffer: _LogBuffer) -> None:
        self.original = original
        self.buffer = buffer

    def write(self, text: str) -> int:
        self.buffer.add(text)
        try:
            self.original.write(text)
            self.original.flush()
        except (OSError, ValueError):
            pass  # the server stopped reading our output; the log tail still has it
        return len(text)

    def flush(self) -> None:
        try:
            self.original.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _install_logging(stream: TextIO) -> _RequestIdFilter:
    # The AWS runtime puts one handler on the root logger with this format and leaves the
    # level alone (WARNING), so `logger.info` shows only after the function sets a level.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
        "%Y-%m-%dT%H:%M:%S",
    ))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    request_filter = _RequestIdFilter()
    handler.addFilter(request_filter)
    logging.getLogger().addHandler(handler)
    return request_filter


def _stack(tb: TracebackType | None, skip: int) -> list[str]:
    return traceback.format_list(traceback.extract_tb(tb)[skip:])


def _error(message: str, error_type: str, stack: list[str] | None = None,
           request_id: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"errorMessage": message, "errorType": error_type}
    if request_id is not None:
        error["requestId"] = request_id
    error["stackTrace"] = stack or []
    return error


class _InitFault(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["errorMessage"])
        self.error = error


def load_handler(handler: str) -> Callable[[Any, Any], Any]:
    """Import ``module.attr`` (``path/to/module.attr`` too), as the AWS runtime does."""
    modname, dot, attr = handler.rpartition(".")
    if not dot or not modname or not attr:
        raise _InitFault(_error(
            f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
            "Runtime.MalformedHandlerName"))
    if modname.split(".")[0] in sys.builtin_module_names:
        raise _InitFault(_error(
            f"Cannot use built-in module {modname} as a handler module",
            "Runtime.BuiltInModuleConflict"))
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as exc:
        raise _InitFault(_error(f"Unable to import module '{modname}': {exc}",
                                "Runtime.ImportModuleError")) from None
    except SyntaxError as exc:
        raise _InitFault(_error(
            f"Syntax error in module '{modname}': {exc}", "Runtime.UserCodeSyntaxError",
            [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}'])) from None
    except Exception as exc:
        raise _InitFault(_error(str(exc), type(exc).__name__,
                                _stack(exc.__traceback__, 1))) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise _InitFault(_error(f"Handler '{attr}' missing on module '{modname}'",
                                "Runtime.HandlerNotFound"))
    return fn  # type: ignore[no-any-return]


def _to_json(value: Any) -> str:
    def default(obj: object) -> Any:
        # awslambdaric marshals Decimal as a JSON number; so do we.
        if isinstance(obj, decimal.Decimal):
            return float(obj)
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    return json.dumps(value, default=default)


def _max_memory_mb() -> int:
    try:
        import resource

        # ru_maxrss is in KiB on Linux.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except (ImportError, OSError):  # pragma: no cover - not Linux
        return 0


class Runtime:
    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.log = _LogBuffer()
        self.stdout = _Capture(sys.stdout, self.log)
        self.stderr = _Capture(sys.stderr, self.log)
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        self.request_filter = _install_logging(self.stdout)  # type: ignore[arg-type]
        self.handler: Callable[[Any, Any], Any] | None = None
        self.init_ms = 0.0

    def _record(self, on: bool) -> str:
        self.log.recording = on
        return "" if on else self.log.take()

    def init(self, handler: str) -> None:
        self._record(True)
        started = time.perf_counter()
        try:
            self.handler = load_handler(handler)
        except _InitFault as fault:
            self.init_ms = (time.perf_counter() - started) * 1000
            write_frame(self.out_fd, {"type": "init_error", "error": fault.error,
                                      "log": self._record(False), "init_ms": self.init_ms})
            return
        self.init_ms = (time.perf_counter() - started) * 1000
        write_frame(self.out_fd, {"type": "ready", "init_ms": self.init_ms,
                                  "log": self._record(False)})

    def invoke(self, frame: dict[str, Any]) -> None:
        assert self.handler is not None
        request_id = str(frame["request_id"])
        self.request_filter.request_id = request_id
        context = LambdaContext(request_id, int(frame["deadline_ms"]), str(frame["arn"]),
                                frame.get("client_context"))
        self._record(True)
        started = time.perf_counter()
        response: dict[str, Any] = {"type": "result", "request_id": request_id}
        try:
            event = json.loads(frame["payload"])
            result = self.handler(event, context)
        except Exception as exc:
            # What the AWS runtime prints for an unhandled error, so the log shows it too.
            error = _error(str(exc), type(exc).__name__, _stack(exc.__traceback__, 1),
                           request_id)
            print(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n"
                  + "Traceback (most recent call last):\n" + "".join(error["stackTrace"]),
                  end="", file=sys.stderr)
            response["error"] = error
        else:
            try:
                response["body"] = _to_json(result)
            except (TypeError, ValueError) as exc:
                response["error"] = _error(f"Unable to marshal response: {exc}",
                                           "Runtime.MarshalError", [], request_id)
        response["duration_ms"] = (time.perf_counter() - started) * 1000
        response["max_memory_mb"] = _max_memory_mb()
        response["log"] = self._record(False)
        write_frame(self.out_fd, response)

    def serve(self) -> None:
        while True:
            try:
                frame = read_frame(self.in_fd)
            except (ChannelClosed, OSError):
                return
            kind = frame.get("type")
            if kind == "init":
                self.init(str(frame["handler"]))
            elif kind == "invoke":
                self.invoke(frame)
            else:
                return


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    in_fd, out_fd = int(args[0]), int(args[1])
    runtime = Runtime(in_fd, out_fd)
    try:
        runtime.serve()
    finally:
        runtime.stdout.flush()
        runtime.stderr.flush()
        # Threads the function started (pools, refreshers) must not keep a discarded
        # environment alive: Lambda ends the whole sandbox, so do we.
        os._exit(0)


if __name__ == "__main__":
    main()
