"""dsqlkit.bench without a database: the workload, outcomes, statistics, JSON, the noop runs."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from decimal import Decimal

import pytest

from dsqlkit.bench import results as results_mod
from dsqlkit.bench.outcomes import Outcome, classify_exception, classify_message, describe
from dsqlkit.bench.results import JSON_SCHEMA, RunResult, validate
from dsqlkit.bench.runner import LoadPlan, run_bench, split
from dsqlkit.bench.stats import Recorder, RunStats, Summary, latency_bins, log_edges
from dsqlkit.bench.targets import TargetSpec, interpret_invoke
from dsqlkit.bench.workload import InsufficientBalance, Transfer, TransferGenerator
from dsqlkit.errors import OCCRetryExhausted
from dsqlkit.occ import OCCType

NOOP = TargetSpec("noop")

# -- the workload --------------------------------------------------------------------------


def test_transfers_are_distinct_accounts_in_range_with_two_decimal_amounts() -> None:
    draw = TransferGenerator(10, random.Random(1))
    seen_payers, seen_payees, amounts = set(), set(), set()
    for _ in range(20_000):
        t = draw()
        assert 1 <= t.payer <= 10 and 1 <= t.payee <= 10
        assert t.payer != t.payee
        assert Decimal("0.01") <= t.amount <= Decimal("10.00")
        assert t.amount == t.amount.quantize(Decimal("0.01"))
        seen_payers.add(t.payer)
        seen_payees.add(t.payee)
        amounts.add(t.amount)
    # Every account plays both roles and the amounts cover (nearly) all 1,000 cent values.
    assert seen_payers == seen_payees == set(range(1, 11))
    assert len(amounts) > 990
    assert min(amounts) == Decimal("0.01") and max(amounts) == Decimal("10.00")


def test_two_accounts_always_transfer_between_the_two() -> None:
    draw = TransferGenerator(2, random.Random(5))
    pairs = {(t.payer, t.payee) for t in (draw() for _ in range(200))}
    assert pairs == {(1, 2), (2, 1)}


def test_generator_is_deterministic_per_seed_and_rejects_one_account() -> None:
    a = TransferGenerator(1000, random.Random("x"))
    b = TransferGenerator(1000, random.Random("x"))
    assert [a() for _ in range(50)] == [b() for _ in range(50)]
    with pytest.raises(ValueError, match="two distinct accounts"):
        TransferGenerator(1, random.Random(0))


def test_payload_is_the_invoke_test_json_with_exact_amount() -> None:
    body = Transfer(3, 7, Decimal("0.10")).payload()
    doc = json.loads(body, parse_float=Decimal)
    assert doc == {"payer_id": 3, "payee_id": 7, "amount": Decimal("0.10")}
    assert b'"amount": 0.10' in body


# -- outcomes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "outcome"), [
    ("40001: change conflicts with another transaction (OC000)", Outcome.OC000),
    ("change conflicts with another transaction, please retry: (OC000)", Outcome.OC000),
    ("schema has been updated by another transaction (OC001)", Outcome.OC001),
    ("could not serialize access due to concurrent update", Outcome.SERIALIZATION),
    ("SerializationFailure: 40001", Outcome.SERIALIZATION),
    ("Insufficient balance", Outcome.INSUFFICIENT_BALANCE),
    ("Insufficient balance: -3.20", Outcome.INSUFFICIENT_BALANCE),
    ("Payee account not found", Outcome.OTHER),
    ("Payer and payee must be different accounts", Outcome.OTHER),
])
def test_lambda_error_messages_are_classified(text: str, outcome: Outcome) -> None:
    assert classify_message(text) is outcome


class FakeDriverError(Exception):
    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


def test_exceptions_are_classified_by_sqlstate_and_code_not_by_statement() -> None:
    oc000 = FakeDriverError("40001", "change conflicts with another transaction (OC000)")
    plain = FakeDriverError("40001", "could not serialize access due to concurrent update")
    assert classify_exception(oc000) is Outcome.OC000
    assert classify_exception(plain) is Outcome.SERIALIZATION
    assert classify_exception(OCCRetryExhausted(3, OCCType.SCHEMA, oc000)) is Outcome.OC001
    assert classify_exception(InsufficientBalance(Decimal("-1"))) is Outcome.INSUFFICIENT_BALANCE
    assert classify_exception(FakeDriverError("23505", "duplicate key")) is Outcome.OTHER
    assert classify_exception(RuntimeError("boom")) is Outcome.OTHER
    # The example names the conflict, not the wrapper.
    assert describe(OCCRetryExhausted(1, OCCType.DATA, oc000)) == (
        "40001: change conflicts with another transaction (OC000)")


def test_invoke_responses_are_interpreted_like_invoke_test() -> None:
    ok = interpret_invoke(None, b'{"payer_balance": "90", "transaction_time": "12.345ms"}')
    assert ok.outcome is Outcome.SUCCESS and ok.attempts == 1 and ok.server_ms == 12.345
    retried = interpret_invoke(None, b'{"payer_balance": "9", "transaction_time": "3ms", '
                                     b'"attempts": 4}')
    assert retried.attempts == 4 and retried.server_ms == 3.0
    err = interpret_invoke("Unhandled", b'{"errorMessage": "change conflicts with another '
                                        b'transaction (OC000)", '
                                        b'"errorType": "SerializationFailure"}')
    assert err.outcome is Outcome.OC000 and err.message and "OC000" in err.message
    assert interpret_invoke("Unhandled", b'{"errorMessage": "Insufficient balance", '
                                         b'"errorType": "InsufficientBalance"}').outcome is (
        Outcome.INSUFFICIENT_BALANCE)
    odd = interpret_invoke(None, b'{"greeting": "hello"}')
    assert odd.outcome is Outcome.OTHER and odd.message and "unexpected response" in odd.message
    assert interpret_invoke("Unhandled", b"not json").outcome is Outcome.OTHER


# -- statistics ------------------------------------------------------------------------------


def _recorded(seed: int, n: int, epoch: float = 100.0) -> Recorder:
    rng = random.Random(seed)
    rec = Recorder(epoch)
    for i in range(n):
        start = epoch + i * 0.01
        outcome = rng.choice([Outcome.SUCCESS] * 6 + [Outcome.OC000, Outcome.OTHER,
                                                     Outcome.INSUFFICIENT_BALANCE])
        attempts = rng.choice([1, 1, 1, 2, 3])
        for _ in range(attempts - 1):
            rec.conflict(Outcome.OC000, start + 0.001)
        rec.record(outcome, start, start + rng.uniform(0.0005, 0.2), attempts,
                   None if outcome is Outcome.SUCCESS else f"{outcome.value} #{i % 5}")
    return rec


def test_merged_stats_add_up_and_keep_at_most_three_distinct_examples() -> None:
    parts = [_recorded(seed, 300) for seed in range(4)]
    merged = RunStats.merge(parts)
    s = Summary.of(merged, elapsed=3.0)
    assert s.transfers == 1200
    assert s.successes + s.failures == 1200
    assert s.failures == sum(s.failures_by_class.values())
    assert sum(merged.attempts.values()) == 1200
    assert merged.latency.get_total_count() == 1200
    assert sum(merged.timeline_successes) == s.successes
    assert sum(merged.timeline_failures) == s.failures
    assert sum(merged.timeline_conflicts) == s.total_conflicts_seen
    assert s.retries == sum((n - 1) * c for n, c in merged.attempts.items())
    # conflicts seen = retried conflicts + the conflicts that failed a transfer
    assert s.total_conflicts_seen == s.retries + s.conflict_failures
    assert s.throughput == pytest.approx(400.0)
    for messages in merged.examples.values():
        assert 1 <= len(messages) <= 3 and len(set(messages)) == len(messages)


def test_stats_survive_serialisation_between_processes() -> None:
    merged = RunStats.merge([_recorded(1, 500)])
    again = RunStats.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert again.counts == merged.counts and again.attempts == merged.attempts
    assert again.latency.get_total_count() == merged.latency.get_total_count()
    assert again.latency.get_value_at_percentile(99) == merged.latency.get_value_at_percentile(99)
    assert again.timeline_conflicts == merged.timeline_conflicts


def test_percentiles_are_exact_to_three_digits() -> None:
    rec = Recorder(0.0)
    for ms in range(1, 1001):  # 1 ms .. 1000 ms, one each
        rec.record(Outcome.SUCCESS, 0.0, ms / 1000.0)
    lat = Summary.of(RunStats.merge([rec]), 1.0).latency
    assert lat is not None
    assert lat.min == pytest.approx(1.0, rel=1e-3)
    assert lat.p50 == pytest.approx(500.0, rel=1e-3)
    assert lat.p90 == pytest.approx(900.0, rel=1e-3)
    assert lat.p99 == pytest.approx(990.0, rel=1e-3)
    assert lat.max == pytest.approx(1000.0, rel=1e-3)


def test_latency_bins_cover_every_recorded_value() -> None:
    merged = RunStats.merge([_recorded(2, 400)])
    edges = log_edges(1.0, 50.0)  # deliberately narrower than the data
    bins = latency_bins(merged.latency, edges)
    assert sum(bins) == 400 and len(bins) == len(edges) - 1


# -- the JSON document -----------------------------------------------------------------------


def _noop_result(**plan: int) -> RunResult:
    return run_bench(NOOP, LoadPlan(threads=plan.get("threads", 2), iterations=plan.get(
        "iterations", 2000), processes=plan.get("processes", 1), accounts=10, seed=9),
        label="noop")


def test_json_matches_the_documented_schema_and_round_trips() -> None:
    result = _noop_result()
    doc = json.loads(json.dumps(result.to_dict()))
    assert validate(doc) == []
    again = RunResult.from_dict(doc)
    assert again.to_dict() == doc
    # Every key the schema requires is described in the module docstring.
    documented = results_mod.__doc__ or ""

    def keys(schema: dict[str, object]) -> set[str]:
        out: set[str] = set()
        props = schema.get("properties")
        if isinstance(props, dict):
            for k, v in props.items():
                out.add(k)
                if isinstance(v, dict):
                    out |= keys(v)
                    for alt in v.get("anyOf", []):
                        out |= keys(alt)
        return out

    missing = {k for k in keys(JSON_SCHEMA) if f'"{k}"' not in documented}
    assert not missing, f"keys missing from the results docstring: {sorted(missing)}"


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("summary", "successes"), 1, "successes + failures != transfers"),
    (("summary", "failures_by_class", "other"), 5, "failures_by_class"),
    (("config", "target"), "grpc", "is not one of"),
    (("summary", "latency_ms", "p99"), "fast", "latency_ms"),
    (("summary", "attempts", "retried_share"), 1.5, "above 1"),
    (("timeline", "successes"), [1, 2, 3], "timeline"),
    (("schema",), "dsqlkit-bench-transfer/0", "expected"),
    (("balances",), {"before": "1", "after": "2", "accounts": 2, "conserved": True},
     "contradicts"),
])
def test_invalid_documents_are_rejected(path: tuple[str, ...], value: object,
                                        expected: str) -> None:
    doc = json.loads(json.dumps(_noop_result(iterations=100).to_dict()))
    bad = copy.deepcopy(doc)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = validate(bad)
    assert errors and any(expected in e for e in errors), errors
    with pytest.raises(ValueError, match="not a dsqlkit bench result"):
        RunResult.from_dict(bad)


def test_unknown_keys_are_rejected() -> None:
    doc = json.loads(json.dumps(_noop_result(iterations=10).to_dict()))
    doc["summary"]["surprise"] = 1
    assert any("unexpected key 'surprise'" in e for e in validate(doc))


# -- the load generator ----------------------------------------------------------------------


def test_split_spreads_the_remainder() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]
    assert sum(split(1001, 7)) == 1001


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"iterations": None, "duration": None}, "either"),
    ({"iterations": 10, "duration": 1.0}, "either"),
    ({"threads": 1, "processes": 2}, "cannot exceed"),
    ({"accounts": 1}, "at least 2"),
    ({"threads": 0}, "at least 1"),
])
def test_plans_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadPlan(**kwargs)  # type: ignore[arg-type]


def test_noop_run_in_threads_counts_every_transfer() -> None:
    result = _noop_result(threads=3, iterations=3001)
    s = result.summary
    assert s.transfers == s.successes == 3001 and s.failures == 0
    assert result.balances is None and result.config.retry is None
    assert s.max_attempts == 1 and s.retries == 0


def test_noop_run_in_processes_merges_counts_and_histograms() -> None:
    result = _noop_result(threads=2, processes=2, iterations=5001)
    s = result.summary
    assert s.transfers == 5001 and result.stats.latency.get_total_count() == 5001
    assert sum(result.stats.timeline_successes) == 5001


def test_duration_bounds_the_run() -> None:
    # A duration is real time by definition (the runner's deadline is on perf_counter, with
    # no clock to inject): the run must last at least its 0.3 s, and end soon after (a loose
    # bound, not a window).
    result = run_bench(NOOP, LoadPlan(threads=2, iterations=None, duration=0.3, seed=1))
    assert 0.25 <= result.elapsed < 5
    assert result.summary.transfers > 100
    assert result.config.iterations is None and result.config.duration == 0.3


def test_cli_noop_writes_valid_json(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "noop.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dsqlkit", "bench", "transfer", "--target", "noop", "--iters",
         "500", "--threads", "2", "--seed", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "committed" in proc.stdout and "500" in proc.stdout
    doc = json.loads(out.read_text())
    assert validate(doc) == [] and doc["config"]["seed"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "dsqlkit", "bench", "transfer", "--iters", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "choose a target" in bad.stderr


def test_one_pass_percentiles_agree_with_hdrhistogram() -> None:
    from dsqlkit.bench.stats import buckets, new_histogram, percentiles

    rng = random.Random(3)
    qs = [0.0, 1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0]
    for _ in range(20):
        h = new_histogram()
        for _ in range(rng.randint(1, 2000)):
            h.record_value(int(rng.lognormvariate(8, 1.5)) + 1)
        assert [int(v) for v in percentiles(buckets(h), qs)] == [
            h.get_value_at_percentile(q) for q in qs]


def test_ctrl_c_stops_the_run_and_reports_what_finished(tmp_path: object) -> None:
    import re
    import signal
    import threading
    from pathlib import Path

    out = Path(str(tmp_path)) / "partial.json"
    stdout_file = Path(str(tmp_path)) / "stdout.txt"
    with stdout_file.open("w") as stdout_sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsqlkit", "bench", "transfer", "--target", "noop",
             "--duration", "60", "--threads", "2", "--json", str(out)],
            stdout=stdout_sink, stderr=subprocess.PIPE, text=True,
        )
    # Ctrl-C once the run is under way, as its progress reports it: stderr is not a
    # terminal, so the first plain progress line comes at the first tick of the run.
    running = threading.Event()
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line)
            done = re.search(r": ([\d,]+) transfers, ", line)
            if done and int(done.group(1).replace(",", "")) > 0:
                running.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert running.wait(60), "".join(stderr_lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    stderr = "".join(stderr_lines)
    stdout = stdout_file.read_text()
    assert proc.returncode == 130, stderr
    assert "(interrupted)" in stdout
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    assert validate(doc) == []
    assert 0 < doc["summary"]["elapsed_seconds"] < 30 and doc["summary"]["transfers"] > 0
