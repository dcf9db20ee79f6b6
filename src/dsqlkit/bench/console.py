"""Terminal output: the live progress bar, one run's summary, and runs side by side.

Rendering goes through rich; on a terminal the progress bar redraws in place, and without one
(CI logs, pipes) it degrades to a plain line every few seconds so logs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .outcomes import CONFLICTS, FAILURES, Outcome
from .results import RunResult
from .stats import Summary
from .stats import format_ms as fmt_ms

__all__ = ["ProgressDisplay", "comparison_table", "render_summary"]

_PLAIN_EVERY = 5.0


class ProgressDisplay:
    """``progress(done, failed, elapsed)`` for :func:`~dsqlkit.bench.runner.run_bench`."""

    def __init__(
        self,
        console: Console,
        label: str,
        *,
        total: int | None,
        duration: float | None,
        enabled: bool = True,
    ) -> None:
        self.console = console
        self.label = label
        self.total = total
        self.duration = duration
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self._last_plain = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            count = MofNCompleteColumn() if self.total is not None else TextColumn(
                "{task.fields[done]:>8,} done"
            )
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=32),
                count,
                TextColumn("[cyan]{task.fields[rate]:>8,.0f}/s"),
                TextColumn("{task.fields[errors]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                refresh_per_second=10,
            )
            self._progress.start()
            total = self.total if self.total is not None else self.duration
            self._task = self._progress.add_task(
                self.label, total=total, done=0, rate=0.0, errors=_errors_text(0)
            )
        self._started = time.monotonic()
        return self

    def __call__(self, done: int, failed: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        if self._progress is not None and self._task is not None:
            completed = done if self.total is not None else min(elapsed, self.duration or 0.0)
            self._progress.update(self._task, completed=completed, done=done, rate=rate,
                                  errors=_errors_text(failed))
        elif self.enabled:
            now = time.monotonic()
            if now - self._last_plain >= _PLAIN_EVERY:
                self._last_plain = now
                of = f"/{self.total:,}" if self.total is not None else ""
                self.console.print(
                    f"  {self.label}: {done:,}{of} transfers, {rate:,.0f}/s, "
                    f"{failed:,} failed, {elapsed:.1f} s", highlight=False
                )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _errors_text(failed: int) -> str:
    if failed == 0:
        return "[green]no errors[/]"
    return f"[red]{failed:,} failed[/]"




def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _config_line(r: RunResult) -> str:
    c = r.config
    size = f"{c.iterations:,} transfers" if c.iterations is not None else f"{c.duration:g} s"
    parts = [size, f"{c.threads} thread{'s' if c.threads != 1 else ''}"]
    if c.processes > 1:
        parts.append(f"{c.processes} processes")
    parts.append(f"{c.accounts:,} accounts")
    if c.retry is True and c.retry_policy is not None:
        parts.append(f"retry {c.retry_policy['preset']} "
                     f"(≤ {c.retry_policy['max_attempts']} attempts)")
    elif c.retry is False:
        parts.append("no retry")
    parts.append(f"seed {c.seed}")
    return " · ".join(parts)


def render_summary(r: RunResult) -> Group:
    """One run: outcomes with examples, attempts, latency, throughput, balances."""
    s = r.summary
    title = Text.assemble(("dsqlkit bench transfer", "bold"), " — ", (r.label, "bold cyan"),
                          f"  ({r.config.target_description})")
    outcomes = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    outcomes.add_column("Outcome")
    outcomes.add_column("Count", justify="right")
    outcomes.add_column("Share", justify="right")
    outcomes.add_column("Example", overflow="fold", max_width=70)
    outcomes.add_row("[green]committed[/]", f"{s.successes:,}", _pct(s.successes, s.transfers),
                     "")
    for o in FAILURES:
        n = s.failures_by_class[o]
        style = "red" if n and o in CONFLICTS else ("yellow" if n else "dim")
        examples = r.stats.examples.get(o, [])
        outcomes.add_row(f"[{style}]{o.label}[/]", f"{n:,}", _pct(n, s.transfers) if n else "",
                         examples[0] if examples else "")
    outcomes.add_row("[bold]total[/]", f"[bold]{s.transfers:,}[/]", "", "")

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    conflicts = ", ".join(f"{o.value} {s.conflicts_seen[o]:,}" for o in CONFLICTS
                          if s.conflicts_seen[o]) or "none"
    facts.add_row("Conflicts", f"{s.total_conflicts_seen:,} seen ({conflicts}), "
                               f"{s.conflict_failures:,} failed a transfer")
    facts.add_row("Attempts", f"{s.retries:,} retries · max {s.max_attempts} · mean "
                              f"{s.mean_attempts:.2f} · {s.retried_share * 100:.1f}% of "
                              f"transfers retried")
    if s.latency is not None:
        lat = s.latency
        facts.add_row("Latency", " · ".join(
            f"{k} {fmt_ms(v)}" for k, v in (("min", lat.min), ("p50", lat.p50), ("p90", lat.p90),
                                         ("p99", lat.p99), ("max", lat.max))))
    if s.server_latency is not None:
        lat = s.server_latency
        facts.add_row("In function", f"p50 {fmt_ms(lat.p50)} · p99 {fmt_ms(lat.p99)} "
                                     "(handler-reported transaction_time)")
    facts.add_row("Throughput", f"{s.throughput:,.1f} transfers/s over {s.elapsed:.2f} s"
                  + ("  [yellow](interrupted)[/]" if r.interrupted else ""))
    if r.balances is not None:
        b = r.balances
        mark = "[green]✓ conserved[/]" if b.conserved else "[bold red]✗ NOT CONSERVED[/]"
        facts.add_row("Balances", f"sum before {b.before} · after {b.after} "
                                  f"({b.accounts:,} accounts) {mark}")
    return Group(title, Text(_config_line(r), style="dim"), Text(""), outcomes, Text(""),
                 facts)


def _cell(value: str, style: str | None = None) -> Text:
    return Text(value, style=style or "")


def comparison_table(results: Sequence[RunResult]) -> Table:
    """Runs side by side: the table a person reads in five seconds."""
    table = Table(show_header=True, header_style="bold", title_style="bold",
                  pad_edge=True, expand=False)
    table.add_column("")
    for r in results:
        table.add_column(r.label, justify="right")
    sums = [r.summary for r in results]

    def row(name: str, cells: Sequence[Text]) -> None:
        table.add_row(Text(name, style="bold"), *cells)

    def count_style(n: int, bad: str) -> str:
        return bad if n else "green"

    row("transfers", [_cell(f"{s.transfers:,}") for s in sums])
    row("committed", [_cell(f"{s.successes:,} ({_pct(s.successes, s.transfers)})", "green")
                      for s in sums])
    row("failed: OCC conflict", [
        _cell(f"{s.conflict_failures:,}", count_style(s.conflict_failures, "bold red"))
        for s in sums])
    row("failed: insufficient balance", [
        _cell(f"{s.failures_by_class[Outcome.INSUFFICIENT_BALANCE]:,}", "yellow"
              if s.failures_by_class[Outcome.INSUFFICIENT_BALANCE] else "dim") for s in sums])
    row("failed: other", [_cell(f"{s.other_failures:,}", count_style(s.other_failures, "red"))
                          for s in sums])
    row("conflicts seen", [_cell(f"{s.total_conflicts_seen:,}") for s in sums])
    row("retries (max attempts)", [_cell(f"{s.retries:,} ({s.max_attempts})") for s in sums])
    row("latency p50", [_cell(fmt_ms(s.latency.p50) if s.latency else "-") for s in sums])
    row("latency p99", [_cell(fmt_ms(s.latency.p99) if s.latency else "-") for s in sums])
    row("throughput", [_cell(f"{s.throughput:,.0f}/s") for s in sums])
    cells = []
    for r in results:
        if r.balances is None:
            cells.append(_cell("-", "dim"))
        elif r.balances.conserved:
            cells.append(_cell(f"✓ {r.balances.after}", "green"))
        else:
            cells.append(_cell(f"✗ {r.balances.before} → {r.balances.after}", "bold red"))
    row("money conserved", cells)
    return table


def headline(results: Sequence[RunResult]) -> list[str]:
    """The story in words, for runs given as (without retry, with retry)."""
    lines = []
    for r in results:
        s: Summary = r.summary
        if r.config.retry is False:
            lines.append(
                f"Without retry, {s.conflict_failures:,} of {s.transfers:,} transfers "
                f"({_pct(s.conflict_failures, s.transfers)}) failed with an OCC conflict."
            )
        elif r.config.retry:
            tail = (f"after {s.retries:,} retries (at most {s.max_attempts} attempts for one "
                    f"transfer)")
            if s.conflict_failures == 0:
                lines.append(f"With retry, no transfer failed with a conflict, {tail}.")
            else:
                lines.append(f"With retry, {s.conflict_failures:,} transfers still failed with "
                             f"a conflict, {tail}.")
    return lines
