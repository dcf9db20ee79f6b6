"""The HTML report: self-contained, well-formed, and rendered by a real browser.

The browser test screenshots the report in headless Chromium and decodes the PNG here (a
small pure-Python decoder: no imaging library is a dependency) to check that the page is not
blank, that it has the colour variety of text and charts, and that the outcome colours of the
composition bars were actually painted.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import pytest

from dsqlkit.bench.outcomes import Outcome
from dsqlkit.bench.report import CONFLICT, OK, log_ticks, nice_ticks, render_report
from dsqlkit.bench.results import Balances, RunConfig, RunResult
from dsqlkit.bench.stats import Recorder, RunStats

# -- synthetic runs: the shape of the demo's two runs, without a database ---------------------


def simulated(retry: bool, n: int = 1500, seed: int = 4) -> RunResult:
    rng = random.Random(seed)
    epoch = 1000.0
    rec = Recorder(epoch)
    for i in range(n):
        start = epoch + 6.0 * i / n
        attempts = 1
        outcome = Outcome.SUCCESS
        if retry:
            while rng.random() < 0.25 and attempts < 9:
                rec.conflict(Outcome.OC000, start + 0.001 * attempts)
                attempts += 1
        elif rng.random() < 0.3:
            outcome = Outcome.OC000
        if rng.random() < 0.02:
            outcome = Outcome.INSUFFICIENT_BALANCE
        latency = rng.lognormvariate(-5.5, 0.6) * attempts
        message = {Outcome.OC000: "40001: change conflicts with another transaction (OC000)",
                   Outcome.INSUFFICIENT_BALANCE: f"Insufficient balance: -{rng.randint(1, 9)}.25"
                   }.get(outcome)
        rec.record(outcome, start, start + latency, attempts, message)
    config = RunConfig(
        target="direct", target_description="admin@localhost:5432/postgres", retry=retry,
        retry_policy={"preset": "high_contention", "max_attempts": 20, "base_delay": 0.1,
                      "max_delay": 0.1, "jitter_factor": 0.25, "deadline": 30.0}
        if retry else None,
        iterations=n, duration=None, threads=10, processes=1, accounts=10, seed=seed,
    )
    return RunResult(
        label="ch05: retry" if retry else "ch04: no retry", config=config,
        started_at="2026-01-01T00:00:00Z", elapsed=6.2, stats=RunStats.merge([rec]),
        balances=Balances(Decimal(100000), Decimal("100000.00"), 1000),
    )


@pytest.fixture(scope="module")
def pair() -> list[RunResult]:
    return [simulated(False), simulated(True)]


# -- structure ---------------------------------------------------------------------------------


def test_report_is_self_contained_and_well_formed(pair: list[RunResult]) -> None:
    page = render_report(pair, title="OCC <conflicts> & retry")
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for forbidden in ("<script", "<link", "@import", "src=", "url(", "<img", "<iframe"):
        assert forbidden not in lowered, forbidden
    # The only URL is the SVG namespace, which is a name, not a fetch.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "OCC &lt;conflicts&gt; &amp; retry" in page
    # Every SVG parses as XML; 2 runs x 3 side-by-side charts + the percentile plot.
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 7
    for svg in svgs:
        ElementTree.fromstring(svg)
    for text in ("ch04: no retry", "ch05: retry", "Latency distribution", "Attempts per transfer",
                 "Throughput and conflicts over time", "Summary", "money conserved",
                 "Insufficient balance: -"):
        assert text in page, text


def test_summary_table_has_a_column_per_run(pair: list[RunResult]) -> None:
    page = render_report(pair)
    table = re.search(r'<table class="summary">.*?</table>', page, flags=re.S)
    assert table is not None
    rows = re.findall(r"<tr.*?</tr>", table.group(0), flags=re.S)
    # Header plus one row per metric; every row has the label cell and one cell per run.
    assert len(rows) > 15
    for row in rows[1:]:
        assert len(re.findall(r"<td", row)) == 3
    s = pair[0].summary
    assert f"{s.conflict_failures:,}" in table.group(0)


def test_single_run_and_edge_cases_render() -> None:
    empty = RunResult(label="nothing", config=simulated(False).config,
                      started_at="2026-01-01T00:00:00Z", elapsed=0.0)
    page = render_report([empty])
    assert "no transfers finished" in page and "No transfer failed" in page
    one = render_report([simulated(True, n=50)])
    assert one.count("<svg") == 4


def test_axis_helpers() -> None:
    assert nice_ticks(93) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.7, 4) == [0, 0.2, 0.4, 0.6, 0.8]
    assert log_ticks(1, 100) == [1, 2, 5, 10, 20, 50, 100]
    # Not enough room for 1-2-5 or 1-3: one tick per decade, or every other decade.
    assert log_ticks(1, 1000, px_per_decade=50, min_gap=40) == [1, 10, 100, 1000]
    assert log_ticks(1, 1000, px_per_decade=30, min_gap=40) == [1, 100]


def test_cli_renders_saved_results_side_by_side(pair: list[RunResult], tmp_path: Path) -> None:
    files = []
    for i, r in enumerate(pair):
        f = tmp_path / f"run{i}.json"
        f.write_text(json.dumps(r.to_dict()))
        files.append(str(f))
    out = tmp_path / "cmp.html"
    proc = subprocess.run([sys.executable, "-m", "dsqlkit", "bench", "report", *files, "-o",
                           str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ch04: no retry" in out.read_text() and "ch05: retry" in out.read_text()
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    bad = subprocess.run([sys.executable, "-m", "dsqlkit", "bench", "report",
                          str(tmp_path / "bad.json"), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a dsqlkit bench result" in bad.stderr


# -- in a real browser -----------------------------------------------------------------------


def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a + b) mod 256 over whole rows at once: SWAR on Python's big integers."""
    n = len(a)
    x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
    low = int.from_bytes(b"\x7f" * n, "big")
    high = int.from_bytes(b"\x80" * n, "big")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "big")


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        filt, line = raw[start], raw[start + 1:start + 1 + stride]
        if filt == 0:
            cur = line
        elif filt == 2:
            cur = _add_bytes(line, prev)
        else:
            out = bytearray(line)
            for i in range(stride):
                left = out[i - bpp] if i >= bpp else 0
                if filt == 1:
                    pred = left
                elif filt == 3:
                    pred = (left + prev[i]) >> 1
                else:
                    up = prev[i]
                    ul = prev[i - bpp] if i >= bpp else 0
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                out[i] = (out[i] + pred) & 0xFF
            cur = bytes(out)
        rows.append(cur)
        prev = cur
    return width, height, bpp, rows


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(pair: list[RunResult], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the "
                    "report's browser rendering is not checked")
    page = tmp_path / "report.html"
    page.write_text(render_report(pair), encoding="utf-8")
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    width, height, bpp, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    pixels: Counter[bytes] = Counter()
    for row in rows[::2]:
        pixels.update(row[i:i + 3] for i in range(0, len(row), bpp))
    total = sum(pixels.values())
    most = pixels.most_common(1)[0][1]
    # Text, gradients and anti-aliased charts: a blank or unstyled page has a few dozen.
    assert len(pixels) > 500, f"only {len(pixels)} distinct colours"
    assert most / total < 0.75, "the page is mostly one colour"
    # The composition bars are painted in the outcome colours, without transparency.
    for name, hex_colour in (("committed", OK), ("conflict", CONFLICT)):
        rgb = bytes.fromhex(hex_colour[1:])
        assert pixels[rgb] > 200, f"{name} colour {hex_colour} not painted"
    # The header's dark gradient fills the top of the page.
    top = rows[10]
    r, g, b = top[600 * bpp], top[600 * bpp + 1], top[600 * bpp + 2]
    assert r < 80 and g < 90 and b > r, (r, g, b)
