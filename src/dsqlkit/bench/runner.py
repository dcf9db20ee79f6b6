"""The load generator: worker threads (and, with ``processes > 1``, worker processes).

Each worker thread draws transfers from its own seeded stream, calls its target, and records
into its own :class:`~dsqlkit.bench.stats.Recorder`; nothing on that path takes a lock. With
several processes each child runs the same thread loop on its share of the work, publishes
two counters for the progress bar through shared memory, and sends its serialised
:class:`~dsqlkit.bench.stats.RunStats` back when done; the parent merges them. Children are
*spawned*, not forked: a fork would copy the parent's pool threads and token refresher in
whatever state they happen to be.

All workers start together (children report ready, then the parent releases them), so the
elapsed time and the per-second timeline measure the workload, not interpreter start-up and
pool warm-up.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .results import Balances, RunConfig, RunResult
from .stats import Recorder, RunStats
from .targets import Target, TargetSpec, TransferFn, open_target, sum_balances
from .workload import TransferGenerator

__all__ = ["BenchError", "LoadPlan", "ProgressFn", "default_label", "run_bench", "split"]

ProgressFn = Callable[[int, int, float], None]
"""``progress(done, failed, elapsed_seconds)``, called about ten times a second."""

_TICK = 0.1


class BenchError(Exception):
    """The benchmark itself could not run (not a failed transfer: those are results)."""


@dataclass(frozen=True)
class LoadPlan:
    """How much load: ``iterations`` in total or for ``duration`` seconds, with ``threads``
    concurrent workers in total, spread over ``processes`` processes."""

    threads: int = 1
    accounts: int = 1000
    iterations: int | None = 1000
    duration: float | None = None
    processes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.duration is None):
            raise ValueError("give either iterations or duration")
        if self.threads < 1 or self.processes < 1:
            raise ValueError("threads and processes must be at least 1")
        if self.processes > self.threads:
            raise ValueError(
                f"--processes ({self.processes}) cannot exceed --threads ({self.threads}): "
                "--threads is the total number of concurrent workers"
            )
        if self.accounts < 2:
            raise ValueError("--accounts must be at least 2 (a transfer needs two accounts)")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError("--iters must not be negative")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be positive")


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares (the first ones get the remainder)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def _rng(seed: int, worker: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and platforms,
    # and independent streams per worker.
    return random.Random(f"dsqlkit-bench:{seed}:{worker}")


def _worker_loop(
    transfer: TransferFn,
    draw: TransferGenerator,
    recorder: Recorder,
    count: int | None,
    deadline: float | None,
    stop: threading.Event,
) -> None:
    clock = time.perf_counter
    record = recorder.record
    stopped = stop.is_set
    n = 0
    while not stopped():
        if count is not None and n >= count:
            return
        t = draw()
        start = clock()
        if deadline is not None and start >= deadline:
            return
        r = transfer(t)
        record(r.outcome, start, clock(), r.attempts, r.message, r.server_ms)
        n += 1


def _run_threads(
    target: Target,
    plan: LoadPlan,
    worker_ids: Sequence[int],
    counts: Sequence[int] | None,
    stop: threading.Event,
    tick: Callable[[list[Recorder], float], None] | None,
) -> tuple[RunStats, float]:
    """Run one thread per worker id until done; returns merged stats and elapsed seconds."""
    epoch = time.perf_counter()
    deadline = None if plan.duration is None else epoch + plan.duration
    recorders = [Recorder(epoch) for _ in worker_ids]
    errors: list[BaseException] = []
    # Completion is signalled with Events rather than observed with Thread.join: a Ctrl-C
    # that lands inside join() can leave CPython believing a running thread has stopped
    # (later joins return at once), and the stats would be merged under a live writer.
    finished = [threading.Event() for _ in worker_ids]

    def body(i: int) -> None:
        try:
            _worker_loop(
                target.worker(recorders[i]),
                TransferGenerator(plan.accounts, _rng(plan.seed, worker_ids[i])),
                recorders[i],
                None if counts is None else counts[i],
                deadline,
                stop,
            )
        except BaseException as exc:  # surfaced by the caller, with every worker stopped
            errors.append(exc)
            stop.set()
        finally:
            finished[i].set()

    threads = [threading.Thread(target=body, args=(i,), name=f"bench-worker-{w}", daemon=True)
               for i, w in enumerate(worker_ids)]
    for th in threads:
        th.start()
    try:
        for done in finished:
            while not done.wait(_TICK):
                if tick is not None:
                    tick(recorders, time.perf_counter() - epoch)
        elapsed = time.perf_counter() - epoch
        if tick is not None:
            tick(recorders, elapsed)  # the bar ends at the true count
    except KeyboardInterrupt:
        # Let in-flight transfers finish so that their outcome is counted and, in direct
        # mode, the balance check still means something.
        stop.set()
        for done in finished:
            done.wait()
        raise _Interrupted(RunStats.merge(recorders), time.perf_counter() - epoch) from None
    if errors:
        raise BenchError(f"a worker crashed: {errors[0]!r}") from errors[0]
    return RunStats.merge(recorders), elapsed


class _Interrupted(Exception):
    def __init__(self, stats: RunStats, elapsed: float) -> None:
        super().__init__("interrupted")
        self.stats = stats
        self.elapsed = elapsed


# -- several processes ---------------------------------------------------------------------


def _child(
    spec: TargetSpec,
    plan: LoadPlan,
    index: int,
    worker_ids: list[int],
    counts: list[int] | None,
    shared: Any,
    messages: Any,
    go: Any,
    stop_all: Any,
) -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and tells us via stop_all.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target = open_target(spec, len(worker_ids))
    except BaseException:
        messages.put(("error", index, traceback.format_exc()))
        return
    try:
        messages.put(("ready", index, None))
        go.wait()
        stop = threading.Event()

        def tick(recorders: list[Recorder], elapsed: float) -> None:
            shared[2 * index] = sum(r.done for r in recorders)
            shared[2 * index + 1] = sum(r.failed for r in recorders)
            if stop_all.is_set():
                stop.set()

        stats, elapsed = _run_threads(target, plan, worker_ids, counts, stop, tick)
        messages.put(("done", index, (stats.to_dict(), elapsed)))
    except BaseException:
        messages.put(("error", index, traceback.format_exc()))
    finally:
        target.close()


def _run_processes(
    spec: TargetSpec, plan: LoadPlan, progress: ProgressFn | None
) -> tuple[RunStats, float, bool]:
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")
    ids = [list(range(plan.threads))[p::plan.processes] for p in range(plan.processes)]
    per_worker = None if plan.iterations is None else split(plan.iterations, plan.threads)
    shared = ctx.Array("q", 2 * plan.processes, lock=False)
    messages = ctx.Queue()
    go, stop_all = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(
            target=_child,
            args=(spec, plan, p, ids[p],
                  None if per_worker is None else [per_worker[w] for w in ids[p]],
                  shared, messages, go, stop_all),
            name=f"bench-process-{p}",
            daemon=True,
        )
        for p in range(plan.processes)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, tuple[dict[str, Any], float]] = {}
    interrupted = False
    try:
        ready = 0
        while ready < plan.processes:
            kind, index, payload = _next_message(messages, procs)
            if kind == "error":
                raise BenchError(f"worker process {index} failed:\n{payload}")
            ready += 1
        start = time.perf_counter()
        go.set()
        while len(results) < plan.processes:
            try:
                kind, index, payload = messages.get(timeout=_TICK)
            except queue.Empty:
                _check_alive(procs, results)
            else:
                if kind == "error":
                    raise BenchError(f"worker process {index} failed:\n{payload}")
                results[index] = payload
            if progress is not None:
                progress(sum(shared[0::2]), sum(shared[1::2]), time.perf_counter() - start)
    except KeyboardInterrupt:
        interrupted = True
        stop_all.set()
        go.set()  # children still waiting to start must not wait forever
        finished = set(results)
        while len(finished) < plan.processes:
            kind, index, payload = _next_message(messages, procs)
            if kind == "done":
                results[index] = payload
            if kind in ("done", "error"):
                finished.add(index)
    finally:
        stop_all.set()
        go.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    elapsed = max((e for _, e in results.values()), default=0.0)
    stats = RunStats.merge(RunStats.from_dict(d) for d, _ in results.values())
    return stats, elapsed, interrupted


def _next_message(messages: Any, procs: list[Any]) -> tuple[str, int, Any]:
    import queue

    while True:
        try:
            msg: tuple[str, int, Any] = messages.get(timeout=1.0)
            return msg
        except queue.Empty:
            _check_alive(procs, {})


def _check_alive(procs: list[Any], finished: dict[int, Any]) -> None:
    for i, proc in enumerate(procs):
        if i not in finished and not proc.is_alive() and proc.exitcode not in (0, None):
            raise BenchError(f"worker process {i} died with exit code {proc.exitcode}")


# -- the entry point -------------------------------------------------------------------------


def _utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _policy_dict(spec: TargetSpec) -> dict[str, Any] | None:
    policy = spec.retry_policy()
    if policy is None:
        return None
    return {
        "preset": spec.retry_preset,
        "max_attempts": policy.max_attempts,
        "base_delay": policy.base_delay,
        "max_delay": policy.max_delay,
        "jitter_factor": policy.jitter_factor,
        "deadline": policy.deadline,
    }


def run_bench(
    spec: TargetSpec,
    plan: LoadPlan,
    *,
    label: str | None = None,
    progress: ProgressFn | None = None,
    check_balances: bool = True,
) -> RunResult:
    """Run the transfer workload against ``spec`` and return everything recorded.

    In direct mode (and with ``check_balances``) the sum of all balances is read before and
    after; Ctrl-C stops the workers after their in-flight transfer and returns a partial,
    ``interrupted`` result.
    """
    config = RunConfig(
        target=spec.kind,
        target_description=spec.describe(),
        retry=spec.retry if spec.kind == "direct" else None,
        retry_policy=_policy_dict(spec),
        iterations=plan.iterations,
        duration=plan.duration,
        threads=plan.threads,
        processes=plan.processes,
        accounts=plan.accounts,
        seed=plan.seed,
    )
    balance_conn: Any = None
    before: tuple[Any, int] | None = None
    if spec.kind == "direct" and check_balances:
        balance_conn = _connect(spec)
        before = sum_balances(balance_conn)
    interrupted = False
    started_at = _utc_now()
    try:
        if plan.processes == 1:
            target = open_target(spec, plan.threads)
            try:
                counts = None if plan.iterations is None else split(plan.iterations, plan.threads)

                def tick(recorders: list[Recorder], elapsed: float) -> None:
                    if progress is not None:
                        progress(sum(r.done for r in recorders),
                                 sum(r.failed for r in recorders), elapsed)

                started_at = _utc_now()
                try:
                    stats, elapsed = _run_threads(target, plan, range(plan.threads), counts,
                                                  threading.Event(), tick)
                except _Interrupted as exc:
                    stats, elapsed, interrupted = exc.stats, exc.elapsed, True
            finally:
                target.close()
        else:
            stats, elapsed, interrupted = _run_processes(spec, plan, progress)
        balances = None
        if before is not None:
            after = sum_balances(balance_conn)
            balances = Balances(before[0], after[0], after[1])
    finally:
        if balance_conn is not None:
            with contextlib.suppress(Exception):
                balance_conn.close()
    return RunResult(
        label=label or default_label(spec),
        config=config,
        started_at=started_at,
        elapsed=elapsed,
        stats=stats,
        balances=balances,
        interrupted=interrupted,
    )


def default_label(spec: TargetSpec) -> str:
    """The run's name when ``--label`` is not given."""
    if spec.kind == "direct":
        return "retry" if spec.retry else "no retry"
    if spec.kind == "lambda":
        return spec.function or "lambda"
    return "noop"


def _connect(spec: TargetSpec) -> Any:
    from dsqlkit.psycopg import connect

    params: dict[str, Any] = {"autocommit": True}
    if spec.credentials is not None:
        params["credentials"] = spec.credentials
    return connect(spec.conn or "", **params)


def setup_accounts(spec: TargetSpec, accounts: int) -> None:
    """``--setup``: create the accounts table and reset it to ids 1..N with balance 100."""
    from .targets import seed_accounts

    conn = _connect(spec)
    try:
        seed_accounts(conn, accounts)
    finally:
        conn.close()
