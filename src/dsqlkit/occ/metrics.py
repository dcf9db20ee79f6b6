"""Counters for OCC retries that a caller can read while the workload runs.

Conflicts are the one signal that tells a DSQL user their schema has hot rows or that DDL is
racing DML; a final result alone hides them (a transaction that succeeded on its fourth attempt
looks like one that never conflicted). Every retry loop records into an :class:`OCCMetrics`:
the module's :data:`default_metrics` unless the call passes its own, which is how a benchmark or
a test isolates its numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dsqlkit.occ.classify import OCCType

__all__ = ["OCCMetrics", "OCCMetricsSnapshot", "default_metrics"]


def _no_conflicts() -> Mapping[OCCType, int]:
    return MappingProxyType({})


def _no_attempts() -> Mapping[int, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class OCCMetricsSnapshot:
    """A consistent, immutable copy of the counters at one instant.

    ``attempts_histogram`` maps "attempts used" to the number of finished calls (successes and
    exhaustions) that used that many; ``conflicts`` counts every OCC error seen, by type, whether
    it was retried or ended the call.
    """

    successes: int = 0
    exhausted: int = 0
    failures: int = 0
    conflicts: Mapping[OCCType, int] = field(default_factory=_no_conflicts)
    attempts_histogram: Mapping[int, int] = field(default_factory=_no_attempts)

    @property
    def total_conflicts(self) -> int:
        return sum(self.conflicts.values())

    @property
    def retries(self) -> int:
        """Attempts that were re-runs: every conflict except those that ended a call."""
        return self.total_conflicts - self.exhausted

    @property
    def attempts_per_success(self) -> float:
        """Attempts spent (including those of exhausted calls) per committed call."""
        total = sum(n * count for n, count in self.attempts_histogram.items())
        if self.successes:
            return total / self.successes
        return float("inf") if total else 0.0


class OCCMetrics:
    """Thread-safe OCC counters; read them with :meth:`snapshot` or the properties.

    A plain lock rather than atomics: Python has none, the critical sections are a few dict
    updates, and retry loops running on threads (psycopg, psycopg2) must not lose counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._successes = 0
        self._exhausted = 0
        self._failures = 0
        self._conflicts: dict[OCCType, int] = {}
        self._histogram: dict[int, int] = {}

    def record_conflict(self, occ_type: OCCType) -> None:
        with self._lock:
            self._conflicts[occ_type] = self._conflicts.get(occ_type, 0) + 1

    def record_success(self, attempts: int) -> None:
        with self._lock:
            self._successes += 1
            self._histogram[attempts] = self._histogram.get(attempts, 0) + 1

    def record_exhausted(self, attempts: int) -> None:
        with self._lock:
            self._exhausted += 1
            self._histogram[attempts] = self._histogram.get(attempts, 0) + 1

    def record_failure(self) -> None:
        """A call ended by a non-OCC error; not in the histogram, which is about retries."""
        with self._lock:
            self._failures += 1

    def snapshot(self) -> OCCMetricsSnapshot:
        with self._lock:
            return OCCMetricsSnapshot(
                successes=self._successes,
                exhausted=self._exhausted,
                failures=self._failures,
                conflicts=MappingProxyType(dict(self._conflicts)),
                attempts_histogram=MappingProxyType(dict(sorted(self._histogram.items()))),
            )

    def reset(self) -> None:
        with self._lock:
            self._successes = self._exhausted = self._failures = 0
            self._conflicts.clear()
            self._histogram.clear()

    @property
    def successes(self) -> int:
        return self.snapshot().successes

    @property
    def exhausted(self) -> int:
        return self.snapshot().exhausted

    @property
    def failures(self) -> int:
        return self.snapshot().failures

    @property
    def conflicts(self) -> Mapping[OCCType, int]:
        return self.snapshot().conflicts

    @property
    def attempts_histogram(self) -> Mapping[int, int]:
        return self.snapshot().attempts_histogram

    def __repr__(self) -> str:
        s = self.snapshot()
        conflicts = {t.name: n for t, n in s.conflicts.items()}
        return (
            f"OCCMetrics(successes={s.successes}, exhausted={s.exhausted}, "
            f"failures={s.failures}, conflicts={conflicts}, "
            f"attempts_histogram={dict(s.attempts_histogram)})"
        )


default_metrics = OCCMetrics()
"""Where retry loops record unless a call passes ``metrics=``; process-wide, never reset by us."""
