"""The ``aws`` that ``dsqlkit local run`` puts first on the command's PATH.

DSQL's shell samples mint their passwords with ``aws dsql generate-db-connect-auth-token`` and
``aws dsql generate-db-connect-admin-auth-token``, which only the AWS CLI v2 has. This
``aws`` answers those two with dsqlkit's own token code (the same output as the AWS CLI, for
the credentials and region in the environment) and hands any other command to the real
``aws`` further down the PATH, unchanged.

Run as ``python -m dsqlkit.local.awscli ARGS``; ``DSQLKIT_AWS_SHIM_DIR`` names the directory
of the shim itself, so that it never finds itself as the real ``aws``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

TOKEN_COMMANDS = {
    "generate-db-connect-auth-token": False,
    "generate-db-connect-admin-auth-token": True,
}
# Options (AWS CLI global ones and the two commands' own) that take a value.
_VALUED = {
    "--hostname", "--region", "--expires-in", "--profile", "--output", "--endpoint-url",
    "--query", "--color", "--ca-bundle", "--cli-read-timeout", "--cli-connect-timeout",
    "--cli-binary-format",
}
# Global flags that change nothing about a token.
_FLAGS = {
    "--debug", "--no-verify-ssl", "--no-paginate", "--no-cli-pager", "--no-sign-request",
    "--cli-auto-prompt", "--no-cli-auto-prompt",
}
SHIM_DIR_ENV = "DSQLKIT_AWS_SHIM_DIR"


def parse_token_command(argv: Sequence[str]) -> dict[str, str] | None:
    """The options of a ``dsql generate-db-connect[-admin]-auth-token`` command line (plus
    ``admin``), or None when ``argv`` is any other command."""
    positionals: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in _FLAGS and not eq:
                i += 1
                continue
            if name not in _VALUED:
                return None
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            options[name[2:]] = value
        else:
            positionals.append(arg)
        i += 1
    if len(positionals) != 2 or positionals[0] != "dsql" or positionals[1] not in TOKEN_COMMANDS:
        return None
    options["admin"] = "yes" if TOKEN_COMMANDS[positionals[1]] else ""
    return options


def real_aws() -> str | None:
    """The first ``aws`` on the PATH that is not this shim."""
    shim = os.environ.get(SHIM_DIR_ENV)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not (shim and os.path.realpath(p) == os.path.realpath(shim))
    )
    return shutil.which("aws", path=path)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_token_command(args)
    if options is None:
        aws = real_aws()
        if aws is None:
            print("aws: the AWS CLI is not installed; under 'dsqlkit local run' this 'aws' "
                  "answers only 'aws dsql generate-db-connect-auth-token' and "
                  "'aws dsql generate-db-connect-admin-auth-token'", file=sys.stderr)
            return 127
        os.execv(aws, [aws, *args])
    if "hostname" not in options:
        print("aws: error: the following arguments are required: --hostname", file=sys.stderr)
        return 252
    import argparse

    from dsqlkit.auth import cli

    try:
        expires_in = int(options.get("expires-in", "900"))
    except ValueError:
        print(f"aws: error: invalid --expires-in {options['expires-in']!r}", file=sys.stderr)
        return 252
    return cli.run(argparse.Namespace(
        hostname=options["hostname"], region=options.get("region"),
        admin=bool(options["admin"]), expires_in=expires_in, profile=options.get("profile"),
    ))


if __name__ == "__main__":
    sys.exit(main())
