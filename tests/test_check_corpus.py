"""The checker's score on the statements a live DSQL cluster recorded (bench/check_corpus.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conformance import corpus_dir

BENCH = Path(__file__).resolve().parent.parent / "bench" / "check_corpus.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_corpus", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_corpus"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(corpus_dir() is None, reason="conformance corpus not found")
def test_recorded_refusals_found_without_false_alarms(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    directory = corpus_dir()
    assert directory is not None
    score = bench.score_ours(bench.steps(directory))
    with capsys.disabled():
        print("\n" + score.line("dsqlkit check"))
    assert score.refusals >= 66
    assert score.found >= score.refusals - 1, score.missed
    assert score.false_alarms == 0, score.alarms
