"""Connection-string parsing: a table of valid and invalid inputs, and the rules around them."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import pytest

import dsqlkit
from dsqlkit.config import (
    DsqlConfig,
    is_cluster_id,
    region_from_hostname,
    resolve_region,
    system_ca_file,
)
from dsqlkit.errors import ConfigError

CID = "abcdefghijklmnopqrstuvwxyz"
HOST = f"{CID}.dsql.us-east-1.on.aws"
APP = f"dsqlkit/{dsqlkit.__version__}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "PGSSLROOTCERT"):
        monkeypatch.delenv(var, raising=False)
    # No region may leak in from a developer's ~/.aws/config.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


@pytest.fixture
def ca(tmp_path: Path) -> str:
    path = tmp_path / "root.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


VALID: list[tuple[str, dict[str, Any]]] = [
    (f"postgres://admin@{HOST}/postgres",
     dict(host=HOST, region="us-east-1", user="admin", database="postgres", port=5432)),
    (f"postgresql://{HOST}", dict(host=HOST, user="admin", database="postgres")),
    (f"postgres://app@{HOST}:6543/postgres",
     dict(user="app", port=6543)),
    (f"postgres://admin@{CID}/postgres?region=eu-west-1",
     dict(host=f"{CID}.dsql.eu-west-1.on.aws", region="eu-west-1")),
    (f"postgres://admin@{HOST}/postgres?region=us-east-1",
     dict(region="us-east-1")),
    (f"postgres://admin@{HOST}/postgres?token_duration_secs=60",
     dict(token_duration_secs=60)),
    (f"postgres://admin@{HOST}/postgres?tokenDurationSecs=604800",
     dict(token_duration_secs=604800)),
    (f"postgres://admin@{HOST}/postgres?profile=dev", dict(profile="dev")),
    (f"postgres://admin@{HOST}/postgres?application_name=myorm",
     dict(application_name=f"myorm:{APP}")),
    (f"postgres://admin@{HOST}/postgres?application_name=%20",
     dict(application_name=APP)),
    (f"postgres://admin@{HOST}/postgres?connect_timeout=5&hostaddr=127.0.0.1",
     dict(params=(("connect_timeout", "5"), ("hostaddr", "127.0.0.1")))),
    (f"postgres://admin@{HOST}/postgres?options=-c%20search_path%3Dapp",
     dict(params=(("options", "-c search_path=app"),))),
    (f"postgres://us%65r@{HOST}/postgres", dict(user="user")),
    (f"postgres://admin@{HOST}/postgres?sslnegotiation=postgres",
     dict(sslnegotiation="postgres")),
    (f"postgres://admin@{HOST}/postgres?sslmode=verify-ca", dict(sslmode="verify-ca")),
    (f"postgres://admin@{HOST}/postgres?sslmode=require",
     dict(sslmode="require", sslrootcert=None)),
    ("postgres://admin@[::1]:5433/postgres?region=us-west-2",
     dict(host="::1", port=5433, region="us-west-2")),
    (f"postgres://admin@{CID}.dsql-gamma.us-west-2.on.aws/postgres",
     dict(region="us-west-2")),
    (f"host={HOST}", dict(host=HOST, user="admin", database="postgres")),
    (f"host={HOST} user=app dbname=postgres port=5432 sslrootcert=system",
     dict(user="app", sslrootcert="system")),
    (f"host = {CID}   region = ap-southeast-1 application_name='my app'",
     dict(host=f"{CID}.dsql.ap-southeast-1.on.aws", application_name=f"my app:{APP}")),
    (f"host={HOST} options='-c search_path=a\\'b'",
     dict(params=(("options", "-c search_path=a'b"),))),
    (CID + " ", dict(host=CID, region=None)),  # region from the environment, see below
    (HOST, dict(host=HOST, region="us-east-1")),
]


@pytest.mark.parametrize(("conninfo", "expected"), VALID)
def test_valid(conninfo: str, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    if expected.get("region", "x") is None:
        monkeypatch.setenv("AWS_REGION", "sa-east-1")
        expected = dict(host=f"{CID}.dsql.sa-east-1.on.aws", region="sa-east-1")
    config = DsqlConfig.from_connection_string(conninfo)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_defaults() -> None:
    config = DsqlConfig.from_connection_string(HOST)
    assert (config.user, config.database, config.port) == ("admin", "postgres", 5432)
    assert config.token_duration_secs == 900
    assert config.sslmode == "verify-full" and config.sslrootcert == "system"
    assert config.sslnegotiation is None
    assert config.application_name == APP
    assert config.params == () and config.profile is None
    assert config.refresh_interval == 720.0
    assert config.is_admin


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("", {}, "host is required"),
    ("mysql://admin@host/db", {}, "unsupported URL scheme 'mysql'"),
    ("postgres:///postgres?region=us-east-1", {}, "host is required"),
    (f"postgres://admin@{HOST}:99999/postgres", {}, "invalid port"),
    (f"postgres://admin@{HOST}:abc/postgres", {}, "invalid port"),
    (f"postgres://admin@{HOST},{HOST}/postgres", {}, "several hosts"),
    (f"postgres://admin@{HOST}/postgres?token_duration_secs=0", {}, "out of range"),
    (f"postgres://admin@{HOST}/postgres?token_duration_secs=604801", {}, "604800"),
    (f"postgres://admin@{HOST}/postgres?token_duration_secs=15m", {}, "whole number"),
    (f"postgres://admin@{HOST}/postgres?token_duration_secs=-5", {}, "whole number"),
    (f"postgres://admin@{HOST}/postgres?region=eu-west-1", {}, "contradicts the hostname"),
    (f"postgres://admin@{HOST}/postgres?region=US-EAST-1", {}, "lower-case AWS region"),
    (f"postgres://admin@{HOST}/postgres?sslmode=strict", {}, "invalid sslmode"),
    (f"postgres://admin@{HOST}/postgres?sslnegotiation=fast", {}, "invalid sslnegotiation"),
    (f"postgres://admin@{HOST}/postgres?sslmode=prefer&sslnegotiation=direct", {},
     "needs TLS"),
    (f"postgres://admin@{HOST}/postgres?sslrootcert=/nonexistent/root.pem", {},
     "does not exist"),
    (f"postgres://admin@{HOST}/postgres?bogus=1", {}, "unknown connection parameter 'bogus'"),
    (f"postgres://admin@{HOST}/postgres?region", {}, "has no value"),
    (f"postgres://admin@{HOST}/postgres?user=x", {}, "given twice"),
    (f"postgres://admin@{HOST}/postgres#frag", {}, "fragment"),
    (f"postgres://admin@{HOST}/a/b", {}, "invalid database name"),
    (f"postgres://admin@{HOST}/postgres?application_name=%zz", {}, "percent-escape"),
    (f"host={HOST} user", {}, "missing '='"),
    (f"host={HOST} options='unterminated", {}, "unterminated"),
    (f"host={HOST} host={HOST}", {}, "given twice"),
    (f"host={HOST} 1x=2", {}, "invalid parameter name"),
    ("localhost", {}, "region could not be determined"),
    ("abcdefghijklmnopqrstuvwxyz", {}, "region could not be determined"),
    ("host=/tmp region=us-east-1", {}, "Unix socket"),
    ("two words", {}, "cannot parse"),
    (HOST, {"port": 0}, "invalid port"),
    (HOST, {"token_duration_secs": 1.5}, "must be an integer"),
    (HOST, {"token_duration_secs": True}, "whole number"),
    (HOST, {"nonsense": 1}, "unknown connection parameter"),
    (HOST, {"user": ""}, "user must not be empty"),
    (HOST, {"options": object()}, "string or number"),
]


@pytest.mark.parametrize(("conninfo", "overrides", "message"), INVALID)
def test_invalid(conninfo: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DsqlConfig.from_connection_string(conninfo, **overrides)
    assert message in str(info.value)


def test_errors_never_echo_a_password() -> None:
    with pytest.raises(ConfigError) as info:
        DsqlConfig.from_connection_string("password=hunter2 two words")
    assert "hunter2" not in str(info.value)


def test_password_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dsqlkit.config"):
        config = DsqlConfig.from_connection_string(f"postgres://admin:hunter2@{HOST}/postgres")
    assert "ignoring the password" in caplog.text and "hunter2" not in caplog.text
    assert "hunter2" not in repr(config)
    assert "password" not in config.libpq_params(None, libpq_version=180000)


def test_weak_tls_needs_an_explicit_parameter_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dsqlkit.config"):
        DsqlConfig.from_connection_string(HOST)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="dsqlkit.config"):
        config = DsqlConfig.from_connection_string(HOST, sslmode="require")
    assert "sslmode=require weakens TLS" in caplog.text
    assert config.sslmode == "require"


def test_pgsslmode_in_the_environment_does_not_weaken_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGSSLMODE", "disable")
    params = DsqlConfig.from_connection_string(HOST).libpq_params("t", libpq_version=180000)
    assert params["sslmode"] == "verify-full"


def test_sslrootcert_sources(monkeypatch: pytest.MonkeyPatch, ca: str) -> None:
    assert DsqlConfig.from_connection_string(HOST, sslrootcert=ca).sslrootcert == ca
    monkeypatch.setenv("PGSSLROOTCERT", ca)
    assert DsqlConfig.from_connection_string(HOST).sslrootcert == ca
    assert DsqlConfig.from_connection_string(HOST, sslrootcert="system").sslrootcert == "system"


def test_region_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert resolve_region("eu-west-1", "localhost", environ=env) == "eu-west-1"
    assert resolve_region(None, HOST, environ={"AWS_REGION": "eu-west-1"}) == "us-east-1"
    assert resolve_region(None, "localhost", environ={
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-2"}) == "eu-west-1"
    assert resolve_region(None, "localhost", environ={"AWS_DEFAULT_REGION": "eu-west-2"}) \
        == "eu-west-2"
    config_file = tmp_path / "config"
    config_file.write_text("[default]\nregion = ca-central-1\n[profile dev]\nregion = me-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    assert resolve_region(None, "localhost", environ=env) == "ca-central-1"
    assert resolve_region(None, "localhost", "dev", environ=env) == "me-south-1"
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        resolve_region(None, "localhost", "nope", environ=env)
    config = DsqlConfig.from_connection_string(CID, profile="dev")
    assert config.host == f"{CID}.dsql.me-south-1.on.aws"


def test_cluster_id_and_hostname_rules() -> None:
    assert is_cluster_id(CID)
    for bad in (CID[:-1], CID + "a", CID.upper(), "abcdefghijklmnopqrstuvwxy.", ""):
        assert not is_cluster_id(bad)
    assert region_from_hostname(HOST) == "us-east-1"
    assert region_from_hostname(f"{CID}.dsql-abc.ap-southeast-1.on.aws") == "ap-southeast-1"
    assert region_from_hostname(f"{CID.upper()}.DSQL.EU-WEST-1.ON.AWS") == "eu-west-1"
    for other in ("localhost", "example.com", "", f"{CID}.rds.us-east-1.on.aws",
                  "dsql.us-east-1.on.aws", f"{CID}.dsql.us_east_1.on.aws"):
        assert region_from_hostname(other) is None


def test_libpq_params() -> None:
    config = DsqlConfig.from_connection_string(
        f"postgres://app@{HOST}/postgres?hostaddr=127.0.0.1&connect_timeout=3"
    )
    params = config.libpq_params("TOKEN", libpq_version=170000)
    assert params == {
        "host": HOST, "port": 5432, "user": "app", "dbname": "postgres", "password": "TOKEN",
        "sslmode": "verify-full", "sslrootcert": system_ca_file(), "sslnegotiation": "direct",
        "application_name": APP, "hostaddr": "127.0.0.1", "connect_timeout": "3",
    }
    # libpq 16 has no direct TLS: fall back to the SSLRequest preamble, silently.
    assert "sslnegotiation" not in config.libpq_params("T", libpq_version=160004)
    explicit = config.with_params(sslnegotiation="direct")
    with pytest.raises(ConfigError, match="libpq 17"):
        explicit.libpq_params("T", libpq_version=160004)
    weak = config.with_params(sslmode="require")
    assert "sslnegotiation" in weak.libpq_params("T", libpq_version=170000)
    weaker = config.with_params(sslmode="prefer")
    assert "sslnegotiation" not in weaker.libpq_params("T", libpq_version=170000)
    assert "sslrootcert" not in weaker.libpq_params("T", libpq_version=170000)


def test_system_trust_store_is_a_real_file() -> None:
    # The binary wheels' OpenSSL looks for roots where none are: dsqlkit hands libpq a file.
    path = system_ca_file()
    assert Path(path).is_file() and "BEGIN CERTIFICATE" in Path(path).read_text()


def test_immutable_hashable_picklable() -> None:
    config = DsqlConfig.from_connection_string(HOST)
    with pytest.raises(AttributeError, match="immutable"):
        config.host = "x"  # type: ignore[misc]
    same = DsqlConfig.from_connection_string(f"postgres://admin@{HOST}/postgres")
    assert config == same and hash(config) == hash(same)
    assert pickle.loads(pickle.dumps(config)) == config
    assert config != config.with_params(user="app")
    assert "DsqlConfig(host=" in repr(config)


def test_with_params() -> None:
    config = DsqlConfig.from_connection_string(f"{HOST}", application_name="orm")
    changed = config.with_params(user="app", token_duration_secs=60, connect_timeout=2)
    assert (changed.user, changed.token_duration_secs) == ("app", 60)
    assert changed.param("connect_timeout") == "2"
    assert changed.application_name == f"orm:{APP}"
    assert config.with_params(application_name="other").application_name == f"other:{APP}"
    moved = config.with_params(host=f"{CID}.dsql.eu-west-1.on.aws")
    assert moved.region == "eu-west-1"
    assert config.with_params() is config
    with pytest.raises(ConfigError):
        config.with_params(token_duration_secs=0)


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="region"):
        DsqlConfig(host=HOST, region="Not A Region")
    with pytest.raises(ConfigError, match="unknown connection parameter"):
        DsqlConfig(host=HOST, region="us-east-1", params=(("password", "x"),))
    assert DsqlConfig(host=HOST, region="us-east-1").application_name == APP


def test_credentials_provider_is_kept_but_not_shown() -> None:
    def provider() -> Any:
        raise AssertionError("not called while parsing")

    config = DsqlConfig.from_connection_string(HOST, credentials_provider=provider)
    assert config.credentials_provider is provider
    assert "credentials_provider=<function>" in repr(config)
    alias = DsqlConfig.from_connection_string(HOST, credentials=provider)
    assert alias.credentials_provider is provider
