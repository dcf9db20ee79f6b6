"""Where transfers go: in-process through dsqlkit's pool, to a Lambda function, or nowhere.

A target is described by a picklable :class:`TargetSpec` (so that ``--processes`` can rebuild
it in each child) and opened into a :class:`Target`, which hands each worker thread its own
``transfer(t)`` callable. The callable returns a :class:`Result` and never raises for a
transfer that failed: failures are data here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ import (
    OCCMetrics,
    OCCRetryConfig,
    classify_occ,
    retry_on_occ,
    run_transaction,
)

from .outcomes import Outcome, classify_exception, classify_message, describe, from_occ_type
from .stats import Recorder
from .workload import (
    ACCOUNTS_DDL,
    INITIAL_BALANCE,
    Transfer,
    transfer_transaction,
)

__all__ = [
    "RETRY_PRESETS",
    "DirectTarget",
    "LambdaTarget",
    "NoopTarget",
    "Result",
    "Target",
    "TargetSpec",
    "open_target",
    "retry_config",
    "seed_accounts",
    "sum_balances",
]


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    attempts: int = 1
    message: str | None = None
    server_ms: float | None = None


TransferFn = Callable[[Transfer], Result]
_SUCCESS = Result(Outcome.SUCCESS)


class Target(Protocol):
    def worker(self, recorder: Recorder) -> TransferFn: ...

    def close(self) -> None: ...


RETRY_PRESETS: dict[str, Callable[[], OCCRetryConfig]] = {
    "high_contention": OCCRetryConfig.high_contention,
    "default": OCCRetryConfig,
    "low_latency": OCCRetryConfig.low_latency,
}


def retry_config(preset: str, max_attempts: int | None = None) -> OCCRetryConfig:
    config = RETRY_PRESETS[preset]()
    return config if max_attempts is None else config.with_options(max_attempts=max_attempts)


@dataclass(frozen=True)
class TargetSpec:
    """How to reach a target; plain data, safe to pickle into a child process.

    ``kind`` is ``direct`` (``conn`` is a DSQL connection string), ``lambda`` (``function``,
    optionally ``endpoint_url``/``region``) or ``noop``. ``retry`` only applies to ``direct``:
    for Lambda the function decides (chapter 4 does not retry, chapter 5 does).
    ``credentials`` are passed to the connector when given (the demo passes the local
    endpoint's); otherwise the usual AWS credential chain applies.
    """

    kind: str
    conn: str | None = None
    function: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    retry: bool = True
    retry_preset: str = "high_contention"
    max_attempts: int | None = None
    credentials: Any = None

    def describe(self) -> str:
        """A human-readable name of the target; never includes a secret."""
        if self.kind == "direct":
            from dsqlkit.config import resolve_config
            from dsqlkit.errors import DsqlError

            try:
                cfg = resolve_config(self.conn or "", {})
            except DsqlError:
                return "DSQL endpoint (connection string not understood)"
            return f"{cfg.user}@{cfg.host}:{cfg.port}/{cfg.database}"
        if self.kind == "lambda":
            where = self.endpoint_url or "AWS Lambda"
            return f"{self.function} via {where}"
        return "noop (returns at once)"

    def retry_policy(self) -> OCCRetryConfig | None:
        if self.kind != "direct" or not self.retry:
            return None
        return retry_config(self.retry_preset, self.max_attempts)


def open_target(spec: TargetSpec, threads: int) -> Target:
    if spec.kind == "direct":
        return DirectTarget(spec, threads)
    if spec.kind == "lambda":
        return LambdaTarget(spec, threads)
    if spec.kind == "noop":
        return NoopTarget()
    raise ValueError(f"unknown target kind {spec.kind!r}: direct, lambda or noop")


class NoopTarget:
    """Succeeds at once: measures the load generator itself."""

    def worker(self, recorder: Recorder) -> TransferFn:
        def transfer(t: Transfer) -> Result:
            return _SUCCESS

        return transfer

    def close(self) -> None:
        pass


# -- in-process --------------------------------------------------------------------------


def _pool_params(spec: TargetSpec) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if spec.credentials is not None:
        params["credentials"] = spec.credentials
    return params


class _RetryCounter:
    """Per worker: the retries of the transfer in flight, and the conflicts for the timeline.

    It is the ``on_retry`` hook of the worker's own copy of the retry config, so the count
    needs no lock and no per-transfer object.
    """

    __slots__ = ("recorder", "retries")

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.retries = 0

    def __call__(self, attempt: int, delay: float, error: BaseException) -> None:
        self.retries += 1
        occ = classify_occ(error)
        if occ is not None:
            self.recorder.conflict(from_occ_type(occ), time.perf_counter())


# No retry is chapter 4: the same transaction, one attempt; a conflict fails the transfer.
_SINGLE_ATTEMPT = OCCRetryConfig(max_attempts=1)


class DirectTarget:
    """The transfer transaction in this process, through a dsqlkit psycopg pool.

    Both modes run :func:`~dsqlkit.bench.workload.transfer_transaction` through
    :func:`dsqlkit.occ.run_transaction`: with the chosen retry policy, or with a single
    attempt for chapter 4's behaviour. One pooled connection per worker thread.
    """

    def __init__(self, spec: TargetSpec, threads: int) -> None:
        from dsqlkit.psycopg import create_pool

        self.spec = spec
        self.policy = spec.retry_policy()
        self.metrics = OCCMetrics()
        self.pool = create_pool(
            spec.conn or "",
            min_size=threads,
            max_size=threads,
            timeout=60.0,
            kwargs={"autocommit": True},
            **_pool_params(spec),
        )

    def worker(self, recorder: Recorder) -> TransferFn:
        pool, metrics = self.pool, self.metrics
        counter = _RetryCounter(recorder)
        config = _SINGLE_ATTEMPT if self.policy is None else self.policy.with_options(
            on_retry=counter
        )

        def transfer(t: Transfer) -> Result:
            counter.retries = 0
            try:
                run_transaction(pool, partial(transfer_transaction, t=t), config,
                                metrics=metrics)
            except OCCRetryExhausted as exc:
                return Result(from_occ_type(exc.occ_type), exc.attempts, describe(exc))
            except Exception as exc:
                return Result(classify_exception(exc), counter.retries + 1, describe(exc))
            return Result(Outcome.SUCCESS, counter.retries + 1) if counter.retries else _SUCCESS

        return transfer

    def close(self) -> None:
        self.pool.close()


def seed_accounts(conn: Any, accounts: int, *, batch: int = 1000) -> None:
    """Create the accounts table if needed and reset it to ids 1..N, balance 100 each.

    DSQL caps the rows one transaction may change (3,000 at the time of writing), so the
    delete and the insert run in batches, each its own autocommit transaction.
    """
    conn.execute(ACCOUNTS_DDL)
    while True:
        cur = conn.execute(
            "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts LIMIT %s)", (batch,)
        )
        if cur.rowcount < batch:
            break
    for lo in range(1, accounts + 1, batch):
        hi = min(lo + batch - 1, accounts)
        conn.execute(
            "INSERT INTO accounts (id, balance) SELECT generate_series(%s::int, %s::int), %s",
            (lo, hi, INITIAL_BALANCE),
        )


def sum_balances(conn: Any) -> tuple[Decimal, int]:
    """The sum of all balances and the number of accounts, in one consistent snapshot.

    Retried on OCC errors: a session that has not touched storage since someone's DDL gets
    one OC001 for its next statement, and this connection sits idle for the whole run.
    """

    def read() -> tuple[Decimal, int]:
        row = conn.execute("SELECT coalesce(sum(balance), 0), count(*) FROM accounts").fetchone()
        return Decimal(row[0]), int(row[1])

    return retry_on_occ(_BALANCE_RETRY, read, metrics=OCCMetrics())


_BALANCE_RETRY = OCCRetryConfig(max_attempts=5, base_delay=0.01, max_delay=0.2)


# -- AWS Lambda ----------------------------------------------------------------------------


def _parse_ms(value: object) -> float | None:
    # The handlers report "12.345ms" (the seed's format); accept a bare number too.
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().removesuffix("ms").strip()
        try:
            return float(text)
        except ValueError:
            return None
    return None


def interpret_invoke(function_error: str | None, body: bytes) -> Result:
    """Turn one Invoke response (the function-error header and the payload) into a Result.

    Pure, so that it is tested on its own. As in invoke-test: a body with
    ``transaction_time`` is a success; a function error carries ``errorMessage``.
    """
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if function_error or (isinstance(doc, dict) and "errorMessage" in doc and
                          "transaction_time" not in doc):
        if isinstance(doc, dict):
            message = str(doc.get("errorMessage") or doc.get("errorType") or function_error)
        else:
            message = body.decode("utf-8", "replace")[:200] or str(function_error)
        first_line = message.strip().splitlines()[0] if message.strip() else message
        return Result(classify_message(message), 1, first_line[:300])
    if isinstance(doc, dict) and "transaction_time" in doc:
        attempts = doc.get("attempts", 1)
        if not isinstance(attempts, int) or attempts < 1:
            attempts = 1
        return Result(Outcome.SUCCESS, attempts, None, _parse_ms(doc["transaction_time"]))
    text = body.decode("utf-8", "replace")[:200]
    return Result(Outcome.OTHER, 1, f"unexpected response: {text}")


class LambdaTarget:
    """Invokes a Lambda function per transfer through boto3, as the seed's invoke-test did.

    Client-side retries are off: a throttled or failed invoke is a failed transfer to report,
    not something to hide inside the latency. One client is shared by all worker threads
    (boto3 clients are thread-safe), with a connection per thread.
    """

    def __init__(self, spec: TargetSpec, threads: int) -> None:
        import boto3
        from botocore.config import Config

        if not spec.function:
            raise ValueError("the lambda target needs a function name")
        self.function = spec.function
        self.client = boto3.client(
            "lambda",
            endpoint_url=spec.endpoint_url,
            region_name=spec.region,
            config=Config(
                max_pool_connections=max(10, threads),
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=300,
                tcp_keepalive=True,
            ),
        )

    def worker(self, recorder: Recorder) -> TransferFn:
        from botocore.exceptions import BotoCoreError, ClientError

        invoke, function = self.client.invoke, self.function

        def transfer(t: Transfer) -> Result:
            try:
                response = invoke(FunctionName=function, Payload=t.payload())
                body = response["Payload"].read()
            except (BotoCoreError, ClientError) as exc:
                return Result(Outcome.OTHER, 1, f"invoke failed: {exc}"[:300])
            result = interpret_invoke(response.get("FunctionError"), body)
            if result.attempts > 1:
                # Chapter 5 retried inside the function; its conflicts happened just now. The
                # response carries only the count, so they are filed under the one thing
                # every OCC conflict has in common, SQLSTATE 40001.
                recorder.conflict(Outcome.SERIALIZATION, time.perf_counter(),
                                  result.attempts - 1)
            return result

        return transfer

    def close(self) -> None:
        self.client.close()
