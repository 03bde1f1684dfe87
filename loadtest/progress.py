"""The live terminal display while a load test runs (rich, on stderr so stdout stays for results)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadtest.options import CLOSED_LOOP
from loadtest.windows import StabilityTracker

SHOWN_WINDOWS = 6


def level_label(mode: str, level: float) -> str:
    return f"concurrency {level:g}" if mode == CLOSED_LOOP else f"rate {level:g}/s"


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e3:.2f}"


class LiveProgress:
    """Shows the current step and its last windows; one summary line per finished step."""

    def __init__(self, mode: str, required: int, tolerance: float, console: Console | None = None) -> None:
        self.mode = mode
        self.required = required
        self.tolerance = tolerance
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._title = ""

    def step_started(self, step: int, steps: int, level: float) -> None:
        self._title = f"step {step + 1}/{steps}: {level_label(self.mode, level)}"
        self._live = Live(
            Text(f"{self._title} - warming up", style="bold"),
            console=self.console,
            transient=True,
            refresh_per_second=4,
        )
        self._live.start()

    def window(self, tracker: StabilityTracker) -> None:
        if self._live is None:
            return
        table = Table(box=None, pad_edge=False)
        for column in ("window", "req/s", "p50 ms", "p99 ms", "errors"):
            table.add_column(column, justify="right")
        for summary in tracker.summaries[-SHOWN_WINDOWS:]:
            table.add_row(
                str(summary.index + 1),
                f"{summary.throughput:.1f}",
                _ms(summary.p50),
                _ms(summary.p99),
                str(summary.errors),
            )
        header = Text(
            f"{self._title} - {len(tracker.summaries)} windows, waiting for {self.required} within "
            f"{self.tolerance:.0%} (at most {tracker.max_windows})",
            style="bold",
        )
        self._live.update(Group(header, table))

    def step_finished(self, result) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        state = "stable" if result.stable else f"[yellow]not stable: {result.stop_reason}[/yellow]"
        line = (
            f"{level_label(result.mode, result.level)}: {result.requests_per_s:.1f} req/s, "
            f"p50 {_ms(result.latency.p50)} ms, p99 {_ms(result.latency.p99)} ms "
            f"over {result.measured_windows} windows ({state})"
        )
        self.console.print(line, highlight=False)
        if result.fell_behind:
            late = result.lateness
            self.console.print(
                f"[yellow]  fell behind schedule: {late.late_fraction:.1%} of requests went out more than "
                f"{late.threshold_s * 1e3:g} ms late (max lag {late.max_s * 1e3:.1f} ms); "
                "their latencies include that lag[/yellow]"
            )
        if result.client_saturated:
            self.console.print(
                f"[yellow]  a client worker was {result.client_cpu_utilization:.0%} busy: the client may be "
                "the bottleneck; add --workers[/yellow]"
            )
        for code, count in result.errors.items():
            sample = result.error_samples.get(code, "")
            self.console.print(f"[red]  {count} x {code}[/red]: {sample}", highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class QuietProgress:
    """No display (benchmarks, --quiet)."""

    def step_started(self, step: int, steps: int, level: float) -> None:
        pass

    def window(self, tracker: StabilityTracker) -> None:
        pass

    def step_finished(self, result) -> None:
        pass

    def close(self) -> None:
        pass
