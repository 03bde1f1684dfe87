"""The stability criterion: measure window after window until the last few agree (like perf_analyzer).

A step is stable when each of the last ``required`` windows is within ``tolerance`` (relative) of their
mean on successful throughput, p50 and p99 latency. The step also ends, unstable, at the time bound
(``max_windows``), the request bound, or when a whole window failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadtest.recorder import WindowData
from loadtest.stats import completion_span, merge_windows, summarize_latencies

STABLE = "stable"
TIME_BOUND = "time bound (--duration) reached before windows agreed"
REQUEST_BOUND = "request bound (--max-requests) reached before windows agreed"
ALL_FAILED = "every request in a window failed"


@dataclass(frozen=True)
class WindowSummary:
    index: int
    requests: int  # successful
    errors: int
    throughput: float  # successful requests/s
    p50: float  # seconds, NaN without successes
    p99: float


def summarize_window(window: WindowData, window_s: float, open_loop: bool) -> WindowSummary:
    latency = summarize_latencies(window.latencies)
    seconds = completion_span(window, window_s) if open_loop else window_s
    return WindowSummary(
        index=window.index,
        requests=latency.count,
        errors=sum(window.errors.values()),
        throughput=latency.count / seconds,
        p50=latency.p50,
        p99=latency.p99,
    )


def windows_agree(summaries: list[WindowSummary], tolerance: float) -> bool:
    for metric in ("throughput", "p50", "p99"):
        values = [getattr(s, metric) for s in summaries]
        if not all(math.isfinite(v) for v in values):
            return False
        mean = sum(values) / len(values)
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in values):
            return False
    return True


class StabilityTracker:
    def __init__(
        self,
        required: int,
        tolerance: float,
        max_windows: int,
        max_requests: int | None,
        open_loop: bool = False,
    ) -> None:
        self.open_loop = open_loop
        self.required = required
        self.tolerance = tolerance
        self.max_windows = max_windows
        self.max_requests = max_requests
        self.windows: list[WindowData] = []
        self.summaries: list[WindowSummary] = []
        self.stop_reason: str | None = None

    @property
    def stable(self) -> bool:
        return self.stop_reason == STABLE

    @property
    def requests_measured(self) -> int:
        return sum(s.requests + s.errors for s in self.summaries)

    def add(self, window: WindowData, window_s: float) -> bool:
        """Record the next window (merged over workers); True when the step should stop."""
        summary = summarize_window(window, window_s, self.open_loop)
        self.windows.append(window)
        self.summaries.append(summary)
        if len(self.summaries) >= self.required and windows_agree(
            self.summaries[-self.required :], self.tolerance
        ):
            self.stop_reason = STABLE
        elif summary.requests == 0 and summary.errors > 0:
            self.stop_reason = ALL_FAILED
        elif len(self.summaries) >= self.max_windows:
            self.stop_reason = TIME_BOUND
        elif self.max_requests is not None and self.requests_measured >= self.max_requests:
            self.stop_reason = REQUEST_BOUND
        return self.stop_reason is not None

    def measured(self) -> WindowData:
        """The last `required` windows (the stable ones when stable) merged into one."""
        return merge_windows(self.windows[-self.required :])
