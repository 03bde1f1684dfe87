"""Statistics over raw per-request measurements. Windows and workers are merged by concatenating their
latency arrays, never by averaging percentiles."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from loadtest.recorder import Totals, WindowData

PERCENTILES = (50, 90, 95, 99)


def merge_windows(parts: Iterable[WindowData], index: int | None = None) -> WindowData:
    """One window from the same window of several workers, or from several windows."""
    parts = list(parts)
    if index is None:
        index = parts[0].index if parts else -1
    errors: dict[str, int] = {}
    samples: dict[str, str] = {}
    for part in parts:
        for code, count in part.errors.items():
            errors[code] = errors.get(code, 0) + count
        for code, text in part.error_samples.items():
            samples.setdefault(code, text)
    empty = np.empty(0, dtype=np.float64)
    return WindowData(
        index=index,
        latencies=np.concatenate([p.latencies for p in parts]) if parts else empty,
        lateness=np.concatenate([p.lateness for p in parts]) if parts else empty,
        errors=errors,
        error_samples=samples,
        first_end=min((p.first_end for p in parts), default=math.inf),
        last_end=max((p.last_end for p in parts), default=-math.inf),
    )


def completion_span(window: WindowData, scheduled_s: float) -> float:
    """Seconds over which an open-loop window's requests completed, at least the time they were
    scheduled over: when the server falls behind, completions spread out and the rate is the server's."""
    return max(scheduled_s, window.last_end - window.first_end)


def merge_totals(parts: Iterable[Totals]) -> Totals:
    merged = Totals()
    for part in parts:
        merged.sent += part.sent
        merged.ok += part.ok
        for code, count in part.errors.items():
            merged.errors[code] = merged.errors.get(code, 0) + count
        merged.wall_s = max(merged.wall_s, part.wall_s)
        merged.cpu_s += part.cpu_s
    return merged


@dataclass(frozen=True)
class LatencySummary:
    """Seconds; NaN where there were no successful requests."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    def as_ms(self) -> dict[str, float]:
        return {k: (v * 1e3 if k != "count" else v) for k, v in asdict(self).items()}


def summarize_latencies(latencies: np.ndarray) -> LatencySummary:
    if latencies.size == 0:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(latencies, PERCENTILES))
    return LatencySummary(
        int(latencies.size), float(latencies.mean()), p50, p90, p95, p99, float(latencies.max())
    )


@dataclass(frozen=True)
class LatenessSummary:
    """How far behind schedule requests went out (open loop)."""

    threshold_s: float
    late_fraction: float
    p99_s: float
    max_s: float


def summarize_lateness(lateness: np.ndarray, threshold_s: float) -> LatenessSummary:
    if lateness.size == 0:
        return LatenessSummary(threshold_s, 0.0, 0.0, 0.0)
    return LatenessSummary(
        threshold_s,
        float(np.count_nonzero(lateness > threshold_s) / lateness.size),
        float(np.percentile(lateness, 99)),
        float(lateness.max()),
    )
