"""The ``dsqlkit`` command line. Each subcommand is a thin call into the modules that do the work.

Subcommands register themselves in :data:`COMMANDS`: a name, a one-line help text and the
dotted path of a module with a ``configure(parser)`` function and a ``run(args) -> int``
function. :func:`build_parser` imports none of them: a subcommand's module is imported, and
its arguments added, only when that subcommand is parsed (or its ``--help`` shown). So
``dsqlkit token`` (run in shell prompts and ``PGPASSWORD="$(…)"`` lines) pays for the token
code alone, not for the local endpoint's SQL parser or the benchmark's report, and a missing
optional dependency only affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    import importlib

    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that adds its arguments on first use.

    argparse hands a subcommand's arguments to its parser's ``parse_known_args``, and asks
    it for ``format_help``/``format_usage`` for ``--help`` and errors: those are the moments
    the subcommand's module must be imported, and no earlier.
    """

    command_module: str | None = None

    def _configure(self) -> None:
        module, self.command_module = self.command_module, None
        if module is None:
            return
        try:
            _load(module, "configure")(self)
        except ImportError as exc:
            self.set_defaults(_import_error=str(exc))

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        self._configure()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._configure()
        return super().format_usage()

    def format_help(self) -> str:
        self._configure()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The ``dsqlkit`` parser; imports no subcommand module (see :class:`_CommandParser`)."""
    from dsqlkit import __version__

    parser = argparse.ArgumentParser(
        prog="dsqlkit",
        description="The Python toolkit for Amazon Aurora DSQL.",
        epilog="Run 'dsqlkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dsqlkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_CommandParser)
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.command_module = module
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    import logging

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
