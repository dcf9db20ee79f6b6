"""Execution environments: one process per concurrent invocation, reused while warm.

Lambda runs each concurrent invocation of a function in its own execution environment (a
micro-VM with the runtime, the code and whatever module state the code built), and sends
later invocations to an idle environment when one exists. Between invocations the environment
is frozen: no thread in it runs, so a background refresher or a pool's housekeeping catches
up only when the next invocation thaws it. This module reproduces that with processes:

* :class:`ExecutionEnvironment` -- a ``python -m dsqlkit.lambda_local.runtime`` process with
  the function's environment variables; stopped with ``SIGSTOP`` between invocations (where
  the platform has it) so that code which only works because it keeps running in the
  background fails here as it would on Lambda.
* :class:`FunctionEnvironments` -- the environments of one function, at most ``concurrency``
  of them; beyond that an invocation waits for one to become idle (``queue``) or is refused
  with Lambda's ``TooManyRequestsException`` (``reject``).
"""

from __future__ import annotations

import base64
import collections
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from dsqlkit.lambda_local.functions import FunctionSpec
from dsqlkit.lambda_local.protocol import (
    ChannelClosed,
    ChannelTimeout,
    read_frame,
    write_frame,
)

# Lambda's limit on a synchronous response payload, as its error message states it.
MAX_RESPONSE_BYTES = 6_291_556
# The init phase of an on-demand environment may take up to 10 s before Lambda gives up.
INIT_TIMEOUT = 10.0
LOG_TAIL_BYTES = 4096

LogSink = Callable[[str, str], None]
"""``sink(function_name, text)``: where environment output and REPORT lines go."""


_PR_SET_PDEATHSIG = 1
_prctl: Any = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    # A frozen environment (SIGSTOP) never reads the EOF that tells it the server is gone, so
    # a server killed without cleanup would leave stopped processes behind. SIGKILL from the
    # kernel when the parent dies reaches a stopped process too. Only a call through a
    # pointer resolved in the parent: nothing that could take a lock between fork and exec.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Spawner:
    """Starts every environment process from one long-lived thread.

    Linux delivers the parent-death signal when the *thread* that forked the child exits, not
    the process; environments are started while serving a request, from short-lived HTTP
    threads, so forking there would kill them when the request ends.
    """

    _lock = threading.Lock()
    _instance: _Spawner | None = None

    def __init__(self) -> None:
        import queue

        self._queue: queue.Queue[tuple[Callable[[], Any], list[Any], threading.Event]] = (
            queue.Queue())
        threading.Thread(target=self._run, daemon=True, name="lambda-spawner").start()

    @classmethod
    def get(cls) -> _Spawner:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _run(self) -> None:
        while True:
            fn, out, done = self._queue.get()
            try:
                out.append(fn())
            except BaseException as exc:
                out.append(exc)
            done.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        out: list[Any] = []
        done = threading.Event()
        self._queue.put((fn, out, done))
        done.wait()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]


def _popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    global _prctl
    if sys.platform.startswith("linux"):
        if _prctl is None:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        kwargs["preexec_fn"] = _die_with_parent
        proc: subprocess.Popen[bytes] = _Spawner.get().call(
            lambda: subprocess.Popen(args, **kwargs))
        return proc
    return subprocess.Popen(args, **kwargs)


def _package_parent() -> str:
    # The directory that holds the ``dsqlkit`` package, so an environment can import the
    # runtime whether dsqlkit is installed or only on the server's PYTHONPATH.
    return str(Path(__file__).resolve().parents[2])


@dataclass
class Outcome:
    """What one invocation produced, ready for the HTTP layer."""

    request_id: str
    body: bytes
    function_error: str | None
    log: str
    cold: bool

    def log_tail(self) -> str:
        """``X-Amz-Log-Result``: the last 4 KB of the log, base64."""
        data = self.log.encode()[-LOG_TAIL_BYTES:]
        return base64.b64encode(data.decode(errors="ignore").encode()).decode()


def _error(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"errorMessage": message, "errorType": error_type}
    if request_id is not None:
        body["requestId"] = request_id
    body["stackTrace"] = []
    return body


def _error_body(error_type: str, message: str, request_id: str | None = None) -> bytes:
    return json.dumps(_error(error_type, message, request_id)).encode()


class EnvironmentFailed(Exception):
    """The environment cannot serve invocations any more (it must be discarded)."""


class ExecutionEnvironment:
    """One environment: a runtime process, initialised once, invoked many times."""

    def __init__(self, spec: FunctionSpec, environ: Mapping[str, str], *,
                 sink: LogSink | None = None, freeze: bool = True) -> None:
        self.spec = spec
        self.environ = dict(environ)
        self.sink = sink
        self.freeze = freeze and hasattr(signal, "SIGSTOP")
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_ms = 0.0
        self.init_log = ""
        self.init_error: dict[str, Any] | None = None
        self.invocations = 0
        self.frozen = False
        self.alive = False
        self._out_lines: collections.deque[str] = collections.deque(maxlen=200)
        self._to_child = -1
        self._from_child = -1

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process and run the init phase; sets :attr:`init_error` on failure."""
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        started = time.perf_counter()
        try:
            self.proc = _popen(
                [sys.executable, "-m", "dsqlkit.lambda_local.runtime", str(p2c_r), str(c2p_w)],
                cwd=self.spec.code_root, env=self.environ, pass_fds=(p2c_r, c2p_w),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                # Ctrl-C in the server's terminal must not reach environments directly: the
                # server shuts them down itself.
                start_new_session=True,
            )
        except BaseException:
            for fd in (p2c_r, p2c_w, c2p_r, c2p_w):
                os.close(fd)
            raise
        finally:
            if self.proc is not None:
                os.close(p2c_r)
                os.close(c2p_w)
        self._to_child, self._from_child = p2c_w, c2p_r
        self.alive = True
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True,
                         name=f"lambda-{self.spec.name}-output").start()
        try:
            write_frame(self._to_child, {"type": "init", "handler": self.spec.handler})
            frame = read_frame(self._from_child, time.monotonic() + INIT_TIMEOUT)
        except ChannelTimeout:
            self.init_error = _error(
                "Runtime.InitTimeout",
                f"Init phase did not complete within {INIT_TIMEOUT:.0f} seconds")
            self.close()
            return
        except (ChannelClosed, OSError):
            self.init_error = self._exit_error(None)
            self.close()
            return
        self.init_ms = float(frame.get("init_ms", (time.perf_counter() - started) * 1000))
        self.init_log = str(frame.get("log", ""))
        if frame.get("type") != "ready":
            self.init_error = dict(frame.get("error") or {})
            self.close()
            return
        self._freeze()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self._out_lines.append(line)
            if self.sink is not None:
                try:
                    self.sink(self.spec.name, line)
                except Exception:  # a broken sink must not kill the pump (and block us)
                    pass
        stream.close()

    def _freeze(self) -> None:
        if self.freeze and self.proc is not None and not self.frozen:
            try:
                os.kill(self.proc.pid, signal.SIGSTOP)
                self.frozen = True
            except ProcessLookupError:
                pass

    def _thaw(self) -> None:
        if self.frozen and self.proc is not None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.frozen = False

    def close(self, grace: float = 2.0) -> None:
        """End the environment: EOF on its channel, then SIGKILL if it lingers."""
        proc = self.proc
        self.alive = False
        self._thaw()
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_child = self._from_child = -1
        if proc is None:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _kill(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        self.alive = False
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            return None

    def _exit_error(self, request_id: str | None) -> dict[str, Any]:
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                rc = self._kill()
        self.alive = False
        if rc is not None and rc < 0:
            how = f"signal: {signal.Signals(-rc).name.removeprefix('SIG').lower()}"
        else:
            how = f"exit status {rc}"
        prefix = f"RequestId: {request_id} Error: " if request_id else "Error: "
        return _error("Runtime.ExitError", f"{prefix}Runtime exited with error: {how}",
                      request_id)

    # -- invocations ----------------------------------------------------------------------

    def invoke(self, request_id: str, payload: str, arn: str,
               client_context: Any = None) -> Outcome:
        """Run one invocation. Raises nothing: every failure becomes a function error, and
        a dead environment is marked ``alive = False`` for the pool to discard."""
        cold = self.invocations == 0
        self.invocations += 1
        timeout = self.spec.timeout
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        start_line = f"START RequestId: {request_id} Version: $LATEST\n"
        started = time.perf_counter()
        self._thaw()
        try:
            write_frame(self._to_child, {
                "type": "invoke", "request_id": request_id, "payload": payload,
                "deadline_ms": deadline_ms, "arn": arn, "client_context": client_context,
            })
            frame = read_frame(self._from_child, time.monotonic() + timeout)
        except ChannelTimeout:
            self._kill()
            message = (f"RequestId: {request_id} Error: Task timed out after "
                       f"{timeout:.2f} seconds")
            elapsed = (time.perf_counter() - started) * 1000
            log = (start_line + self._recent_output() + f"{message}\n"
                   + self._report(request_id, elapsed, 0, cold))
            return Outcome(request_id, _error_body("Sandbox.Timedout", message, request_id),
                           "Unhandled", self._with_init(log, cold), cold)
        except (ChannelClosed, OSError, ValueError):
            error = self._exit_error(request_id)
            elapsed = (time.perf_counter() - started) * 1000
            log = (start_line + self._recent_output() + error["errorMessage"] + "\n"
                   + self._report(request_id, elapsed, 0, cold))
            return Outcome(request_id, json.dumps(error).encode(), "Unhandled",
                           self._with_init(log, cold), cold)
        duration = float(frame.get("duration_ms", 0.0))
        log = start_line + str(frame.get("log", "")) + self._report(
            request_id, duration, int(frame.get("max_memory_mb", 0)), cold)
        log = self._with_init(log, cold)
        self._freeze()
        if "error" in frame:
            return Outcome(request_id, json.dumps(frame["error"]).encode(), "Unhandled", log,
                           cold)
        body = str(frame.get("body", "null")).encode()
        if len(body) > MAX_RESPONSE_BYTES:
            return Outcome(request_id, _error_body(
                "Function.ResponseSizeTooLarge",
                f"Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes).", request_id), "Unhandled", log, cold)
        return Outcome(request_id, body, None, log, cold)

    def _recent_output(self) -> str:
        # What the process wrote before it died or hung: the only log there is.
        return "".join(list(self._out_lines)[-20:])

    def _with_init(self, log: str, cold: bool) -> str:
        return (self.init_log + log) if cold else log

    def _report(self, request_id: str, duration_ms: float, memory_mb: int, cold: bool) -> str:
        line = (f"END RequestId: {request_id}\n"
                f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                f"Billed Duration: {max(1, math.ceil(duration_ms))} ms\t"
                f"Memory Size: {self.spec.memory_mb} MB\tMax Memory Used: {memory_mb} MB\t")
        if cold:
            line += f"Init Duration: {self.init_ms:.2f} ms\t"
        return line + "\n"


STAT_KEYS = ("invocations", "cold_starts", "environments_started", "function_errors",
             "init_errors", "throttles", "queued", "peak_concurrency")


class Throttled(Exception):
    """No environment became available: Lambda's ``TooManyRequestsException``."""


class FunctionEnvironments:
    """At most ``concurrency`` environments of one function; idle ones are reused."""

    def __init__(self, spec: FunctionSpec, make_environ: Callable[[], Mapping[str, str]], *,
                 concurrency: int, on_throttle: str = "queue", queue_timeout: float = 60.0,
                 sink: LogSink | None = None, freeze: bool = True) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if on_throttle not in ("queue", "reject"):
            raise ValueError(f"on_throttle must be 'queue' or 'reject', not {on_throttle!r}")
        self.spec = spec
        self.make_environ = make_environ
        self.concurrency = concurrency
        self.on_throttle = on_throttle
        self.queue_timeout = queue_timeout
        self.sink = sink
        self.freeze = freeze
        self._idle: list[ExecutionEnvironment] = []
        self._all: set[ExecutionEnvironment] = set()
        self._slots = 0  # environments that exist or are starting
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    def _acquire(self) -> ExecutionEnvironment | None:
        """An idle environment, or None after reserving a slot for a new one."""
        deadline = time.monotonic() + self.queue_timeout
        env: ExecutionEnvironment | None
        with self._cond:
            while True:
                if self._closed:
                    raise Throttled("the server is shutting down")
                if self._idle:
                    env = self._idle.pop()  # most recently used: keeps the fewest warm
                    break
                if self._slots < self.concurrency:
                    self._slots += 1
                    env = None
                    break
                remaining = deadline - time.monotonic()
                if self.on_throttle == "reject" or remaining <= 0:
                    self.stats["throttles"] += 1
                    raise Throttled(f"{self.spec.name}: all {self.concurrency} environments "
                                    "are busy")
                self.stats["queued"] += 1
                self._cond.wait(remaining)
            self._busy += 1
            self.stats["peak_concurrency"] = max(self.stats["peak_concurrency"], self._busy)
            return env

    def _release(self, env: ExecutionEnvironment | None) -> None:
        with self._cond:
            self._busy -= 1
            if env is not None and env.alive and not self._closed:
                self._idle.append(env)
            else:
                self._slots -= 1
                if env is not None:
                    self._all.discard(env)
            self._cond.notify()
        if env is not None and (not env.alive or self._closed):
            env.close()

    def invoke(self, payload: str, arn: str, client_context: Any = None) -> Outcome:
        request_id = _request_id()
        env = self._acquire()
        try:
            if env is None:
                env = ExecutionEnvironment(self.spec, self.make_environ(), sink=self.sink,
                                           freeze=self.freeze)
                with self._cond:
                    self._all.add(env)
                self.stats["environments_started"] += 1
                env.start()
                if env.init_error is not None:
                    self.stats["init_errors"] += 1
                    error = dict(env.init_error)
                    error["requestId"] = request_id
                    log = (env.init_log + f"START RequestId: {request_id} Version: $LATEST\n"
                           f"[ERROR] {error.get('errorType')}: {error.get('errorMessage')}\n"
                           + env._report(request_id, 0.0, 0, True))
                    return Outcome(request_id, json.dumps(error).encode(), "Unhandled", log,
                                   True)
            outcome = env.invoke(request_id, payload, arn, client_context)
            self.stats["invocations"] += 1
            if outcome.function_error:
                self.stats["function_errors"] += 1
            if outcome.cold:
                self.stats["cold_starts"] += 1
            return outcome
        finally:
            self._release(env)

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            out = dict(self.stats)
            out["environments"] = self._slots
            out["busy"] = self._busy
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            envs = list(self._all)
            self._idle.clear()
            self._cond.notify_all()
        for env in envs:
            env.close()


def _request_id() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def log_stream_name() -> str:
    """A name shaped like Lambda's: ``2025/01/31/[$LATEST]<32 hex digits>``."""
    day = datetime.now(timezone.utc).strftime("%Y/%m/%d")
    return f"{day}/[$LATEST]{secrets.token_hex(16)}"
