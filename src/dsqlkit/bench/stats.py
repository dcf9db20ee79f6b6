"""Recording transfers and turning the records into numbers. No I/O.

Every worker thread owns one :class:`Recorder` and is its only writer, so the hot path takes
no lock; the main thread reads two integers from each recorder for the progress bar (safe
under the GIL, and a count one transfer stale is fine for a progress bar). At the end the
recorders, and across processes their serialised forms, merge into one :class:`RunStats`,
from which :class:`Summary` computes everything the console, the JSON and the HTML report
show.

Latency is recorded in microseconds into an HDR histogram (1 µs to 1 h, 3 significant
digits): percentiles stay exact to 0.1 % at any count, and histograms from threads and
processes add up losslessly, which averaging percentiles never does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from .outcomes import CONFLICTS, FAILURES, Outcome

__all__ = [
    "LatencySummary",
    "Recorder",
    "RunStats",
    "Summary",
    "format_ms",
    "new_histogram",
]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_FIGURES = 3
MAX_EXAMPLES = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def _bump(series: list[int], index: int, by: int = 1) -> None:
    if index >= len(series):
        series.extend([0] * (index + 1 - len(series)))
    series[index] += by


def _to_us(seconds: float) -> int:
    # A histogram cannot hold 0; anything under a microsecond is recorded as 1 µs.
    return min(max(int(seconds * 1_000_000), LOWEST_US), HIGHEST_US)


class Recorder:
    """One worker's record of its transfers. Single writer, no locks."""

    __slots__ = (
        "attempts",
        "conflicts",
        "counts",
        "done",
        "epoch",
        "examples",
        "failed",
        "latency",
        "server_latency",
        "timeline_conflicts",
        "timeline_failures",
        "timeline_successes",
    )

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch
        self.latency = new_histogram()
        self.server_latency: HdrHistogram | None = None
        self.counts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.conflicts: dict[Outcome, int] = dict.fromkeys(CONFLICTS, 0)
        self.attempts: dict[int, int] = {}
        self.examples: dict[Outcome, list[str]] = {}
        self.timeline_successes: list[int] = []
        self.timeline_failures: list[int] = []
        self.timeline_conflicts: list[int] = []
        self.done = 0
        self.failed = 0

    def record(
        self,
        outcome: Outcome,
        start: float,
        end: float,
        attempts: int = 1,
        message: str | None = None,
        server_ms: float | None = None,
    ) -> None:
        """One finished transfer; ``start``/``end`` on the ``time.perf_counter`` clock."""
        self.latency.record_value(_to_us(end - start))
        self.counts[outcome] += 1
        self.attempts[attempts] = self.attempts.get(attempts, 0) + 1
        second = int(end - self.epoch) if end > self.epoch else 0
        if outcome is Outcome.SUCCESS:
            _bump(self.timeline_successes, second)
        else:
            self.failed += 1
            _bump(self.timeline_failures, second)
            if outcome in self.conflicts:
                # The conflict that ended the transfer (no retry, or retries exhausted).
                self.conflicts[outcome] += 1
                _bump(self.timeline_conflicts, second)
            if message is not None:
                seen = self.examples.setdefault(outcome, [])
                if len(seen) < MAX_EXAMPLES and message not in seen:
                    seen.append(message)
        if server_ms is not None:
            if self.server_latency is None:
                self.server_latency = new_histogram()
            self.server_latency.record_value(_to_us(server_ms / 1000.0))
        self.done += 1

    def conflict(self, outcome: Outcome, at: float, count: int = 1) -> None:
        """Conflicts that were retried (the transfer goes on); ``at`` on perf_counter."""
        self.conflicts[outcome] += count
        _bump(self.timeline_conflicts, int(at - self.epoch) if at > self.epoch else 0, count)


@dataclass
class RunStats:
    """Everything recorded during a run, merged over workers and processes."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    conflicts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(CONFLICTS, 0))
    attempts: dict[int, int] = field(default_factory=dict)
    examples: dict[Outcome, list[str]] = field(default_factory=dict)
    latency: HdrHistogram = field(default_factory=new_histogram)
    server_latency: HdrHistogram | None = None
    timeline_successes: list[int] = field(default_factory=list)
    timeline_failures: list[int] = field(default_factory=list)
    timeline_conflicts: list[int] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: Iterable[Recorder | RunStats]) -> RunStats:
        out = cls()
        for part in parts:
            out._add(part)
        out.attempts = dict(sorted(out.attempts.items()))
        return out

    def _add(self, part: Recorder | RunStats) -> None:
        for k, v in part.counts.items():
            self.counts[k] += v
        for k, v in part.conflicts.items():
            self.conflicts[k] += v
        for n, v in part.attempts.items():
            self.attempts[n] = self.attempts.get(n, 0) + v
        for outcome, messages in part.examples.items():
            seen = self.examples.setdefault(outcome, [])
            for m in messages:
                if len(seen) < MAX_EXAMPLES and m not in seen:
                    seen.append(m)
        self.latency.add(part.latency)
        if part.server_latency is not None:
            if self.server_latency is None:
                self.server_latency = new_histogram()
            self.server_latency.add(part.server_latency)
        for mine, theirs in (
            (self.timeline_successes, part.timeline_successes),
            (self.timeline_failures, part.timeline_failures),
            (self.timeline_conflicts, part.timeline_conflicts),
        ):
            for i, v in enumerate(theirs):
                if v:
                    _bump(mine, i, v)

    # -- serialisation (between processes, and inside the JSON document) --------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {o.value: n for o, n in self.counts.items()},
            "conflicts": {o.value: n for o, n in self.conflicts.items()},
            "attempts": {str(n): c for n, c in sorted(self.attempts.items())},
            "examples": {o.value: list(m) for o, m in self.examples.items()},
            "latency": _encode(self.latency),
            "server_latency": None if self.server_latency is None
            else _encode(self.server_latency),
            "timeline": {
                "successes": list(self.timeline_successes),
                "failures": list(self.timeline_failures),
                "conflicts": list(self.timeline_conflicts),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStats:
        counts = dict.fromkeys(Outcome, 0)
        counts.update({Outcome(k): int(v) for k, v in d["counts"].items()})
        conflicts = dict.fromkeys(CONFLICTS, 0)
        conflicts.update({Outcome(k): int(v) for k, v in d["conflicts"].items()})
        server = d.get("server_latency")
        return cls(
            counts=counts,
            conflicts=conflicts,
            attempts={int(k): int(v) for k, v in d["attempts"].items()},
            examples={Outcome(k): list(v) for k, v in d["examples"].items()},
            latency=_decode(d["latency"]),
            server_latency=None if server is None else _decode(server),
            timeline_successes=list(d["timeline"]["successes"]),
            timeline_failures=list(d["timeline"]["failures"]),
            timeline_conflicts=list(d["timeline"]["conflicts"]),
        )


def _encode(h: HdrHistogram) -> str:
    encoded: bytes = h.encode()
    return encoded.decode("ascii")


def _decode(s: str) -> HdrHistogram:
    h: HdrHistogram = HdrHistogram.decode(s.encode("ascii"))
    return h


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds, from an HDR histogram."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, h: HdrHistogram) -> LatencySummary | None:
        table = buckets(h)
        if not table:
            return None

        def ms(us: float) -> float:
            return round(us / 1000.0, 3)

        total = sum(c for _, c in table)
        p50, p90, p99 = percentiles(table, (50.0, 90.0, 99.0))
        return cls(
            count=total,
            min=ms(h.get_min_value()),
            mean=ms(sum(v * c for v, c in table) / total),
            p50=ms(p50),
            p90=ms(p90),
            p99=ms(p99),
            max=ms(h.get_max_value()),
        )

    def to_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "min": self.min, "mean": self.mean, "p50": self.p50,
                "p90": self.p90, "p99": self.p99, "max": self.max}


@dataclass(frozen=True)
class Summary:
    """The numbers a reader wants, derived from :class:`RunStats` and the elapsed time."""

    transfers: int
    successes: int
    failures: int
    failures_by_class: Mapping[Outcome, int]
    conflicts_seen: Mapping[Outcome, int]
    retries: int
    max_attempts: int
    mean_attempts: float
    retried_transfers: int
    retried_share: float
    latency: LatencySummary | None
    server_latency: LatencySummary | None
    elapsed: float
    throughput: float

    @property
    def conflict_failures(self) -> int:
        return sum(self.failures_by_class[o] for o in CONFLICTS)

    @property
    def total_conflicts_seen(self) -> int:
        return sum(self.conflicts_seen.values())

    @property
    def other_failures(self) -> int:
        return self.failures_by_class[Outcome.OTHER]

    @classmethod
    def of(cls, stats: RunStats, elapsed: float) -> Summary:
        transfers = sum(stats.counts.values())
        attempts_total = sum(n * c for n, c in stats.attempts.items())
        retried = sum(c for n, c in stats.attempts.items() if n > 1)
        return cls(
            transfers=transfers,
            successes=stats.counts[Outcome.SUCCESS],
            failures=transfers - stats.counts[Outcome.SUCCESS],
            failures_by_class={o: stats.counts[o] for o in FAILURES},
            conflicts_seen={o: stats.conflicts[o] for o in CONFLICTS},
            retries=attempts_total - sum(stats.attempts.values()),
            max_attempts=max(stats.attempts, default=0),
            mean_attempts=attempts_total / transfers if transfers else 0.0,
            retried_transfers=retried,
            retried_share=retried / transfers if transfers else 0.0,
            latency=LatencySummary.of(stats.latency),
            server_latency=None if stats.server_latency is None
            else LatencySummary.of(stats.server_latency),
            elapsed=elapsed,
            throughput=transfers / elapsed if elapsed > 0 else 0.0,
        )


def buckets(h: HdrHistogram) -> list[tuple[int, int]]:
    """``(value, count)`` of every non-empty bucket in ascending order, ``value`` being the
    highest value the bucket stands for (within 0.1 % of what was recorded).

    One pass over the counts array: hdrh's own iterators and mean walk it in Python per
    call, which costs a tenth of a second per histogram; every statistic here comes from
    this table instead.
    """
    if h.get_total_count() == 0:
        return []
    counts = list(h.counts[: h.counts_len])
    value_of, top_of = h.get_value_from_index, h.get_highest_equivalent_value
    return [(top_of(value_of(i)), c) for i, c in enumerate(counts) if c]


def percentiles(table: Sequence[tuple[int, int]], qs: Sequence[float]) -> list[float]:
    """The value at each percentile in ``qs`` (ascending), HdrHistogram's definition: the
    smallest recorded value that at least ``q`` % of the records do not exceed."""
    total = sum(c for _, c in table)
    out: list[float] = []
    cumulative, k = 0, 0
    for q in qs:
        target = max(1, int(q / 100.0 * total + 0.5))
        while k < len(table) and cumulative + table[k][1] < target:
            cumulative += table[k][1]
            k += 1
        out.append(float(table[min(k, len(table) - 1)][0]))
    return out


def latency_bins(
    h: HdrHistogram, edges_ms: Sequence[float]
) -> list[int]:
    """Counts of recorded latencies per ``[edges[i], edges[i+1])`` bin, in milliseconds.

    Values below the first edge go to the first bin and values at or above the last edge to
    the last one, so the bins always add up to the histogram's total count.
    """
    bins = [0] * (len(edges_ms) - 1)
    if not bins:
        return bins
    edges_us = [e * 1000.0 for e in edges_ms]
    for value, count in buckets(h):
        i = bisect.bisect_right(edges_us, value) - 1
        bins[min(max(i, 0), len(bins) - 1)] += count
    return bins


def log_edges(low_ms: float, high_ms: float, per_decade: int = 10) -> list[float]:
    """Logarithmically spaced bin edges covering ``[low_ms, high_ms]``."""
    lo = math.floor(math.log10(max(low_ms, 0.001)) * per_decade)
    hi = math.ceil(math.log10(max(high_ms, low_ms * 1.001, 0.001)) * per_decade)
    if hi <= lo:
        hi = lo + 1
    return [10 ** (k / per_decade) for k in range(lo, hi + 1)]


def format_ms(value: float) -> str:
    """A latency in milliseconds, for people: 850 µs, 1.79 ms, 12.3 ms, 163 ms, 1.20 s."""
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"
