"""``dsqlkit token`` against the AWS CLI.

The installed AWS CLI is v1, whose ``dsql`` commands lack the token generators (they live in
AWS CLI v2's ``awscli/customizations/dsql.py``). A v1 plugin, written below, registers the
same two commands the way v2 does: create a ``dsql`` client from the CLI session (so the
CLI's own region, profile and credential resolution apply), call botocore's
``generate_db_connect[_admin]_auth_token(hostname, region, expires_in)`` and print the token
and a newline. Both programs run as subprocesses with the same fake credentials; when they
land in the same second their outputs must be identical, and in any case both tokens must
verify against the credentials with the verifier the local endpoint uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsqlkit.auth import sigv4
from dsqlkit.cli import main

AWS = Path(sys.executable).with_name("aws")

PLUGIN = '''
from awscli.customizations.commands import BasicCommand
from awscli.customizations.utils import uni_print


class _DsqlToken(BasicCommand):
    METHOD = ""
    DESCRIPTION = "test shim for AWS CLI v2's DSQL token commands"
    ARG_TABLE = [
        {"name": "hostname", "required": True},
        {"name": "expires-in", "cli_type_name": "integer", "default": 900, "required": False},
    ]

    def _run_main(self, parsed_args, parsed_globals):
        client = self._session.create_client(
            "dsql", parsed_globals.region, parsed_globals.endpoint_url, parsed_globals.verify_ssl
        )
        token = getattr(client, self.METHOD)(
            parsed_args.hostname, parsed_globals.region, parsed_args.expires_in
        )
        uni_print(token)
        uni_print("\\n")
        return 0


class Connect(_DsqlToken):
    NAME = "generate-db-connect-auth-token"
    METHOD = "generate_db_connect_auth_token"


class Admin(_DsqlToken):
    NAME = "generate-db-connect-admin-auth-token"
    METHOD = "generate_db_connect_admin_auth_token"


def _add(command_table, session, **kwargs):
    command_table[Connect.NAME] = Connect(session)
    command_table[Admin.NAME] = Admin(session)


def awscli_initialize(cli):
    cli.register("building-command-table.dsql", _add)
'''

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
ENV_CREDS = sigv4.Credentials(
    "AKIDEXAMPLEENV00001", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzE+/=="
)
PROFILE_CREDS = sigv4.Credentials("AKIDEXAMPLEPROFILE1", "profile/secret+key=")

# Only the comparisons need the AWS CLI; the error test below runs without it.
needs_aws_cli = pytest.mark.skipif(
    not AWS.exists(),
    reason="the AWS CLI is not installed: pip install -e '.[aws]' (.ci/run does)")


@pytest.fixture
def aws_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "dsql_token_plugin.py").write_text(PLUGIN)
    (tmp_path / "config").write_text(
        "[plugins]\ndsqltoken = dsql_token_plugin\n\n[profile dev]\nregion = eu-west-1\n"
    )
    (tmp_path / "credentials").write_text(
        f"[dev]\naws_access_key_id = {PROFILE_CREDS.access_key}\n"
        f"aws_secret_access_key = {PROFILE_CREDS.secret_key}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update(
        HOME=str(tmp_path),
        PYTHONPATH=str(tmp_path),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_ACCESS_KEY_ID=ENV_CREDS.access_key,
        AWS_SECRET_ACCESS_KEY=ENV_CREDS.secret_key,
        AWS_SESSION_TOKEN=ENV_CREDS.session_token or "",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def _run_both(aws_args: list[str], ours: list[str], env: dict[str, str]) -> tuple[str, str]:
    # The AWS CLI starts much slower: start it first so both sign at about the same time.
    aws = subprocess.Popen([str(AWS), *aws_args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    mine = subprocess.Popen([sys.executable, "-m", "dsqlkit", "token", *ours], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    aws_out, aws_err = aws.communicate(timeout=60)
    my_out, my_err = mine.communicate(timeout=60)
    assert aws.returncode == 0, aws_err
    assert mine.returncode == 0, my_err
    return aws_out, my_out


def _params(token: str) -> dict[str, str]:
    return sigv4.parse_token(token.strip()).params


def _assert_same(
    aws_args: list[str], ours: list[str], env: dict[str, str], creds: sigv4.Credentials, *,
    region: str, user: str, host: str = HOST,
) -> None:
    for _ in range(8):
        aws_out, my_out = _run_both(aws_args, ours, env)
        assert my_out.endswith("\n") and my_out.count("\n") == 1
        if _params(aws_out)["X-Amz-Date"] == _params(my_out)["X-Amz-Date"]:
            assert my_out == aws_out
            break
        a, b = _params(aws_out), _params(my_out)
        for name in ("X-Amz-Date", "X-Amz-Signature", "X-Amz-Credential"):
            a.pop(name), b.pop(name)
        assert a == b
    else:  # pragma: no cover - eight misses in a row: a very slow machine
        pass
    # Whatever the second, both tokens are valid signatures for these credentials.
    for out in (aws_out, my_out):
        token = out.strip()
        issued = datetime.strptime(_params(token)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=timezone.utc
        )
        sigv4.verify_token(
            token, user=user, region=region, hosts=[host],
            lookup={creds.access_key: creds}.get, now=issued + timedelta(seconds=1),
        )


@needs_aws_cli
def test_connect_token_matches_aws_cli(aws_env: dict[str, str]) -> None:
    _assert_same(
        ["dsql", "generate-db-connect-auth-token", "--hostname", HOST, "--region", "us-east-1"],
        ["--hostname", HOST, "--region", "us-east-1"],
        aws_env, ENV_CREDS, region="us-east-1", user="app",
    )


@needs_aws_cli
def test_admin_token_with_expiry_matches_aws_cli(aws_env: dict[str, str]) -> None:
    _assert_same(
        ["dsql", "generate-db-connect-admin-auth-token", "--hostname", HOST,
         "--region", "us-east-1", "--expires-in", "3600"],
        ["--hostname", HOST, "--region", "us-east-1", "--admin", "--expires-in", "3600"],
        aws_env, ENV_CREDS, region="us-east-1", user="admin",
    )


@needs_aws_cli
def test_profile_matches_aws_cli(aws_env: dict[str, str]) -> None:
    # An explicit profile beats the environment's keys, in both; its region comes from config.
    host = "localhost"
    _assert_same(
        ["dsql", "generate-db-connect-admin-auth-token", "--hostname", host, "--profile", "dev"],
        ["--hostname", host, "--admin", "--profile", "dev"],
        aws_env, PROFILE_CREDS, region="eu-west-1", user="admin", host=host,
    )


@needs_aws_cli
def test_default_region_matches_aws_cli(aws_env: dict[str, str]) -> None:
    env = dict(aws_env, AWS_DEFAULT_REGION="ap-southeast-2")
    _assert_same(
        ["dsql", "generate-db-connect-auth-token", "--hostname", "db.internal"],
        ["--hostname", "db.internal"],
        env, ENV_CREDS, region="ap-southeast-2", user="app", host="db.internal",
    )


def test_token_command_errors_name_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-printed")
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    assert main(["token", "--hostname", HOST, "--expires-in", "604801"]) == 1
    assert "1 to 604800" in capsys.readouterr().err
    assert main(["token", "--hostname", HOST, "--region", "eu-west-1"]) == 1
    err = capsys.readouterr().err
    assert "contradicts the hostname" in err and "secret-never-printed" not in err
    assert main(["token", "--hostname", "db.internal"]) == 1
    assert "--region" in capsys.readouterr().err
    assert main(["token", "--hostname", HOST]) == 0
    out = capsys.readouterr().out
    assert out.startswith(HOST + "/?Action=DbConnect&") and out.endswith("\n")
