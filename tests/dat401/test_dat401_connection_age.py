"""A warm function keeps working after DSQL closes its connection (the 60-minute cap) and after
its IAM token expired, without a failed invocation.

A second front end over the bank's database closes every session after 2.5 s, and the
functions mint 2-second tokens. Between invocations the execution environment is frozen, as
on Lambda, so neither the pool's housekeeping nor the token refresher runs while we wait: the
next invocation finds a dead connection and an expired token, and must cope inline.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg
import pytest
from dat401_support import EXAMPLES, function_env, invoke, lambda_client

from dsqlkit.lambda_local import LambdaServer
from dsqlkit.local import LocalDSQL

CAP = 2.5


@pytest.fixture(scope="module")
def capped(bank_endpoint: LocalDSQL) -> Iterator[LocalDSQL]:
    with LocalDSQL(bank_endpoint.data_dir, backend_url=bank_endpoint.backend_url, port=0,
                   max_connection_age=CAP) as ep:
        yield ep


def test_connection_survives_the_age_cap_and_token_expiry(
    bank_endpoint: LocalDSQL, capped: LocalDSQL, fresh_accounts: None
) -> None:
    env = function_env(bank_endpoint, port=capped.port)
    # Not 1 s: X-Amz-Date has whole seconds, so a 1-second token minted late in a second
    # can expire before its connection handshake completes.
    env["DSQL_TOKEN_DURATION_SECS"] = "2"
    with LambdaServer(EXAMPLES, env=env, concurrency=1, inherit_env=False) as srv:
        client = lambda_client(srv.endpoint_url)
        transfer = {"payer_id": 21, "payee_id": 22, "amount": 1}
        assert invoke(client, "ch03", {"id": 21}).body == {"balance": "100"}
        assert invoke(client, "ch04", transfer).ok
        assert invoke(client, "ch05", transfer).ok
        accepted = capped.server.stats["accepted"]

        # The control: a connection opened after the first round is closed by the endpoint
        # at the cap. By then the functions' connections (older) are closed too, and their
        # tokens (2 s, minted before it) have expired.
        bare = psycopg.connect(capped.dsn(), autocommit=True)
        readable, _, _ = select.select([bare.fileno()], [], [], CAP + 10)
        assert readable, "the endpoint did not close the connection at its age cap"
        with pytest.raises(psycopg.OperationalError):
            bare.execute("SELECT 1")
        bare.close()

        assert invoke(client, "ch03", {"id": 21}).body == {"balance": "98"}
        result = invoke(client, "ch04", transfer)
        assert result.ok, result.body
        result = invoke(client, "ch05", transfer)
        assert result.ok, result.body
        assert result.body == {**result.body, "payer_balance": "96", "attempts": 1}

        stats = srv.stats()
        for name in ("ch03", "ch04", "ch05"):
            assert stats[name]["function_errors"] == 0, stats[name]
            # The same warm environment served both rounds: its pool replaced the
            # connection; nothing restarted the function.
            assert stats[name]["environments_started"] == 1
            assert stats[name]["invocations"] == 2
        # Three new connections after the pause (one per function), each with a token that
        # was minted after the old one expired: none was refused.
        assert capped.server.stats["accepted"] - accepted >= 3
        assert capped.server.stats.get("auth_failed", 0) == 0
