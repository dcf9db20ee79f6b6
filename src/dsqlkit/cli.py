"""The ``dsqlkit`` command line. Each subcommand is a thin call into the modules that do the work.

Subcommands register themselves in :data:`COMMANDS`: a name, a one-line help text and the
dotted path of a ``configure(parser)`` function and a ``run(args) -> int`` function. Modules
are imported only when their subcommand runs, so ``dsqlkit --help`` stays fast and a missing
optional dependency only affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

# name -> (help, module path); the module provides configure(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "local": ("run a local Aurora DSQL endpoint (TLS, IAM tokens, embedded PostgreSQL)",
              "dsqlkit.local.cli"),
    "token": ("print an IAM auth token, as 'aws dsql generate-db-connect-auth-token' does",
              "dsqlkit.auth.cli"),
    "check": ("report the statements Aurora DSQL would refuse", "dsqlkit.checker"),
    "bench": ("load-test the DAT401 transfer workload: OCC conflicts, retries, latency",
              "dsqlkit.bench.cli"),
    "demo": ("the DAT401 story on a local endpoint: conflicts without retry, none with it",
             "dsqlkit.demo"),
    "lambda": ("serve Python handlers over the AWS Lambda Invoke API", "dsqlkit.lambda_local.cli"),
}


def _load(module: str, attr: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


def build_parser() -> argparse.ArgumentParser:
    from dsqlkit import __version__

    parser = argparse.ArgumentParser(
        prog="dsqlkit",
        description="The Python toolkit for Amazon Aurora DSQL.",
    )
    parser.add_argument("--version", action="version", version=f"dsqlkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            _load(module, "configure")(p)
        except ImportError as exc:
            p.set_defaults(_import_error=str(exc))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "_import_error", None):
        print(
            f"dsqlkit {args.command}: a dependency is missing ({args._import_error}); "
            "install it with: pip install 'dsqlkit[all]'",
            file=sys.stderr,
        )
        return 2
    try:
        rc: int = _load(args._module, "run")(args)
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
