"""Fuzzing the IAM token verifier: mutated tokens are refused with DSQL's hints, never crash
it, and only semantically neutral spellings (parameter order, equivalent percent-encoding,
host case) of a valid token get in. Then the same through the wire, against a running
endpoint. The full run (20,000 random and 10,000 hypothesis cases) is ``bench/fuzz.py``.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_endpoint import Closed, EndpointInfo, RawConn, error_of, hint_of
from reliability_tokens import (
    DEFAULT,
    HINTS,
    MUTATIONS,
    NOW,
    PLAIN,
    Base,
    Case,
    Context,
    HypothesisDraw,
    RandomDraw,
    base_token,
    dsql_hint,
    meaning,
    mutate,
    problems,
    sign,
    split,
    verify,
)

from dsqlkit.auth import sigv4
from dsqlkit.errors import TokenRejected
from dsqlkit.local import wire


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_tokens_are_refused_unless_neutral(data: st.DataObject) -> None:
    case = mutate(HypothesisDraw(data))
    event(case.mutation.split("+")[0].split(":")[0])
    outcome = verify(case)
    assert not problems(case, outcome), (case.mutation, case.token, outcome)


# Neutral rewrites must be accepted: these families always rewrite neutrally, these others
# sometimes do; every other family must produce refused tokens.
_ALWAYS_NEUTRAL = {"reorder", "percent-encode", "percent-decode", "hex-case"}
_NEUTRAL = {"host", "other-user", "resign"}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_mutation_family(name: str) -> None:
    rng = random.Random(name)
    draw = RandomDraw(rng)
    seen: Counter[bool] = Counter()
    for _ in range(150):
        base = base_token(draw)
        case = MUTATIONS[name](draw, base)
        outcome = verify(case)
        assert not problems(case, outcome), (case.mutation, case.token, outcome)
        seen[outcome.accepted] += 1
    if name in _ALWAYS_NEUTRAL:
        assert seen[False] == 0 and seen[True] > 0
    else:
        assert seen[False] > 0
    if name in _NEUTRAL:
        assert seen[True] > 0


def test_the_oracle_and_the_signer_agree_with_the_verifier() -> None:
    """The oracle reads tokens apart from the verifier and the test signs apart from dsqlkit:
    both must agree with it on valid tokens, or every property above would be hollow."""
    rng = random.Random(7)
    for _ in range(200):
        base = base_token(RandomDraw(rng))
        assert verify(Case("none", base.token, base.user, base)).accepted
        host, pairs = split(base.token)
        assert meaning(base.token) is not None
        params = [(unquote(k), unquote(v)) for k, v in pairs if k != "X-Amz-Signature"]
        assert sign(host, params, base.creds.secret_key, day=base.issued.strftime("%Y%m%d"),
                    region="us-east-1") == base.token


def test_every_rejection_hint_is_reachable() -> None:
    """The fuzzer reaches every hint the verifier has (so that it exercises every check)."""
    rng = random.Random(11)
    draw = RandomDraw(rng)
    seen: set[int] = set()
    for _ in range(6000):
        case = mutate(draw)
        outcome = verify(case)
        if outcome.hint is not None:
            seen.update(i for i, p in enumerate(HINTS) if p.fullmatch(outcome.hint))
        if len(seen) == len(HINTS):
            break
    assert sorted(seen) == list(range(len(HINTS)))


def _token_with(expires: str | None = None, date: str | None = None) -> tuple[str, Base]:
    base = Base(sigv4.presign_token("localhost", "us-east-1", PLAIN, action="DbConnectAdmin",
                                    now=NOW), "admin", PLAIN, "localhost", 900, NOW, DEFAULT)
    token = base.token
    if expires is not None:
        token = token.replace("X-Amz-Expires=900", f"X-Amz-Expires={expires}")
    if date is not None:
        token = token.replace(NOW.strftime("%Y%m%dT%H%M%SZ"), date).replace(
            NOW.strftime("%Y%m%d") + "%2F", date[:8] + "%2F")
    return token, base


def test_expires_with_a_non_decimal_digit_is_refused() -> None:
    """str.isdigit() accepts digits int() refuses: int('²') raised ValueError, not
    TokenRejected (found by the fuzzer; fixed in 30d9913)."""
    token, _ = _token_with(expires="%C2%B2")  # '²'
    with pytest.raises(TokenRejected, match="X-Amz-Expires must be a whole number"):
        sigv4.verify_token(token, user="admin", region="us-east-1", hosts=["localhost"],
                           lookup={PLAIN.access_key: PLAIN}.get, now=NOW)


def test_a_date_at_the_end_of_time_is_refused() -> None:
    """issued + expires was computed before the clock-skew check: near the end of year
    9999 it raised OverflowError, not TokenRejected (found by the fuzzer; fixed in 30d9913)."""
    token, _ = _token_with(date="99991231T235959Z")
    with pytest.raises(TokenRejected, match="not yet current"):
        sigv4.verify_token(token, user="admin", region="us-east-1", hosts=["localhost"],
                           lookup={PLAIN.access_key: PLAIN}.get, now=NOW)


# ---------------------------------------------------------------------------------------------
# through the wire


def _wire_context(ep: EndpointInfo) -> Context:
    return Context(hosts=ep.hostnames, now=datetime.now(timezone.utc), plain=ep.credentials,
                   users=("admin",), margin=120)


def _present(ep: EndpointInfo, password: str, user: str = "admin") -> list[tuple[int, bytes]]:
    """Log in with ``password``; the endpoint's answer up to ReadyForQuery or its close."""
    c = RawConn(ep.port).tls(ep.ca_path)
    try:
        c.send(wire.startup_message({"user": user, "database": "postgres"}))
        mtype, frame = c.read()
        assert mtype == wire.AUTHENTICATION and struct.unpack("!i", frame[5:9])[0] == 3
        c.send(wire.password(password))
        answer: list[tuple[int, bytes]] = []
        while True:
            try:
                answer.append(c.read())
            except Closed:
                return answer
            if answer[-1][0] == wire.READY_FOR_QUERY:
                return answer
    finally:
        c.close()


def test_bad_passwords_over_the_wire(wire_endpoint: EndpointInfo) -> None:
    """A few hundred mutated tokens as passwords: each refused with FATAL 08006 ``unable to
    accept connection, access denied`` and a DSQL hint, then the connection closed; the
    neutral spellings log in."""
    ep = wire_endpoint
    ctx = _wire_context(ep)
    rng = random.Random(2024)
    counts: Counter[str] = Counter()
    while sum(counts.values()) < 300:
        case = mutate(RandomDraw(rng), ctx)
        # A NUL cannot be sent in a password message (it would end the string).
        if "\0" in case.token or case.user != "admin":
            continue
        answer = _present(ep, case.token)
        if case.expected():
            assert answer[-1][0] == wire.READY_FOR_QUERY, (case.mutation, case.token, answer)
            counts["logged in"] += 1
            continue
        assert len(answer) == 1 and answer[0][0] == wire.ERROR_RESPONSE, (case.token, answer)
        severity, sqlstate, message = error_of(answer[0][1])
        assert (severity, sqlstate, message) == (
            "FATAL", "08006", "unable to accept connection, access denied"), case.token
        hint = hint_of(answer[0][1])
        assert dsql_hint(hint), hint
        assert not any(s in hint for s in (*ctx.secrets, case.base.signature))
        counts[case.mutation.split("+")[0].split(":")[0]] += 1
    print(f"\n{sum(counts.values())} passwords over the wire: {dict(counts)}")
    assert counts["logged in"] > 0


@pytest.mark.parametrize("token_edit", [
    ("X-Amz-Expires=900", "X-Amz-Expires=%C2%B2"),
    ("X-Amz-Expires=900", "X-Amz-Expires=9%E2%91%A0"),
])
def test_a_password_that_crashed_the_verifier_gets_access_denied(
        wire_endpoint: EndpointInfo, token_edit: tuple[str, str]) -> None:
    """The verifier's ValueError used to escape the session: the connection closed without
    FATAL 08006 and the endpoint logged 'Task exception was never retrieved'."""
    ep = wire_endpoint
    token = ep.token().replace(*token_edit)
    answer = _present(ep, token)
    assert len(answer) == 1 and answer[0][0] == wire.ERROR_RESPONSE
    assert error_of(answer[0][1]) == ("FATAL", "08006",
                                      "unable to accept connection, access denied")


def test_the_clock_checks_at_their_limits() -> None:
    """Expiry is inclusive at issued + expires; issue time may lie up to 15 minutes ahead."""
    creds = PLAIN
    for issued, ok in ((NOW - timedelta(seconds=900), True),
                       (NOW - timedelta(seconds=901), False),
                       (NOW + timedelta(minutes=15), True),
                       (NOW + timedelta(minutes=15, seconds=1), False)):
        token = sigv4.presign_token("localhost", "us-east-1", creds, action="DbConnectAdmin",
                                    now=issued)
        base = Base(token, "admin", creds, "localhost", 900, issued, DEFAULT)
        assert verify(Case("clock", token, "admin", base, accept=ok)).accepted is ok
