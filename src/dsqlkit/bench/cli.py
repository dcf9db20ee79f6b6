"""``dsqlkit bench``: the DAT401 invoke-test load tester, with OCC statistics.

    dsqlkit bench transfer --conn postgres://admin@<host>/postgres --setup --threads 10 \\
        --accounts 10 --no-retry --report ch04.html
    dsqlkit bench transfer --function ch05 --endpoint-url http://127.0.0.1:9001 --threads 10
    dsqlkit bench transfer --target noop --iters 200000 --processes 2 --threads 2
    dsqlkit bench report ch04.json ch05.json -o compare.html

Exit status: 0 when the run completed (failed transfers are results, not errors), 1 when the
benchmark could not run, 3 when the sum of balances changed (money was created or destroyed:
a correctness bug somewhere between the workload and the database).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

__all__ = ["configure", "run"]

EXIT_BALANCES = 3


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="WORKLOAD")
    t = sub.add_parser(
        "transfer",
        help="random money transfers between accounts (DAT401 chapters 4 and 5)",
        description="Run the DAT401 transfer workload and report outcomes, OCC conflicts, "
        "retries, latency percentiles and throughput.",
    )
    target = t.add_argument_group("target (one of)")
    target.add_argument("--conn", metavar="URL",
                        help="run the transaction in-process through dsqlkit's pool against "
                             "this DSQL endpoint (a cluster or dsqlkit local)")
    target.add_argument("--function", metavar="NAME",
                        help="invoke this Lambda function per transfer, as invoke-test did")
    target.add_argument("--target", choices=("direct", "lambda", "noop"),
                        help="noop: return at once, to measure the load generator itself "
                             "(direct and lambda are implied by --conn and --function)")
    target.add_argument("--endpoint-url", metavar="URL",
                        help="Lambda API endpoint, e.g. dsqlkit lambda serve's")
    target.add_argument("--region", help="AWS region for --function (default: the usual chain)")

    load = t.add_argument_group("load")
    load.add_argument("--iters", type=int, default=None, metavar="N",
                      help="transfers in total (default 1000)")
    load.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="run for this long instead of a fixed number of transfers")
    load.add_argument("--threads", type=int, default=1,
                      help="concurrent workers in total (default 1)")
    load.add_argument("--processes", type=int, default=1,
                      help="spread the workers over this many processes (default 1)")
    load.add_argument("--accounts", type=int, default=1000,
                      help="account ids are 1..N (default 1000)")
    load.add_argument("--seed", type=int, default=None,
                      help="seed for the random transfers (default: random, and reported)")
    load.add_argument("--setup", action="store_true",
                      help="create the accounts table and reset it to ids 1..N, balance 100")

    retry = t.add_argument_group("OCC retry (--conn only)")
    retry.add_argument("--retry", action=argparse.BooleanOptionalAction, default=True,
                       help="re-run the transaction on OCC conflicts (chapter 5); --no-retry "
                            "runs it once (chapter 4). Default: --retry")
    retry.add_argument("--retry-preset", choices=("high_contention", "default", "low_latency"),
                       default="high_contention",
                       help="dsqlkit.occ.OCCRetryConfig preset (default high_contention)")
    retry.add_argument("--max-attempts", type=int, default=None, metavar="N",
                       help="override the preset's attempt limit")

    out = t.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the result as JSON (schema in "
                                                    "dsqlkit.bench.results)")
    out.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
    out.add_argument("--label", help="name of this run in the summary and the report")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="render an HTML report from saved --json results",
                       description="Render one HTML report from one or more saved results; "
                                   "several are shown side by side.")
    r.add_argument("results", nargs="+", metavar="RESULT.json")
    r.add_argument("-o", "--output", required=True, metavar="FILE.html")
    r.add_argument("--title")


def run(args: argparse.Namespace) -> int:
    if args.bench_command == "transfer":
        return _transfer(args)
    if args.bench_command == "report":
        return _report(args)
    print("dsqlkit bench: choose a workload: dsqlkit bench transfer --help", file=sys.stderr)
    return 2


def _fail(message: str, code: int = 2) -> int:
    print(f"dsqlkit bench: {message}", file=sys.stderr)
    return code


def _spec(args: argparse.Namespace) -> Any:
    from .targets import TargetSpec

    kind = args.target
    if kind is None:
        if args.conn and args.function:
            raise ValueError("give either --conn or --function, not both")
        kind = "direct" if args.conn else "lambda" if args.function else None
    if kind is None:
        raise ValueError("choose a target: --conn URL, --function NAME or --target noop")
    if kind == "direct" and not args.conn:
        raise ValueError("--target direct needs --conn URL")
    if kind == "lambda" and not args.function:
        raise ValueError("--target lambda needs --function NAME")
    if kind != "direct" and args.setup:
        raise ValueError("--setup needs --conn (it creates the table through a connection)")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise ValueError("--max-attempts must be at least 1")
    return TargetSpec(
        kind=kind,
        conn=args.conn,
        function=args.function,
        endpoint_url=args.endpoint_url,
        region=args.region or (os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or ("us-east-1" if args.endpoint_url else None)),
        retry=args.retry,
        retry_preset=args.retry_preset,
        max_attempts=args.max_attempts,
    )


def _transfer(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .console import ProgressDisplay, render_summary
    from .runner import BenchError, LoadPlan, default_label, run_bench, setup_accounts

    if args.iters is not None and args.duration is not None:
        return _fail("give either --iters or --duration, not both")
    try:
        spec = _spec(args)
        plan = LoadPlan(
            threads=args.threads,
            accounts=args.accounts,
            iterations=None if args.duration is not None else (
                1000 if args.iters is None else args.iters),
            duration=args.duration,
            processes=args.processes,
            seed=args.seed if args.seed is not None else secrets.randbits(31),
        )
    except ValueError as exc:
        return _fail(str(exc))
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        if args.setup:
            err.print(f"Setting up {args.accounts:,} accounts (balance 100 each)…")
            setup_accounts(spec, args.accounts)
        label = args.label or default_label(spec)
        with ProgressDisplay(err, label, total=plan.iterations,
                             duration=plan.duration, enabled=not args.no_progress) as progress:
            result = run_bench(spec, plan, label=label, progress=progress)
    except BenchError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:  # connection refused, bad credentials, missing function …
        return _fail(f"{type(exc).__name__}: {exc}", 1)
    out.print(render_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        err.print(f"JSON written to {args.json}")
    if args.report:
        from .report import render_report

        Path(args.report).write_text(render_report([result]), encoding="utf-8")
        err.print(f"Report written to {args.report}")
    if result.balances is not None and not result.balances.conserved:
        err.print(
            f"[bold red]MONEY NOT CONSERVED: the balances summed to {result.balances.before} "
            f"before the run and {result.balances.after} after it.[/] Transfers move money; "
            "they never create or destroy it. Something committed half a transfer."
        )
        return EXIT_BALANCES
    return 130 if result.interrupted else 0


def _report(args: argparse.Namespace) -> int:
    from .report import render_report
    from .results import RunResult

    runs = []
    for name in args.results:
        try:
            runs.append(RunResult.from_dict(json.loads(Path(name).read_text())))
        except (OSError, ValueError) as exc:
            return _fail(f"{name}: {exc}")
    Path(args.output).write_text(render_report(runs, title=args.title), encoding="utf-8")
    print(f"Report written to {args.output}")
    return 0
