"""The ``dsqlkit`` command line imports a subcommand's module only when that subcommand runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dsqlkit import cli

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
HEAVY = ("dsqlkit.local", "dsqlkit.checker", "dsqlkit.bench", "dsqlkit.demo",
         "dsqlkit.lambda_local", "pglast", "psycopg", "asyncio", "ssl", "botocore")


def _modules_after(code: str) -> set[str]:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, env=env).stdout
    return set(out.split("\n")[-2].split())


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


def test_build_parser_imports_no_subcommand() -> None:
    modules = _modules_after("from dsqlkit.cli import build_parser\nbuild_parser()")
    assert not {m for _, m in cli.COMMANDS.values()} & modules
    assert _heavy(modules) == []


def test_token_imports_only_the_token_path() -> None:
    modules = _modules_after(
        "import contextlib, io\nfrom dsqlkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['token', '--hostname', '{HOST}']) == 0")
    assert "dsqlkit.auth.cli" in modules
    assert _heavy(modules) == []


def test_help_lists_every_command_and_each_command_has_its_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    for name, (help_text, _) in cli.COMMANDS.items():
        assert name in top and help_text.split()[0] in top
    with pytest.raises(SystemExit):
        cli.main(["token", "--help"])
    assert "--hostname" in capsys.readouterr().out
    # Parsed without --help too: the subcommand's own options and defaults are there.
    args = cli.build_parser().parse_args(["token", "--hostname", HOST])
    assert args.expires_in == 900 and args._module == "dsqlkit.auth.cli"


def test_a_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.COMMANDS, "broken", ("needs a module that is not installed",
                                                 "dsqlkit_no_such_module.cli"))
    assert cli.main(["broken"]) == 2
    err = capsys.readouterr().err
    assert "dsqlkit broken: a dependency is missing" in err
    assert "pip install 'dsqlkit[all]'" in err
