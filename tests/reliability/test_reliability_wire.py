"""Wire fuzzing, bounded for CI: a few thousand malformed or mutated protocol messages in
every phase, against an endpoint in its own process, while a healthy session runs transfers.
The full run (100,000+ messages) is ``bench/fuzz.py``; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import psycopg
from reliability_endpoint import Closed, EndpointInfo, RawConn, error_of
from reliability_wire import (
    SCRIPTS,
    MiB,
    fresh_login_works,
    prepare,
    run_wire_fuzz,
)

from clock_support import settles
from dsqlkit.local import wire


def test_wire_fuzz(wire_endpoint: EndpointInfo) -> None:
    ep = wire_endpoint
    report = run_wire_fuzz(ep, messages=10_000, threads=6, holders=45, seed=8)
    print("\n" + "\n".join(report.lines()))
    t = report.tally
    # Every bad session ended with an error, or closed where no error can be sent.
    assert t.violations == []
    assert t.messages >= 10_000
    assert set(t.sessions) == set(SCRIPTS)
    assert t.errors["FATAL 08P01"] > 0 and t.errors["FATAL 08006"] > 0
    assert t.endings["error"] > t.endings["closed"] + t.endings["client-closed"]
    # The endpoint stayed up, and the healthy session never noticed.
    assert report.alive and fresh_login_works(ep)
    assert report.healthy.errors == [] and report.healthy.transfers > 0
    assert report.balance_sum == 2000
    # Nothing leaked: backend sessions and sockets went back to where they were.
    assert report.backends_after == report.backends_before
    assert report.fds_after <= report.fds_before
    # Hostile length fields allocated nothing: the held sessions promised hundreds of MiB.
    assert report.promised_bytes > 100 * MiB
    assert report.rss_holding - report.rss_before < 32 * MiB
    # No internal error, no exception escaping a session: the endpoint's log has no ERROR.
    assert report.endpoint_log_problems == []


def _logged_in(ep: EndpointInfo) -> RawConn:
    c = RawConn(ep.port).tls(ep.ca_path)
    c.login(ep.token())
    return c


def _answers(c: RawConn, ready: int = 1,
             timeout: float = 10.0) -> list[tuple[str, str, str] | str]:
    """Messages until ``ready`` ReadyForQuery (errors as (severity, sqlstate, message))."""
    out: list[tuple[str, str, str] | str] = []
    c.sock.settimeout(timeout)
    while ready:
        try:
            mtype, frame = c.read()
        except (Closed, TimeoutError) as exc:
            out.append(f"<{type(exc).__name__}>")
            return out
        if mtype == wire.ERROR_RESPONSE:
            out.append(error_of(frame))
        else:
            out.append(chr(mtype))
        if mtype == wire.READY_FOR_QUERY:
            ready -= 1
    return out


# What the fuzzer found, each fixed in 30d9913 (strict xfail tests until then).


def test_malformed_describe_after_a_stand_in_is_a_protocol_violation(
        wire_endpoint: EndpointInfo) -> None:
    """Once a session had prepared a statement the endpoint answers itself (SHOW
    server_version), a malformed Describe raised ProtocolViolation inside the relay: FATAL
    XX000 'internal error' and a traceback in the log instead of 08P01."""
    c = _logged_in(wire_endpoint)
    try:
        c.send(wire.parse_message("s", "SHOW server_version", []) + wire.SYNC_MSG)
        assert _answers(c) == ["1", "Z"]
        c.send(wire.message(wire.DESCRIBE, b"Xs\0") + wire.SYNC_MSG)
        msgs, closed = c.rest()
        errors = [error_of(f) for t, f in msgs if t == wire.ERROR_RESPONSE]
        # PostgreSQL's own answer, then the end of the session (as for any 08P01).
        assert [e[1] for e in errors] == ["08P01"] and closed, msgs
    finally:
        c.close()


def test_parse_with_a_high_type_oid_of_a_refused_statement(wire_endpoint: EndpointInfo) -> None:
    """Type OIDs were read signed and written unsigned: an OID >= 2**31 in a Parse the
    endpoint rewrites (a statement DSQL refuses) raised struct.error, FATAL XX000."""
    c = _logged_in(wire_endpoint)
    try:
        body = b"\0LISTEN ch\0" + b"\x00\x01" + b"\xff\xff\xff\xfb"
        c.send(wire.message(wire.PARSE, body) + wire.SYNC_MSG)
        answers = _answers(c)
        errors = [a for a in answers if isinstance(a, tuple)]
        assert errors and errors[0][:2] == ("ERROR", "0A000"), answers
        assert answers[-1] == "Z"
    finally:
        c.close()


def test_copy_data_pipelined_behind_the_copy_statement(wire_endpoint: EndpointInfo) -> None:
    """CopyData sent right behind COPY ... FROM STDIN (before the CopyInResponse) stayed
    held in the relay forever; PostgreSQL accepts it."""
    prepare(wire_endpoint)
    c = _logged_in(wire_endpoint)
    try:
        c.send(wire.query("COPY fuzz_copy FROM STDIN")
               + wire.message(wire.COPY_DATA, b"pipelined\n") + wire.message(wire.COPY_DONE))
        answers = _answers(c, timeout=3)
        assert ("C" in answers and answers[-1] == "Z"), answers
    finally:
        c.close()


def test_fatal_error_inside_a_transaction_reaches_the_client(
        wire_endpoint: EndpointInfo) -> None:
    """Inside a block each unit's answer is held back; a FATAL that ended the session (here
    57P01 from pg_terminate_backend) was dropped with it: the client saw only the close."""
    ep = wire_endpoint
    c = _logged_in(ep)
    try:
        c.send(wire.query("BEGIN"))
        assert _answers(c) == ["C", "Z"]
        # The statement would run for a minute: the test ends it as soon as it runs.
        c.send(wire.query("SELECT pg_sleep(60) AS fuzz_terminate_me"))
        with psycopg.connect(ep.backend_dsn, autocommit=True) as admin:
            settles(lambda: bool(admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE '%fuzz_terminate_me' AND pid <> pg_backend_pid()"
            ).fetchall()), "the statement to run, to terminate it", timeout=30)
        msgs, closed = c.rest()
        assert closed
        errors = [error_of(f) for t, f in msgs if t == wire.ERROR_RESPONSE]
        assert ("FATAL", "57P01") in [e[:2] for e in errors], msgs
    finally:
        c.close()


def test_copy_from_stdin_inside_a_transaction(wire_endpoint: EndpointInfo) -> None:
    """The CopyInResponse was held back with the rest of the unit inside a block: the client
    waited for it, the endpoint for the data (psycopg's `with conn.transaction():
    cur.copy("COPY t FROM STDIN")` never returned)."""
    prepare(wire_endpoint)
    c = _logged_in(wire_endpoint)
    try:
        c.send(wire.query("BEGIN"))
        assert _answers(c) == ["C", "Z"]
        c.send(wire.query("COPY fuzz_copy FROM STDIN"))
        c.sock.settimeout(3)
        try:
            mtype, _ = c.read()
        except TimeoutError:
            mtype = 0
        assert mtype == wire.COPY_IN_RESPONSE, "no CopyInResponse within 3 s"
        c.send(wire.message(wire.COPY_DATA, b"in a block\n") + wire.message(wire.COPY_DONE)
               + wire.query("COMMIT"))
        assert _answers(c, ready=2)[-1] == "Z"
    finally:
        c.close()
