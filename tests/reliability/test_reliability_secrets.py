"""No secret in any log line or error message of a full run.

Every logger (root at DEBUG: dsqlkit's, psycopg's, psycopg_pool's, asyncio's) is captured
while the run connects with good and bad tokens through all three drivers, refreshes tokens,
retries OCC conflicts, gets refused by the endpoint (access denied, plaintext, rate quota),
runs the bench and the demo's workloads in-process, and runs ``dsqlkit bench`` and
``dsqlkit demo`` as commands. Every exception's text (with its causes), the commands'
output and the bench's JSON and HTML results are collected too. None of it may contain a
secret key, the session token (raw or URL-encoded), the signature of any token minted during
the run, or ``X-Amz-Signature=`` / ``X-Amz-Security-Token=`` at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import secrets
import string
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reliability_tokens import Context, RandomDraw, mutate, quote

import dsqlkit.asyncpg
import dsqlkit.auth.tokens
import dsqlkit.psycopg2
from dsqlkit import psycopg as dp
from dsqlkit.auth import sigv4
from dsqlkit.auth.tokens import TokenProvider
from dsqlkit.local import LocalDSQL
from dsqlkit.occ import OCCRetryConfig, run_transaction

_KEY_CHARS = string.ascii_letters + string.digits + "+/"


def _random(n: int, alphabet: str = _KEY_CHARS) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


SECRET = sigv4.Credentials(
    "ASIA" + _random(16, string.ascii_uppercase + string.digits),
    _random(40),
    "IQoJb3JpZ2luX2Vj" + _random(600, _KEY_CHARS + "=") + "==",
)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n.split(".")[0] in ("dsqlkit", "psycopg", "asyncpg", "asyncio")]
    levels = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        for lg, level, propagate in levels:
            lg.setLevel(level)
            lg.propagate = propagate


def _describe(exc: BaseException) -> str:
    """Everything an exception says: type, text, repr, causes, psycopg's diagnostics."""
    parts = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [type(e).__name__, str(e), repr(e)]
        diag = getattr(e, "diag", None)
        if diag is not None:
            parts += [str(getattr(diag, a, "")) for a in
                      ("message_primary", "message_detail", "message_hint")]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


class Run:
    """Collects what a run said besides its logs."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.errors = 0

    def expect_error(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors += 1
            self.texts.append(_describe(exc))
        else:
            raise AssertionError("expected an error")


def _command(args: list[str], env: dict[str, str], tmp: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dsqlkit", *args], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_no_secret_in_logs_or_errors(capture: Capture, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    minted: list[str] = []
    real = sigv4.presign_token

    def recording(*args: Any, **kwargs: Any) -> str:
        token = real(*args, **kwargs)
        minted.append(token)
        return token

    monkeypatch.setattr(sigv4, "presign_token", recording)
    monkeypatch.setattr(dsqlkit.auth.tokens, "presign_token", recording)
    run = Run()
    with LocalDSQL(ephemeral=True, port=0, trust={SECRET.access_key: SECRET},
                   inject={"occ": 0.2}, seed=5, connection_rate=5,
                   connection_burst=100) as ep:
        url = ep.url()
        # Good tokens, through each driver.
        with dp.connect(url, credentials=SECRET, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS secrets_counter (id int PRIMARY KEY, "
                         "n int NOT NULL)")
            conn.execute("DELETE FROM secrets_counter")
            conn.execute("INSERT INTO secrets_counter VALUES (1, 0)")
        dsqlkit.psycopg2.connect(url, credentials=SECRET).close()

        async def via_asyncpg(creds: sigv4.Credentials) -> None:
            conn = await dsqlkit.asyncpg.connect(url, credentials=creds)
            await conn.close()

        asyncio.run(via_asyncpg(SECRET))
        # Bad tokens: wrong secret, wrong session token, expired, wrong region, wrong action,
        # and a few mutated ones, through the drivers and raw libpq.
        wrong_secret = sigv4.Credentials(SECRET.access_key, _random(40), SECRET.session_token)
        wrong_session = sigv4.Credentials(SECRET.access_key, SECRET.secret_key,
                                          SECRET.session_token[:-5] + "AAAA=")  # type: ignore[index]
        for creds in (wrong_secret, wrong_session):
            run.expect_error(partial(dp.connect, url, credentials=creds))
            run.expect_error(partial(dsqlkit.psycopg2.connect, url, credentials=creds))
            run.expect_error(partial(asyncio.run, via_asyncpg(creds)))
        run.expect_error(lambda: dp.connect(url.replace("us-east-1", "us-west-2"),
                                            credentials=SECRET))
        base = f"host=localhost port={ep.port} dbname=postgres sslrootcert={ep.ca_path} " \
               "sslmode=verify-full"
        past = datetime.now(timezone.utc) - timedelta(hours=2)
        bad_tokens = [
            recording("localhost", "us-east-1", SECRET, action="DbConnectAdmin", now=past),
            recording("localhost", "us-east-1", SECRET, action="DbConnect"),
            recording("evil.example", "us-east-1", SECRET, action="DbConnectAdmin"),
        ]
        ctx = Context(hosts=ep.hostnames, now=datetime.now(timezone.utc), plain=SECRET,
                      temporary=SECRET, users=("admin",), margin=120)
        rng = random.Random(5)
        while len(bad_tokens) < 23:
            case = mutate(RandomDraw(rng), ctx)
            # Presented as admin below: a case for another role (other-user keeps the token
            # and changes only the role) would be a valid admin token here.
            if case.user == "admin" and not case.expected() and "\0" not in case.token:
                minted.append(case.base.token)
                bad_tokens.append(case.token)
        for token in bad_tokens:
            run.expect_error(partial(psycopg.connect, base, user="admin", password=token))
        run.expect_error(lambda: psycopg.connect(
            f"host=localhost port={ep.port} dbname=postgres user=admin sslmode=disable "
            f"password={ep.token()}"))
        # Token refresh: explicit, and a pool's background refresher.
        provider = TokenProvider("localhost", "us-east-1", credentials=SECRET, expires_in=60)
        for _ in range(3):
            provider.refresh()
        # OCC retries: contention on one row and injected OC000 conflicts.
        with dp.create_pool(url, credentials=SECRET, min_size=4, max_size=4,
                            kwargs={"autocommit": True}, token_duration_secs=60) as pool:
            pool.token_provider.refresh()

            def bump(conn: psycopg.Connection[Any]) -> None:
                conn.execute("UPDATE secrets_counter SET n = n + 1 WHERE id = 1")

            def worker() -> None:
                for _ in range(25):
                    run_transaction(pool, bump, OCCRetryConfig.high_contention())

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        # The bench and the demo's workloads, in-process.
        from dsqlkit.bench import LoadPlan, TargetSpec, run_bench, setup_accounts
        from dsqlkit.demo import run_workloads

        spec = TargetSpec("direct", conn=url, credentials=SECRET)
        setup_accounts(spec, 20)
        result = run_bench(spec, LoadPlan(threads=4, accounts=10, iterations=200, seed=3))
        run.texts.append(json.dumps(result.to_dict(), default=str))
        for r in run_workloads(ep, iters=100, threads=4, accounts=10, seed=4):
            run.texts.append(json.dumps(r.to_dict(), default=str))
        endpoint_secret = ep.credentials.secret_key
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
        env.update(AWS_ACCESS_KEY_ID=SECRET.access_key, AWS_SECRET_ACCESS_KEY=SECRET.secret_key,
                   AWS_SESSION_TOKEN=SECRET.session_token or "", AWS_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true")
        run.texts.append(_command(
            ["bench", "transfer", "--conn", url, "--iters", "100", "--threads", "2",
             "--accounts", "10", "--setup", "--no-progress", "--json", "bench.json",
             "--report", "bench.html"], env, tmp_path))
        # The endpoint's rate quota: a storm of connections past it is refused with 53400.
        refused = threading.Event()

        def storm(_: int) -> None:
            if refused.is_set():
                return
            try:
                psycopg.connect(base, user="admin", password=ep.token()).close()
            except psycopg.OperationalError as exc:
                if "rate exceeded" in str(exc):
                    refused.set()
                run.texts.append(_describe(exc))

        with ThreadPoolExecutor(16) as executor:
            list(executor.map(storm, range(1000)))
        assert refused.is_set()
    run.texts.append(_command(["demo", "--iters", "60", "--threads", "2", "--no-progress",
                               "--report", "demo.html"], env, tmp_path))
    for name in ("bench.json", "bench.html", "demo.html"):
        run.texts.append((tmp_path / name).read_text())

    logs = capture.records
    everything = "\n".join(logs + run.texts)
    # The capture saw the run: refusals, refreshes, retries, and the endpoint's own records.
    assert run.errors >= 30
    assert any("rejected a token" in r for r in logs)
    assert any("minted a DSQL token" in r for r in logs)
    assert any(r.startswith("DEBUG dsqlkit.occ") for r in logs)
    assert any("unable to accept connection, access denied" in t for t in run.texts)
    assert len(minted) > 20
    needles = {
        "secret key": SECRET.secret_key, "URL-encoded secret key": quote(SECRET.secret_key),
        "session token": SECRET.session_token or "",
        "URL-encoded session token": quote(SECRET.session_token or ""),
        "endpoint's secret key": endpoint_secret,
        "X-Amz-Signature=": "X-Amz-Signature=", "X-Amz-Security-Token=": "X-Amz-Security-Token=",
        **{f"signature of token {i}": t.rsplit("X-Amz-Signature=", 1)[-1]
           for i, t in enumerate(minted)},
    }
    # Names only: the message must not repeat what it found.
    assert sorted(name for name, n in needles.items() if n and n in everything) == []
    # No token of the run's own making, and no signature-shaped string at all.
    assert not re.search(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", everything)
