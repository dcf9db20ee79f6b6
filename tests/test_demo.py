"""``dsqlkit demo`` end to end, as a user runs it: a fresh process, its own local endpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_tells_the_story_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "demo.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
    env["COLUMNS"] = "120"
    proc = subprocess.run(
        [sys.executable, "-m", "dsqlkit", "demo", "--iters", "150", "--report", str(report)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # The side-by-side table: both runs as columns, the rows a reader looks for.
    header = next(line for line in out.splitlines() if "ch04: no retry" in line
                  and "ch05: retry" in line)
    assert header.index("ch04: no retry") < header.index("ch05: retry")
    for row in ("committed", "failed: OCC conflict", "failed: other", "retries",
                "latency p50", "latency p99", "throughput", "money conserved"):
        assert re.search(rf"│ {re.escape(row)}\s", out), row

    def cells(row: str) -> list[str]:
        line = next(line for line in out.splitlines() if re.search(rf"│ {re.escape(row)}\s",
                                                                   line))
        return [c.strip() for c in line.strip("│ ").split("│")][1:]

    conflicts_ch04, conflicts_ch05 = (int(c.replace(",", "")) for c in cells(
        "failed: OCC conflict"))
    assert conflicts_ch04 > 0, "no conflict without retry: the demo shows nothing"
    assert conflicts_ch05 == 0, "conflicts failed transfers despite retry"
    assert all(c.startswith("✓") for c in cells("money conserved"))
    assert [c.replace(",", "") for c in cells("transfers")] == ["150", "150"]
    assert re.search(r"Total time: \d+\.\d s", out)
    page = report.read_text()
    assert "ch04: no retry" in page and "ch05: retry" in page and "<svg" in page
    # Nothing is left behind in the working directory but the report we asked for.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.html"]
