"""Where credentials come from: the environment fast path, botocore's chain, custom providers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import botocore.credentials
import pytest

from dsqlkit.auth import credentials as cmod
from dsqlkit.auth.credentials import (
    BotocoreCredentialSource,
    CallableCredentialSource,
    EnvCredentialSource,
    StaticCredentialSource,
    credential_source,
)
from dsqlkit.auth.sigv4 import Credentials
from dsqlkit.errors import CredentialsError


@pytest.fixture
def aws_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated AWS configuration: no keys in the environment, no instance metadata."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    (tmp_path / "config").write_text("[profile dev]\nregion = eu-west-1\n")
    (tmp_path / "credentials").write_text(
        "[dev]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(cmod, "_CHAINS", {})
    return tmp_path


def test_environment_fast_path_does_not_import_botocore(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from dsqlkit.auth.credentials import credential_source\n"
        "from dsqlkit.auth.tokens import TokenProvider\n"
        "source = credential_source()\n"
        "c = source.load().credentials\n"
        "assert (c.access_key, c.secret_key, c.session_token) == ('AKIDENV', 's', 'tok'), c\n"
        "TokenProvider('h.dsql.us-east-1.on.aws', 'us-east-1').token()\n"
        "heavy = sorted(m for m in ('botocore', 'boto3', 'asyncio', 'logging', 'typing',\n"
        "               'dataclasses_', 'psycopg') if m in sys.modules)\n"
        "print(type(source).__name__, heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIDENV", AWS_SECRET_ACCESS_KEY="s", AWS_SESSION_TOKEN="tok")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split()[0] == "EnvCredentialSource"
    assert "botocore" not in out and "psycopg" not in out and "asyncio" not in out


def test_environment_is_reread(aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "one")
    source = credential_source()
    assert isinstance(source, EnvCredentialSource) and not source.blocking
    assert source.load().credentials == Credentials("AKID1", "one", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID2")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t2")
    assert source.load().credentials == Credentials("AKID2", "one", "t2")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsError, match="AWS_SECRET_ACCESS_KEY"):
        source.load()


def test_explicit_profile_beats_the_environment(
    aws_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    source = credential_source(profile="dev")
    assert isinstance(source, BotocoreCredentialSource) and source.blocking
    assert source.load().credentials == Credentials("AKIDPROFILE", "profile-secret", None)
    # One resolution per profile and process.
    assert credential_source(profile="dev") is source


def test_default_chain_reads_aws_profile(aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert credential_source().load().credentials.access_key == "AKIDPROFILE"


def test_no_credentials_names_the_fix(aws_home: Path) -> None:
    source = credential_source()
    with pytest.raises(CredentialsError) as info:
        source.load()
    message = str(info.value)
    assert "no AWS credentials found" in message
    assert "AWS_ACCESS_KEY_ID" in message and "profile=" in message


def test_unknown_profile(aws_home: Path) -> None:
    with pytest.raises(CredentialsError, match="profile 'nope' not found"):
        credential_source(profile="nope").load()


def test_callable_provider_is_called_on_every_load() -> None:
    calls: list[int] = []

    def provider() -> Credentials:
        calls.append(1)
        return Credentials(f"AKID{len(calls)}", "secret")

    source = credential_source(provider)
    assert isinstance(source, CallableCredentialSource)
    assert source.load().credentials.access_key == "AKID1"
    assert source.load().credentials.access_key == "AKID2"


def test_callable_may_return_botocore_credentials() -> None:
    frozen = botocore.credentials.Credentials("AKIDBOTO", "boto-secret", "boto-token")
    loaded = credential_source(lambda: frozen).load()
    assert loaded.credentials == Credentials("AKIDBOTO", "boto-secret", "boto-token")


def test_bad_providers() -> None:
    with pytest.raises(CredentialsError, match="returned None"):
        credential_source(lambda: None).load()
    with pytest.raises(CredentialsError, match="not credentials"):
        credential_source(lambda: "AKID:secret").load()

    def failing() -> Credentials:
        raise RuntimeError("sts is down")

    with pytest.raises(CredentialsError, match="sts is down"):
        credential_source(failing).load()
    with pytest.raises(CredentialsError, match="must be a callable"):
        credential_source(42)


def test_fixed_credentials() -> None:
    creds = Credentials("AKIDFIXED", "fixed")
    source = credential_source(creds)
    assert isinstance(source, StaticCredentialSource)
    assert source.load().credentials is creds
    boto = botocore.credentials.Credentials("AKIDB", "b")
    assert credential_source(boto).load().credentials == Credentials("AKIDB", "b", None)


class CountingProvider(botocore.credentials.CredentialProvider):
    METHOD = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return botocore.credentials.Credentials("AKIDPROV", "prov-secret", method=self.METHOD)


def test_botocore_credential_provider_is_loaded_once() -> None:
    provider = CountingProvider()
    source = credential_source(provider)
    assert isinstance(source, BotocoreCredentialSource)
    assert "counting" in repr(source)
    for _ in range(3):
        assert source.load().credentials.access_key == "AKIDPROV"
    assert provider.loads == 1


def test_botocore_provider_returning_nothing() -> None:
    class Empty(botocore.credentials.CredentialProvider):
        METHOD = "empty"

        def load(self) -> None:
            return None

    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        credential_source(Empty()).load()


def test_refreshable_credentials_refresh_before_expiry() -> None:
    issued: list[datetime] = []

    def refresh() -> dict[str, str]:
        expiry = datetime.now(timezone.utc) + timedelta(minutes=5 if not issued else 60)
        issued.append(expiry)
        return {
            "access_key": f"AKIDR{len(issued)}",
            "secret_key": "r",
            "token": f"t{len(issued)}",
            "expiry_time": expiry.isoformat(),
        }

    creds = botocore.credentials.RefreshableCredentials.create_from_metadata(
        refresh(), refresh, "test"
    )
    source = credential_source(creds)
    loaded = source.load()
    # Five minutes left is inside botocore's mandatory refresh window: refreshed now.
    assert loaded.credentials.access_key == "AKIDR2"
    assert loaded.expires_at is not None
    assert abs(loaded.expires_at - issued[-1].timestamp()) < 1
    assert source.load().credentials.access_key == "AKIDR2"


def test_reprs_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("AKIDSHOWN", "hidden-secret", "hidden-token")
    loaded = StaticCredentialSource(creds).load()
    assert "hidden" not in repr(loaded) and "AKIDSHOWN" in repr(loaded)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSHOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hidden-secret")
    assert "hidden" not in repr(credential_source())


def test_protocol_is_available_at_run_time() -> None:
    from dsqlkit.auth.credentials import CredentialsProvider

    assert isinstance(lambda: Credentials("a", "b"), CredentialsProvider)
