"""dsqlkit bench against a local DSQL endpoint: the transfer transaction, contended runs, money.

Runs on the session-wide ``dsql_local`` (the bench owns the ``accounts`` table there and resets
it in each test), plus one private endpoint that fails every COMMIT with OC000, where conflict
counts must be exact.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from clock_support import settles
from dsqlkit.bench import LoadPlan, TargetSpec, run_bench, setup_accounts, validate
from dsqlkit.bench.outcomes import Outcome
from dsqlkit.bench.stats import Recorder
from dsqlkit.bench.targets import DirectTarget, sum_balances
from dsqlkit.bench.workload import Transfer
from dsqlkit.local import LocalDSQL
from dsqlkit.occ import OCCRetryConfig, retry_on_occ

pytestmark = pytest.mark.slow


def direct(ep: LocalDSQL, **options: Any) -> TargetSpec:
    return TargetSpec("direct", conn=ep.url(), credentials=ep.credentials, **options)


def balances(ep: LocalDSQL) -> dict[int, Decimal]:
    with psycopg.connect(ep.dsn(), autocommit=True) as conn:
        return dict(conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall())


def test_setup_and_the_transfer_rules(dsql_local: LocalDSQL) -> None:
    spec = direct(dsql_local, retry=False)
    setup_accounts(spec, 20)
    before = balances(dsql_local)
    assert before == dict.fromkeys(range(1, 21), Decimal(100))
    target = DirectTarget(spec, threads=1)
    try:
        transfer = target.worker(Recorder(time.perf_counter()))
        poor = transfer(Transfer(1, 2, Decimal("100.01")))
        assert poor.outcome is Outcome.INSUFFICIENT_BALANCE
        assert poor.message == "Insufficient balance: -0.01"
        missing = transfer(Transfer(3, 999, Decimal("1.00")))
        assert missing.outcome is Outcome.OTHER
        assert missing.message == "Payee account not found: 999"
        same = transfer(Transfer(4, 4, Decimal("1.00")))
        assert same.outcome is Outcome.OTHER and same.message is not None
        assert "must be different" in same.message
        # Every refused transfer was rolled back, debit included.
        assert balances(dsql_local) == before
        ok = transfer(Transfer(1, 2, Decimal("1.50")))
        assert ok.outcome is Outcome.SUCCESS and ok.attempts == 1
    finally:
        target.close()
    after = balances(dsql_local)
    assert after[1] == Decimal("98.50") and after[2] == Decimal("101.50")
    assert sum(after.values()) == sum(before.values())


@pytest.mark.parametrize("retry", [False, True], ids=["ch04-no-retry", "ch05-retry"])
def test_contended_run_adds_up_and_conserves_money(dsql_local: LocalDSQL, retry: bool,
                                                   tmp_path: Any) -> None:
    spec = direct(dsql_local, retry=retry)
    setup_accounts(spec, 1000)
    plan = LoadPlan(threads=8, accounts=5, iterations=200, seed=11)
    result = run_bench(spec, plan, label="ch05" if retry else "ch04")
    s = result.summary
    assert s.transfers == 200 and s.successes + s.failures == 200
    assert s.failures == sum(s.failures_by_class.values())
    assert result.stats.latency.get_total_count() == 200
    assert result.balances is not None
    assert result.balances.conserved, result.balances
    assert result.balances.before == Decimal(100_000) and result.balances.accounts == 1000
    # Every conflict either was retried or failed its transfer.
    assert s.total_conflicts_seen == s.retries + s.conflict_failures
    assert s.other_failures == 0, result.stats.examples
    if retry:
        assert s.conflict_failures == 0
        assert s.total_conflicts_seen > 0, "8 writers on 5 accounts never collided"
        assert s.max_attempts > 1 and s.retried_transfers > 0
    else:
        assert s.conflict_failures > 0, "8 writers on 5 accounts never collided"
        assert s.retries == 0 and s.max_attempts == 1
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result.to_dict()))
    doc = json.loads(path.read_text())
    assert validate(doc) == []
    assert doc["balances"]["conserved"] is True
    assert doc["config"]["retry"] is retry


def test_processes_split_the_work_and_merge(dsql_local: LocalDSQL) -> None:
    spec = direct(dsql_local, retry=True)
    setup_accounts(spec, 1000)
    result = run_bench(spec, LoadPlan(threads=4, processes=2, accounts=1000, iterations=301,
                                      seed=3))
    s = result.summary
    assert s.transfers == 301 and s.successes + s.failures == 301
    assert result.balances is not None and result.balances.conserved
    assert sum(result.stats.timeline_successes) + sum(result.stats.timeline_failures) == 301


@pytest.fixture(scope="module")
def always_conflicting() -> Iterator[LocalDSQL]:
    """An endpoint where every COMMIT loses an OCC conflict (fault injection)."""
    with LocalDSQL(ephemeral=True, port=0, inject="occ=1.0", seed=1) as ep:
        setup_accounts(direct(ep), 50)
        yield ep


def test_exact_conflict_counts_when_every_commit_conflicts(
    always_conflicting: LocalDSQL,
) -> None:
    ep = always_conflicting
    plan = LoadPlan(threads=3, accounts=50, iterations=30, seed=2)
    ch04 = run_bench(direct(ep, retry=False), plan).summary
    assert ch04.failures_by_class[Outcome.OC000] == 30 and ch04.successes == 0
    assert ch04.conflicts_seen[Outcome.OC000] == 30 and ch04.retries == 0
    ch05 = run_bench(direct(ep, retry=True, retry_preset="low_latency", max_attempts=3), plan)
    s = ch05.summary
    assert s.failures_by_class[Outcome.OC000] == 30
    assert dict(ch05.stats.attempts) == {3: 30}
    assert s.retries == 60 and s.conflicts_seen[Outcome.OC000] == 90
    assert s.retried_share == 1.0 and s.mean_attempts == 3.0
    assert ch05.balances is not None and ch05.balances.conserved


def test_schema_change_during_a_run_is_counted_as_oc001(always_conflicting: LocalDSQL) -> None:
    ep = always_conflicting
    column = f"probe_{uuid.uuid4().hex[:8]}"
    altered_at: list[int] = []

    def alter_then_stop(done: int, failed: int, elapsed: float) -> None:
        # Once transfers have used the table, change it: DSQL fails the sessions that had it
        # in their catalog with OC001. At most one transfer per thread (3) was in flight
        # then, so once 10 more have ended, some started after the change; the run stops
        # there (as on Ctrl-C), on that event rather than after some length of time.
        if done and not altered_at:
            with psycopg.connect(ep.dsn(), autocommit=True) as conn:
                conn.execute(f"ALTER TABLE accounts ADD COLUMN {column} text")
            altered_at.append(done)
        elif altered_at and done >= altered_at[0] + 10:
            raise KeyboardInterrupt

    # ``duration`` only bounds a run that never gets there.
    result = run_bench(direct(ep, retry=False),
                       LoadPlan(threads=3, accounts=50, iterations=None, duration=120.0, seed=5),
                       progress=alter_then_stop)
    assert result.interrupted
    assert altered_at
    s = result.summary
    assert s.failures_by_class[Outcome.OC001] >= 1
    assert s.failures_by_class[Outcome.OC000] + s.failures_by_class[Outcome.OC001] == s.transfers
    assert "OC001" in result.stats.examples[Outcome.OC001][0]
    # The balance check itself survived the schema change (it retries its read).
    assert result.balances is not None and result.balances.conserved


def test_balance_sum_reads_every_account(dsql_local: LocalDSQL) -> None:
    setup_accounts(direct(dsql_local), 7)
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        assert sum_balances(conn) == (Decimal(700), 7)


def test_money_created_during_a_run_fails_loudly(dsql_local: LocalDSQL, tmp_path: Any) -> None:
    """The balance check is real: money added behind the workload's back is caught."""
    import signal
    import subprocess
    import sys

    setup_accounts(direct(dsql_local), 1000)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **dsql_local.env()}
    # The run lasts until the test stops it (Ctrl-C, after which the workers finish their
    # transfer in flight and the "after" sum is read): the money is minted during the run
    # whatever the machine's speed, not within a 2-second window.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsqlkit", "bench", "transfer", "--conn", dsql_local.url(),
         "--duration", "600", "--threads", "2", "--accounts", "1000", "--no-progress",
         "--json", str(tmp_path / "run.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        # Once a transfer has committed, the "before" sum has been read: now mint money.
        with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
            def transferred() -> bool:
                assert proc.poll() is None, "the run ended early"
                return conn.execute("SELECT count(*) FROM accounts WHERE balance <> 100"
                                    ).fetchone() != (0,)

            settles(transferred, "a committed transfer", timeout=60)
            # The workers may be writing account 1000 too: the mint retries on a conflict,
            # as any DSQL write must.
            retry_on_occ(OCCRetryConfig(max_attempts=20), lambda: conn.execute(
                "UPDATE accounts SET balance = balance + 5 WHERE id = 1000"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out + err
    assert "MONEY NOT CONSERVED" in err and "100005" in err
    assert "NOT CONSERVED" in out
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["balances"]["conserved"] is False and validate(doc) == []
