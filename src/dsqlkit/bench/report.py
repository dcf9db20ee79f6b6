"""The HTML report: one self-contained file, inline CSS and SVG, no script, no network.

:func:`render_report` is a pure function of recorded runs (``RunResult``s) to a string. Given
several runs (the demo gives two: without and with retry) it puts them side by side, and every
chart of the same kind shares its scales across runs, so that bars of equal height mean equal
numbers and the comparison is honest.

Charts: outcome composition, latency distribution (log-binned, share of transfers), latency by
percentile (HdrHistogram's classic plot, runs overlaid), attempts per transfer, and
throughput with conflicts per second over time.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence

from dsqlkit import __version__

from .outcomes import CONFLICTS, FAILURES, Outcome
from .results import RunResult
from .stats import Summary, buckets, latency_bins, log_edges, percentiles
from .stats import format_ms as fmt_ms

__all__ = ["render_report"]

RUN_COLOURS = ("#4361ee", "#0f9d8a", "#9b5de5", "#f08a24")
OK = "#2a9d8f"
CONFLICT = "#e63946"
INSUFFICIENT = "#f4a261"
OTHER = "#8d99ae"
OUTCOME_COLOURS = {
    Outcome.SUCCESS: OK,
    Outcome.OC000: CONFLICT,
    Outcome.OC001: "#b5179e",
    Outcome.SERIALIZATION: "#ff6b6b",
    Outcome.INSUFFICIENT_BALANCE: INSUFFICIENT,
    Outcome.OTHER: OTHER,
}
INK = "#1f2430"
MUTED = "#6b7280"
GRID = "#e8eaef"

W, H = 540, 250
PAD_L, PAD_R, PAD_T, PAD_B = 66, 18, 22, 44


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: float) -> str:
    """Compact numbers for axis labels."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if a >= 10_000:
        return f"{v / 1000:g}k"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.3g}"




def nice_ticks(hi: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times 10^k) up to at least ``hi``."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def log_ticks(lo: float, hi: float, px_per_decade: float = 1e9,
              min_gap: float = 0.0) -> list[float]:
    """Ticks between ``lo`` and ``hi`` (both > 0): 1-2-5 per decade when they fit
    ``min_gap`` pixels apart at ``px_per_decade``, else 1-3, else one per decade (or fewer)."""
    # The tightest gap of each pattern, in decades: 1→2 is log10(2), 1→3 is log10(3).
    if px_per_decade * math.log10(2) >= min_gap:
        mantissas: tuple[int, ...] = (1, 2, 5)
        every = 1
    elif px_per_decade * math.log10(3) >= min_gap:
        mantissas, every = (1, 3), 1
    else:
        mantissas, every = (1,), max(1, math.ceil(min_gap / max(px_per_decade, 1e-9)))
    out = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        if k % every:
            continue
        for m in mantissas:
            v = m * 10.0**k
            if lo * 0.999 <= v <= hi * 1.001:
                out.append(v)
    return out


class Plot:
    """An SVG drawing area with a linear or logarithmic x axis and a linear or log y axis."""

    def __init__(self, x_lo: float, x_hi: float, y_hi: float, *, x_log: bool = False,
                 y_lo: float = 0.0, y_log: bool = False, width: int = W,
                 height: int = H) -> None:
        self.w, self.h = width, height
        self.x_lo, self.x_hi, self.x_log = x_lo, x_hi, x_log
        self.y_lo, self.y_hi, self.y_log = y_lo, y_hi, y_log
        self.parts: list[str] = []

    @property
    def left(self) -> float:
        return PAD_L

    @property
    def right(self) -> float:
        return self.w - PAD_R

    @property
    def top(self) -> float:
        return PAD_T

    @property
    def bottom(self) -> float:
        return self.h - PAD_B

    def x(self, v: float) -> float:
        if self.x_log:
            f = (math.log10(v) - math.log10(self.x_lo)) / (
                math.log10(self.x_hi) - math.log10(self.x_lo))
        else:
            f = (v - self.x_lo) / ((self.x_hi - self.x_lo) or 1)
        return self.left + f * (self.right - self.left)

    def y(self, v: float) -> float:
        if self.y_log:
            v = max(v, self.y_lo)
            f = (math.log10(v) - math.log10(self.y_lo)) / (
                math.log10(self.y_hi) - math.log10(self.y_lo))
        else:
            f = (v - self.y_lo) / ((self.y_hi - self.y_lo) or 1)
        return self.bottom - f * (self.bottom - self.top)

    def x_decade_px(self) -> float:
        return (self.right - self.left) / (math.log10(self.x_hi) - math.log10(self.x_lo))

    def y_decade_px(self) -> float:
        return (self.bottom - self.top) / (math.log10(self.y_hi) - math.log10(self.y_lo))

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def y_grid(self, ticks: Iterable[float], fmt: Callable[[float], str] = _fmt) -> None:
        for t in ticks:
            y = self.y(t)
            self.add(f'<line x1="{self.left:.1f}" x2="{self.right:.1f}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="{GRID}"/>')
            self.add(f'<text x="{self.left - 8:.1f}" y="{y + 4:.1f}" text-anchor="end" '
                     f'class="tick">{esc(fmt(t))}</text>')

    def x_labels(self, ticks: Iterable[float], fmt: Callable[[float], str] = _fmt,
                 grid: bool = False) -> None:
        for t in ticks:
            x = self.x(t)
            if grid:
                self.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top:.1f}" '
                         f'y2="{self.bottom:.1f}" stroke="{GRID}"/>')
            self.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom:.1f}" '
                     f'y2="{self.bottom + 4:.1f}" stroke="{MUTED}"/>')
            self.add(f'<text x="{x:.1f}" y="{self.bottom + 17:.1f}" text-anchor="middle" '
                     f'class="tick">{esc(fmt(t))}</text>')

    def axis_titles(self, x_title: str, y_title: str) -> None:
        self.add(f'<line x1="{self.left:.1f}" x2="{self.right:.1f}" y1="{self.bottom:.1f}" '
                 f'y2="{self.bottom:.1f}" stroke="#c3c8d2"/>')
        self.add(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.h - 6:.1f}" '
                 f'text-anchor="middle" class="axis">{esc(x_title)}</text>')
        self.add(f'<text transform="translate(13 {(self.top + self.bottom) / 2:.1f}) '
                 f'rotate(-90)" text-anchor="middle" class="axis">{esc(y_title)}</text>')

    def svg(self, label: str) -> str:
        return (f'<svg viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{esc(label)}" '
                f'xmlns="http://www.w3.org/2000/svg">' + "".join(self.parts) + "</svg>")


# -- charts ----------------------------------------------------------------------------------


def _panel_width(runs: Sequence[RunResult]) -> int:
    # One run gets the whole row: a wider drawing keeps text and marks at the same size as
    # in the two-column layout instead of scaling them up.
    return W if len(runs) > 1 else W * 2


def _latency_range(runs: Sequence[RunResult]) -> tuple[float, float] | None:
    lats = [r.summary.latency for r in runs if r.summary.latency is not None]
    if not lats:
        return None
    lo = min(lat.min for lat in lats)
    hi = max(lat.max for lat in lats)
    return max(lo, 0.001), max(hi, lo * 1.5, 0.002)


def latency_histograms(runs: Sequence[RunResult]) -> list[str]:
    span = _latency_range(runs)
    if span is None:
        return [_empty("no transfers finished") for _ in runs]
    decades = math.log10(span[1]) - math.log10(span[0])
    edges = log_edges(span[0], span[1], per_decade=20 if decades < 2.5 else 10)
    shares = []
    for r in runs:
        bins = latency_bins(r.stats.latency, edges)
        total = sum(bins) or 1
        shares.append([100.0 * b / total for b in bins])
    y_ticks = nice_ticks(max(max(s) for s in shares) or 1.0, 4)
    out = []
    for i, r in enumerate(runs):
        p = Plot(edges[0], edges[-1], y_ticks[-1], x_log=True, width=_panel_width(runs))
        p.y_grid(y_ticks, lambda v: f"{v:g}%")
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        for k, share in enumerate(shares[i]):
            if share <= 0:
                continue
            x0, x1 = p.x(edges[k]), p.x(edges[k + 1])
            y = p.y(share)
            p.add(f'<rect x="{x0 + 0.6:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1.2, 0.8):.1f}" '
                  f'height="{p.bottom - y:.1f}" rx="1.5" fill="{colour}" fill-opacity="0.85">'
                  f'<title>{esc(fmt_ms(edges[k]))} to {esc(fmt_ms(edges[k + 1]))}: '
                  f'{share:.2f}%</title></rect>')
        lat = r.summary.latency
        if lat is not None:
            for name, v, dy in (("p50", lat.p50, 0), ("p99", lat.p99, 13)):
                x = p.x(min(max(v, edges[0]), edges[-1]))
                p.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{p.top:.1f}" y2="{p.bottom:.1f}" '
                      f'stroke="{INK}" stroke-dasharray="4 3" stroke-width="1"/>')
                anchor = "end" if x > p.right - 60 else "start"
                dx = -4 if anchor == "end" else 4
                p.add(f'<text x="{x + dx:.1f}" y="{p.top + 10 + dy:.1f}" text-anchor="{anchor}" '
                      f'class="marker">{name} {esc(fmt_ms(v))}</text>')
        p.x_labels(log_ticks(edges[0], edges[-1], p.x_decade_px(), 40), _ms_tick)
        p.axis_titles("latency per transfer (log scale)", "share of transfers")
        out.append(p.svg(f"latency distribution of {r.label}"))
    return out


def _ms_tick(v: float) -> str:
    if v < 1:
        return f"{v * 1000:g}µs"
    if v >= 1000:
        return f"{v / 1000:g}s"
    return f"{v:g}ms"


def latency_percentiles(runs: Sequence[RunResult]) -> str:
    """Latency against percentile, x = 1/(1-p) on a log scale, all runs on one plot."""
    series: list[list[tuple[float, float]]] = []
    for r in runs:
        h = r.stats.latency
        if h.get_total_count() == 0:
            series.append([])
            continue
        qs = _percentile_points()
        values = percentiles(buckets(h), qs)
        series.append([(q, v / 1000.0) for q, v in zip(qs, values, strict=True)])
    if not any(series):
        return _empty("no transfers finished", width=W * 2)
    y_lo = max(min(v for s in series for _, v in s) * 0.8, 0.001)
    y_hi = max(v for s in series for _, v in s) * 1.25
    p = Plot(1.0, 10_000.0, y_hi, x_log=True, y_lo=y_lo, y_log=True, width=W * 2, height=280)
    p.y_grid(log_ticks(y_lo, y_hi, p.y_decade_px(), 18), _ms_tick)
    labels = {1.0: "0%", 10.0: "90%", 100.0: "99%", 1000.0: "99.9%", 10_000.0: "99.99%"}
    p.x_labels(list(labels), lambda v: labels[v], grid=True)
    for i, pts in enumerate(series):
        if not pts:
            continue
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        path = " ".join(
            f"{'M' if k == 0 else 'L'}{p.x(1.0 / (1.0 - q / 100.0)):.1f},{p.y(v):.1f}"
            for k, (q, v) in enumerate(pts)
        )
        p.add(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2.4" '
              f'stroke-linejoin="round"/>')
        last_q, last_v = pts[-1]
        p.add(f'<circle cx="{p.x(1.0 / (1.0 - last_q / 100.0)):.1f}" cy="{p.y(last_v):.1f}" '
              f'r="3.5" fill="{colour}"/>')
    p.axis_titles("percentile", "latency (log scale)")
    return p.svg("latency by percentile")


def _percentile_points() -> list[float]:
    # Dense near the tail, where the runs differ: 0..99.99 evenly in log(1/(1-p)).
    return [100.0 * (1.0 - 10 ** (-k / 25.0)) for k in range(0, 101)]


def attempts_charts(runs: Sequence[RunResult]) -> list[str]:
    top = max((max(r.stats.attempts, default=1) for r in runs), default=1)
    cap = 16
    categories = list(range(1, min(top, cap) + 1))
    overflow = top > cap

    def counts(r: RunResult) -> list[int]:
        c = [r.stats.attempts.get(n, 0) for n in categories]
        if overflow:
            c[-1] += sum(v for n, v in r.stats.attempts.items() if n > cap)
        return c

    data = [counts(r) for r in runs]
    totals = [max(sum(c), 1) for c in data]
    shares = [[100.0 * v / t for v in c] for c, t in zip(data, totals, strict=True)]
    y_ticks = nice_ticks(max((max(s, default=0) for s in shares), default=1.0) or 1.0, 4)
    out = []
    for i, r in enumerate(runs):
        p = Plot(0.5, len(categories) + 0.5, y_ticks[-1], width=_panel_width(runs))
        p.y_grid(y_ticks, lambda v: f"{v:g}%")
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        slot = (p.right - p.left) / len(categories)
        bar = min(slot * 0.7, 48)
        for k, n in enumerate(categories):
            value, share = data[i][k], shares[i][k]
            cx = p.x(n)
            y = p.y(share)
            if value:
                p.add(f'<rect x="{cx - bar / 2:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                      f'height="{max(p.bottom - y, 1.5):.1f}" rx="2" fill="{colour}">'
                      f'<title>{n} attempt{"s" if n > 1 else ""}: {value:,} transfers</title>'
                      f'</rect>')
                p.add(f'<text x="{cx:.1f}" y="{min(y, p.bottom - 1.5) - 5:.1f}" '
                      f'text-anchor="middle" class="value">{value:,}</text>')
        p.x_labels(categories, lambda v: f"{v:g}+" if overflow and v == cap else f"{v:g}")
        p.axis_titles("attempts per transfer", "share of transfers")
        out.append(p.svg(f"attempts per transfer of {r.label}"))
    return out


def timeline_charts(runs: Sequence[RunResult]) -> list[str]:
    seconds = max((max(len(r.stats.timeline_successes), len(r.stats.timeline_failures),
                       len(r.stats.timeline_conflicts)) for r in runs), default=1) or 1

    def at(series: list[int], k: int) -> int:
        return series[k] if k < len(series) else 0

    peak = 1
    for r in runs:
        st = r.stats
        for k in range(seconds):
            peak = max(peak, at(st.timeline_successes, k) + at(st.timeline_failures, k),
                       at(st.timeline_conflicts, k))
    y_ticks = nice_ticks(peak, 4)
    out = []
    for r in runs:
        st = r.stats
        p = Plot(0, seconds, y_ticks[-1], width=_panel_width(runs))
        p.y_grid(y_ticks)
        slot = (p.right - p.left) / seconds
        bar = max(slot * 0.78, 1.0)
        points = []
        own = max(1, math.ceil(r.elapsed - 1e-9), len(st.timeline_successes),
                  len(st.timeline_failures), len(st.timeline_conflicts))
        for k in range(min(own, seconds)):
            ok, bad, occ = (at(st.timeline_successes, k), at(st.timeline_failures, k),
                            at(st.timeline_conflicts, k))
            x0 = p.x(k) + (slot - bar) / 2
            y_ok = p.y(ok)
            if ok:
                p.add(f'<rect x="{x0:.1f}" y="{y_ok:.1f}" width="{bar:.1f}" '
                      f'height="{p.bottom - y_ok:.1f}" fill="{OK}" fill-opacity="0.9">'
                      f'<title>second {k + 1}: {ok:,} committed</title></rect>')
            if bad:
                y_bad = p.y(ok + bad)
                p.add(f'<rect x="{x0:.1f}" y="{y_bad:.1f}" width="{bar:.1f}" '
                      f'height="{y_ok - y_bad:.1f}" fill="{OTHER}" fill-opacity="0.95">'
                      f'<title>second {k + 1}: {bad:,} failed</title></rect>')
            points.append((p.x(k + 0.5), p.y(occ), occ, k))
        if any(occ for *_, occ, _k in points):
            path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}"
                            for j, (x, y, _, _k) in enumerate(points))
            p.add(f'<path d="{path}" fill="none" stroke="{CONFLICT}" stroke-width="2.2" '
                  f'stroke-linejoin="round"/>')
            for x, y, occ, k in points:
                p.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{CONFLICT}">'
                      f'<title>second {k + 1}: {occ:,} conflicts</title></circle>')
        step = max(1, math.ceil(seconds / 10))
        p.x_labels([k for k in range(0, seconds + 1, step)], lambda v: f"{v:g}s")
        p.axis_titles("time since start", "transfers per second")
        out.append(p.svg(f"throughput and conflicts over time of {r.label}"))
    return out


def _empty(message: str, width: int = W) -> str:
    return (f'<svg viewBox="0 0 {width} {H}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="{width / 2}" y="{H / 2}" text-anchor="middle" class="axis">'
            f'{esc(message)}</text></svg>')


# -- page ------------------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _composition(s: Summary) -> str:
    total = s.transfers or 1
    segs = [(Outcome.SUCCESS, s.successes)] + [(o, s.failures_by_class[o]) for o in FAILURES]
    bars = "".join(
        f'<span style="width:{100.0 * n / total:.3f}%;background:{OUTCOME_COLOURS[o]}" '
        f'title="{esc(o.label)}: {n:,}"></span>'
        for o, n in segs if n
    )
    legend = "".join(
        f'<span class="key"><i style="background:{OUTCOME_COLOURS[o]}"></i>'
        f'{esc(o.label)} <b>{n:,}</b></span>'
        for o, n in segs if n
    )
    return f'<div class="stack">{bars}</div><div class="keys">{legend}</div>'


def _tile(label: str, value: str, note: str = "", tone: str = "") -> str:
    return (f'<div class="tile {tone}"><div class="label">{esc(label)}</div>'
            f'<div class="value">{esc(value)}</div><div class="note">{esc(note)}</div></div>')


def _run_card(i: int, r: RunResult) -> str:
    s = r.summary
    lat = s.latency
    conflict_tone = "bad" if s.conflict_failures else "good"
    tiles = [
        _tile("committed", f"{s.successes:,}", f"of {s.transfers:,} · "
              f"{_pct(s.successes, s.transfers)}", "good" if s.failures == 0 else ""),
        _tile("failed: conflict", f"{s.conflict_failures:,}",
              f"{_pct(s.conflict_failures, s.transfers)} of transfers", conflict_tone),
        _tile("retries", f"{s.retries:,}", f"max {s.max_attempts} "
              f"attempt{'s' if s.max_attempts != 1 else ''} · "
              f"{s.retried_share * 100:.1f}% retried"),
        _tile("p50 latency", fmt_ms(lat.p50) if lat else "-",
              f"p90 {fmt_ms(lat.p90)}" if lat else ""),
        _tile("p99 latency", fmt_ms(lat.p99) if lat else "-",
              f"max {fmt_ms(lat.max)}" if lat else ""),
        _tile("throughput", f"{s.throughput:,.0f}/s", f"{s.elapsed:.2f} s elapsed"),
    ]
    money = ""
    if r.balances is not None:
        b = r.balances
        if b.conserved:
            money = (f'<div class="money good">✓ money conserved: the {b.accounts:,} balances '
                     f'sum to {esc(b.after)} before and after</div>')
        else:
            money = (f'<div class="money bad">✗ money NOT conserved: {esc(b.before)} before, '
                     f'{esc(b.after)} after</div>')
    colour = RUN_COLOURS[i % len(RUN_COLOURS)]
    interrupted = '<span class="pill warn">interrupted</span>' if r.interrupted else ""
    return (f'<section class="card run"><h3><i class="dot" style="background:{colour}"></i>'
            f'{esc(r.label)} {interrupted}</h3><p class="config">{esc(_config_text(r))}</p>'
            f'<div class="tiles">{"".join(tiles)}</div>{_composition(s)}{money}</section>')


def _config_text(r: RunResult) -> str:
    c = r.config
    size = f"{c.iterations:,} transfers" if c.iterations is not None else f"{c.duration:g} s"
    parts = [size, f"{c.threads} threads", f"{c.accounts:,} accounts"]
    if c.processes > 1:
        parts.append(f"{c.processes} processes")
    if c.retry is True and c.retry_policy is not None:
        parts.append(f"OCC retry: {c.retry_policy['preset']}, ≤ "
                     f"{c.retry_policy['max_attempts']} attempts")
    elif c.retry is False:
        parts.append("no retry")
    parts.append(f"seed {c.seed}")
    return " · ".join(parts)


def _summary_table(runs: Sequence[RunResult]) -> str:
    sums = [r.summary for r in runs]
    rows: list[tuple[str, list[str], str]] = []

    def add(name: str, cells: Iterable[str], cls: str = "") -> None:
        rows.append((name, list(cells), cls))

    add("target", [esc(r.config.target_description) for r in runs])
    add("transfers", [f"{s.transfers:,}" for s in sums], "strong")
    add("committed", [f"{s.successes:,} <small>{_pct(s.successes, s.transfers)}</small>"
                      for s in sums])
    for o in FAILURES:
        cells = []
        for s in sums:
            n = s.failures_by_class[o]
            tone = "bad" if n and o in CONFLICTS else ("warn" if n else "zero")
            cells.append(f'<span class="{tone}">{n:,}</span>')
        add(f"failed: {o.label}", cells)
    add("conflicts seen (retried or not)", [
        f"{s.total_conflicts_seen:,}" + (" <small>" + ", ".join(
            f"{o.value} {s.conflicts_seen[o]:,}" for o in CONFLICTS if s.conflicts_seen[o])
            + "</small>" if s.total_conflicts_seen else "") for s in sums])
    add("retries", [f"{s.retries:,}" for s in sums])
    add("attempts: max / mean", [f"{s.max_attempts} / {s.mean_attempts:.2f}" for s in sums])
    add("transfers that retried", [f"{s.retried_transfers:,} <small>"
                                   f"{s.retried_share * 100:.1f}%</small>" for s in sums])
    for key in ("min", "p50", "p90", "p99", "max"):
        add(f"latency {key}", [fmt_ms(getattr(s.latency, key)) if s.latency else "-"
                               for s in sums], "strong" if key in ("p50", "p99") else "")
    if any(s.server_latency is not None for s in sums):
        add("in-function p50 / p99", [
            f"{fmt_ms(s.server_latency.p50)} / {fmt_ms(s.server_latency.p99)}"
            if s.server_latency else "-" for s in sums])
    add("throughput", [f"{s.throughput:,.1f} /s" for s in sums], "strong")
    add("elapsed", [f"{s.elapsed:.2f} s" for s in sums])
    money = []
    for r in runs:
        b = r.balances
        if b is None:
            money.append('<span class="zero">not checked</span>')
        elif b.conserved:
            money.append(f'<span class="good">✓ {esc(b.after)}</span>')
        else:
            money.append(f'<span class="bad">✗ {esc(b.before)} → {esc(b.after)}</span>')
    add("sum of balances", money, "strong")
    head = "".join(
        f'<th><i class="dot" style="background:{RUN_COLOURS[i % len(RUN_COLOURS)]}"></i>'
        f'{esc(r.label)}</th>' for i, r in enumerate(runs))
    body = "".join(
        f'<tr class="{cls}"><td>{esc(name)}</td>' + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>" for name, cells, cls in rows)
    return (f'<table class="summary"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table>')


def _examples(runs: Sequence[RunResult]) -> str:
    items = []
    for i, r in enumerate(runs):
        for o in FAILURES:
            for msg in r.stats.examples.get(o, []):
                items.append(
                    f'<li><i class="dot" style="background:{RUN_COLOURS[i % len(RUN_COLOURS)]}">'
                    f'</i><span class="tag" style="background:{OUTCOME_COLOURS[o]}">'
                    f'{esc(o.label)}</span><code>{esc(msg)}</code></li>')
    if not items:
        return '<p class="muted">No transfer failed.</p>'
    return f'<ul class="examples">{"".join(items)}</ul>'


def _panels(title: str, note: str, svgs: Sequence[str], runs: Sequence[RunResult]) -> str:
    panels = "".join(
        f'<figure><figcaption><i class="dot" style="background:'
        f'{RUN_COLOURS[i % len(RUN_COLOURS)]}"></i>{esc(r.label)}</figcaption>{svg}</figure>'
        for i, (svg, r) in enumerate(zip(svgs, runs, strict=True)))
    return (f'<section class="card"><h2>{esc(title)}</h2><p class="muted">{esc(note)}</p>'
            f'<div class="grid" style="--cols:{min(len(runs), 2)}">{panels}</div></section>')


def _legend(entries: Sequence[tuple[str, str, str]]) -> str:
    return '<div class="keys">' + "".join(
        f'<span class="key"><i class="{shape}" style="background:{colour}"></i>{esc(text)}</span>'
        for text, colour, shape in entries) + "</div>"


def render_report(runs: Sequence[RunResult], *, title: str | None = None,
                  subtitle: str | None = None) -> str:
    """The HTML page for one or more runs, as a string."""
    if not runs:
        raise ValueError("render_report needs at least one run")
    title = title or (f"Transfer benchmark: {runs[0].label}" if len(runs) == 1
                      else "Transfer benchmark: " + " vs ".join(r.label for r in runs))
    subtitle = subtitle or f"{runs[0].config.target_description} · started {runs[0].started_at}"
    cols = min(len(runs), 2)
    cards = "".join(_run_card(i, r) for i, r in enumerate(runs))
    pct_legend = _legend([(r.label, RUN_COLOURS[i % len(RUN_COLOURS)], "line")
                          for i, r in enumerate(runs)])
    time_legend = _legend([("committed", OK, "sq"), ("failed", OTHER, "sq"),
                           ("OCC conflicts (incl. retried)", CONFLICT, "line")])
    body = f"""
<header><div class="wrap"><div class="brand">dsqlkit bench</div>
<h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div></header>
<main class="wrap">
<div class="grid" style="--cols:{cols}">{cards}</div>
<section class="card"><h2>Summary</h2>{_summary_table(runs)}</section>
{_panels("Latency distribution", "Time per transfer as the client saw it (retries and their "
         "waits included), in logarithmic bins; dashed lines mark p50 and p99.",
         latency_histograms(runs), runs)}
<section class="card"><h2>Latency by percentile</h2>
<p class="muted">How the tail grows: each point is the latency that this share of transfers
stayed under. Log scales on both axes.</p>{pct_legend}
<div class="wide">{latency_percentiles(runs)}</div></section>
{_panels("Attempts per transfer", "How many times the transaction ran before it committed or "
         "gave up; 1 means no conflict.", attempts_charts(runs), runs)}
<section class="card"><h2>Throughput and conflicts over time</h2>
<p class="muted">Per-second buckets: finished transfers (bars) and OCC conflicts seen, including
those a retry absorbed (line). Scales are shared.</p>{time_legend}
<div class="grid" style="--cols:{cols}">{"".join(
    f'<figure><figcaption><i class="dot" style="background:{RUN_COLOURS[i % len(RUN_COLOURS)]}">'
    f'</i>{esc(r.label)}</figcaption>{svg}</figure>'
    for i, (svg, r) in enumerate(zip(timeline_charts(runs), runs, strict=True)))}</div></section>
<section class="card"><h2>Failure examples</h2>{_examples(runs)}</section>
<footer>Generated by dsqlkit {esc(__version__)} · latency recorded in an HdrHistogram
(1 µs to 1 h, 3 significant digits) · this file is self-contained and needs no network.</footer>
</main>"""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>')


CSS = """
:root{--bg:#f4f5f8;--card:#fff;--ink:#1f2430;--muted:#6b7280;--line:#e6e8ee;
--good:#1f8a70;--bad:#d62839;--warn:#c77d16}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
"Noto Sans","Liberation Sans",sans-serif;-webkit-font-smoothing:antialiased}
.wrap{max-width:1200px;margin:0 auto;padding:0 32px}
header{background:linear-gradient(120deg,#141b34 0%,#243b7a 60%,#3554b5 100%);color:#fff;
padding:30px 0 34px}
header h1{margin:4px 0 6px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header p{margin:0;color:#c9d3f2}
.brand{font-size:12px;letter-spacing:.14em;text-transform:uppercase;color:#9fb2ee;
font-weight:600}
main.wrap{padding-top:24px;padding-bottom:40px}
.card{background:var(--card);border-radius:14px;padding:20px 24px;margin-bottom:20px;
box-shadow:0 1px 2px rgba(16,24,40,.05),0 2px 8px rgba(16,24,40,.06)}
.grid{display:grid;grid-template-columns:repeat(var(--cols),minmax(0,1fr));gap:20px}
.grid>.card{margin-bottom:0}
main>.grid{margin-bottom:20px}
h2{font-size:17px;margin:0 0 4px;font-weight:650}
h3{font-size:18px;margin:0 0 2px;display:flex;align-items:center;gap:8px}
.config,.muted{color:var(--muted);margin:0 0 12px;font-size:13px}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;
vertical-align:middle;flex:none}
.tiles{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:10px;margin:14px 0}
.tile{border:1px solid var(--line);border-radius:10px;padding:10px 12px;background:#fafbfc}
.tile .label{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
font-weight:600}
.tile .value{font-size:24px;font-weight:680;font-variant-numeric:tabular-nums;
letter-spacing:-.01em}
.tile .note{font-size:12px;color:var(--muted)}
.tile.good{background:#eefaf5;border-color:#c6ecdc}.tile.good .value{color:var(--good)}
.tile.bad{background:#fdf0f1;border-color:#f6c9ce}.tile.bad .value{color:var(--bad)}
.stack{display:flex;height:14px;border-radius:7px;overflow:hidden;background:var(--line);
margin-top:4px}
.stack span{display:block;height:100%}
.keys{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0 4px;font-size:12.5px;
color:var(--muted)}
.key{display:inline-flex;align-items:center;gap:6px}.key b{color:var(--ink)}
.key i{display:inline-block;width:11px;height:11px;border-radius:3px}
.key i.line{height:3px;width:18px;border-radius:2px}
.money{margin-top:12px;padding:8px 12px;border-radius:8px;font-weight:600;font-size:13px}
.money.good{background:#eefaf5;color:var(--good)}.money.bad{background:#fdf0f1;color:var(--bad)}
table.summary{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums;
margin-top:8px}
table.summary th,table.summary td{padding:7px 14px;border-bottom:1px solid var(--line);
text-align:right;white-space:nowrap}
table.summary th{font-size:13px;background:#f8f9fb}
table.summary td:first-child,table.summary th:first-child{text-align:left;color:var(--muted);
width:34%}
table.summary tr.strong td{font-weight:650}
table.summary tr.strong td:first-child{color:var(--ink)}
table.summary small{color:var(--muted);font-weight:400;margin-left:4px}
.bad{color:var(--bad);font-weight:650}.warn{color:var(--warn);font-weight:600}
.good{color:var(--good);font-weight:650}.zero{color:#a3a9b5}
figure{margin:0}
figcaption{font-weight:600;font-size:13.5px;margin:6px 0 2px}
svg{width:100%;height:auto;display:block;overflow:visible}
svg text{font-family:inherit}
svg .tick{font-size:10.5px;fill:#6b7280}
svg .axis{font-size:11.5px;fill:#4b5363}
svg .marker{font-size:10.5px;fill:#1f2430;font-weight:600}
svg .value{font-size:10.5px;fill:#1f2430;font-weight:600}
.wide{max-width:1100px}
.examples{list-style:none;padding:0;margin:8px 0 0}
.examples li{display:flex;align-items:center;gap:8px;padding:6px 0;
border-bottom:1px solid var(--line)}
.tag{color:#fff;font-size:11px;font-weight:600;padding:2px 8px;border-radius:10px;
white-space:nowrap}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
color:#39404f;overflow-wrap:anywhere}
.pill{font-size:11px;padding:2px 8px;border-radius:10px;font-weight:600}
.pill.warn{background:#fff4e0;color:var(--warn)}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
@media (max-width:900px){.grid{grid-template-columns:minmax(0,1fr)}
.tiles{grid-template-columns:repeat(2,minmax(0,1fr))}}
"""
