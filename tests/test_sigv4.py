"""Differential test: our SigV4 presigner against botocore's DSQL token generator.

botocore's ``generate_db_connect_auth_token`` / ``generate_db_connect_admin_auth_token`` is the
reference (it is what boto3, the AWS CLI and the official connector call). For arbitrary hosts,
regions, keys, session tokens, lifetimes and instants, our token must be the same string,
byte for byte. The instant is pinned by patching ``botocore.auth.get_current_datetime``.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import botocore.auth
import botocore.session
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dsqlkit.auth import sigv4
from dsqlkit.auth.tokens import cached_signing_key

_SESSION = botocore.session.Session()
_SESSION.set_credentials("AKIDBOOTSTRAP", "bootstrap")  # never used to sign


def botocore_token(
    host: str,
    region: str,
    creds: sigv4.Credentials,
    *,
    admin: bool,
    expires_in: int,
    now: datetime,
) -> str:
    client: Any = _SESSION.create_client(
        "dsql",
        # The client's own region must be a valid host label; the token's is the argument.
        region_name="us-east-1",
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.session_token,
    )
    naive = now.astimezone(timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive):
        if admin:
            token = client.generate_db_connect_admin_auth_token(host, region, expires_in)
        else:
            token = client.generate_db_connect_auth_token(host, region, expires_in)
    assert isinstance(token, str)
    return token


_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-")
)
dsql_hosts = st.builds(
    lambda cid, region, suffix: f"{cid}.dsql{suffix}.{region}.on.aws",
    st.text(string.ascii_lowercase + string.digits, min_size=26, max_size=26),
    st.sampled_from(["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1", "il-central-1"]),
    st.sampled_from(["", "-gamma", "-fips"]),
)
other_hosts = st.lists(_label, min_size=1, max_size=5).map(".".join)
hosts = st.one_of(
    dsql_hosts,
    other_hosts,
    st.sampled_from(["localhost", "127.0.0.1"]),
    # Case and ports: the host header SigV4 signs is lower-cased, the token keeps the input.
    st.builds(lambda h, p: f"{h}:{p}", other_hosts, st.integers(1, 65535)),
    other_hosts.map(str.upper),
)
regions = st.one_of(
    st.sampled_from(["us-east-1", "us-east-2", "us-west-2", "eu-central-1", "us-gov-west-1",
                     "cn-north-1", "ap-northeast-3"]),
    st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=25),
)
access_keys = st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=128)
secret_keys = st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=64)
session_tokens = st.one_of(
    st.none(),
    st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=1200),
    # Whatever characters a custom provider hands us are percent-encoded the same way.
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80),
)
expiries = st.one_of(
    st.integers(1, sigv4.MAX_EXPIRES_IN),
    st.sampled_from([1, 60, 900, 3600, sigv4.MAX_EXPIRES_IN]),
)
instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59),
    timezones=st.just(timezone.utc),
).map(lambda d: d.replace(microsecond=0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host=hosts,
    region=regions,
    access_key=access_keys,
    secret_key=secret_keys,
    session_token=session_tokens,
    expires_in=expiries,
    now=instants,
    admin=st.booleans(),
)
@example(
    host="abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", region="us-east-1",
    access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    session_token="SESSION/TOKEN+==", expires_in=900,
    now=datetime(2026, 11, 22, 10, 23, 41, tzinfo=timezone.utc), admin=True,
)
def test_presign_matches_botocore(
    host: str, region: str, access_key: str, secret_key: str, session_token: str | None,
    expires_in: int, now: datetime, admin: bool,
) -> None:
    creds = sigv4.Credentials(access_key, secret_key, session_token)
    action = sigv4.ADMIN_ACTION if admin else sigv4.CONNECT_ACTION
    ours = sigv4.presign_token(host, region, creds, action=action, expires_in=expires_in, now=now)
    theirs = botocore_token(host, region, creds, admin=admin, expires_in=expires_in, now=now)
    assert ours == theirs
    # The precomputed-key path TokenProvider uses must not change a byte either.
    key = cached_signing_key(secret_key, now.strftime("%Y%m%d"), region)
    assert sigv4.presign_token(
        host, region, creds, action=action, expires_in=expires_in, now=now, key=key
    ) == theirs


@settings(max_examples=60, deadline=None)
@given(now=instants, micro=st.integers(1, 999_999))
def test_sub_second_instants_truncate_like_botocore(now: datetime, micro: int) -> None:
    # botocore formats X-Amz-Date with whole seconds; so do we.
    moment = now + timedelta(microseconds=micro)
    creds = sigv4.Credentials("AKIDEXAMPLE", "secret")
    host = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
    assert sigv4.presign_token(host, "us-east-1", creds, now=moment) == botocore_token(
        host, "us-east-1", creds, admin=False, expires_in=900, now=moment
    )


@pytest.fixture
def fixed_clock() -> Iterator[datetime]:
    yield datetime(2026, 11, 22, 10, 23, 41, tzinfo=timezone.utc)


def test_token_shape(fixed_clock: datetime) -> None:
    creds = sigv4.Credentials("AKIDEXAMPLE", "secret", "SESSION/TOKEN+==")
    token = sigv4.presign_token(
        "abc.dsql.us-east-1.on.aws", "us-east-1", creds,
        action=sigv4.ADMIN_ACTION, expires_in=3600, now=fixed_clock,
    )
    host, _, query = token.partition("/?")
    assert host == "abc.dsql.us-east-1.on.aws"
    names = [pair.split("=", 1)[0] for pair in query.split("&")]
    assert names == [
        "Action", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
        "X-Amz-SignedHeaders", "X-Amz-Security-Token", "X-Amz-Signature",
    ]
    assert "Action=DbConnectAdmin" in query
    assert "X-Amz-Credential=AKIDEXAMPLE%2F20261122%2Fus-east-1%2Fdsql%2Faws4_request" in query
    assert "X-Amz-Security-Token=SESSION%2FTOKEN%2B%3D%3D" in query
    assert "X-Amz-Date=20261122T102341Z" in query


def test_action_for_user() -> None:
    assert sigv4.action_for_user("admin") == "DbConnectAdmin"
    assert sigv4.action_for_user("Admin") == "DbConnect"
    assert sigv4.action_for_user("app") == "DbConnect"


def test_our_tokens_verify(fixed_clock: datetime) -> None:
    # The verifier the local endpoint runs accepts what the presigner mints, and nothing else.
    creds = sigv4.Credentials("AKIDEXAMPLE", "secret", "tok")
    host = "abc.dsql.us-east-1.on.aws"
    token = sigv4.presign_token(host, "us-east-1", creds, now=fixed_clock)
    verified = sigv4.verify_token(
        token, user="app", region="us-east-1", hosts=[host],
        lookup={"AKIDEXAMPLE": creds}.get, now=fixed_clock + timedelta(seconds=10),
    )
    assert verified.action == "DbConnect"
    with pytest.raises(sigv4.TokenRejected):
        sigv4.verify_token(
            token, user="app", region="us-east-1", hosts=[host],
            lookup={"AKIDEXAMPLE": sigv4.Credentials("AKIDEXAMPLE", "other", "tok")}.get,
            now=fixed_clock,
        )


def test_an_unexpected_parameter_is_named_only_when_it_is_a_plain_name(
        fixed_clock: datetime) -> None:
    # A lost '=' runs the session token into its parameter's name: the hint must not echo it.
    session_token = "IQoJb3JpZ2luX2VjEFuzzSessionToken" * 8
    creds = sigv4.Credentials("AKIDEXAMPLE", "secret", session_token)
    host = "abc.dsql.us-east-1.on.aws"
    token = sigv4.presign_token(host, "us-east-1", creds, now=fixed_clock)
    kwargs: dict[str, Any] = dict(user="app", region="us-east-1", hosts=[host],
                                  lookup={"AKIDEXAMPLE": creds}.get, now=fixed_clock)
    # The name swallowed the value up to a '=' of its own.
    merged = token.replace("X-Amz-Security-Token=", "X-Amz-Security-Token", 1).replace(
        "&X-Amz-Signature", "=1&X-Amz-Signature", 1)
    assert "X-Amz-Security-TokenIQoJ" in merged
    with pytest.raises(sigv4.TokenRejected) as refused:
        sigv4.verify_token(merged, **kwargs)
    assert "IQoJb3JpZ2lu" not in str(refused.value)
    assert "unexpected parameter (a name of" in str(refused.value)
    with pytest.raises(sigv4.TokenRejected) as refused:
        sigv4.verify_token(token + "&X-Amz-Extra=1", **kwargs)
    assert str(refused.value).endswith("unexpected parameter X-Amz-Extra")
