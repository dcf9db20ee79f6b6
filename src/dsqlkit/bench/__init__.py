"""``dsqlkit bench``: the DAT401 transfer workload as a load tester with OCC statistics.

>>> from dsqlkit.bench import LoadPlan, TargetSpec, run_bench, render_report
>>> spec = TargetSpec("direct", conn=url, retry=False)            # doctest: +SKIP
>>> result = run_bench(spec, LoadPlan(threads=10, accounts=10))   # doctest: +SKIP
>>> result.summary.conflict_failures, result.summary.latency.p99  # doctest: +SKIP

Modules: :mod:`~dsqlkit.bench.workload` (the transfer and its SQL), :mod:`.outcomes`
(classes of results), :mod:`.stats` (recording and numbers, no I/O), :mod:`.targets`
(direct, Lambda, noop), :mod:`.runner` (threads and processes), :mod:`.results` (the run
and its JSON schema), :mod:`.report` (HTML), :mod:`.console` (terminal), :mod:`.cli`.
"""

from .outcomes import Outcome
from .report import render_report
from .results import JSON_SCHEMA, RunResult, validate
from .runner import BenchError, LoadPlan, run_bench, setup_accounts
from .targets import TargetSpec
from .workload import Transfer, TransferGenerator, transfer_transaction

__all__ = [
    "JSON_SCHEMA",
    "BenchError",
    "LoadPlan",
    "Outcome",
    "RunResult",
    "TargetSpec",
    "Transfer",
    "TransferGenerator",
    "render_report",
    "run_bench",
    "setup_accounts",
    "transfer_transaction",
    "validate",
]
