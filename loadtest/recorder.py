"""Per-worker bookkeeping: which measurement window each request belongs to, and when a window is complete.

A request belongs to the window holding its *intended* start: the scheduled send time in the open loop
(so a late send cannot move its latency out of the window it was due in) and the actual send time in the
closed loop. A window is emitted once no request can still join it (``close_before`` has passed its end)
and every request in it has finished, so each window carries the full latencies of its requests.
Requests before ``measure_start`` are the warm-up: sent and counted in the totals, not measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

OK = "OK"


@dataclass
class WindowData:
    index: int
    latencies: np.ndarray  # seconds, successful requests only, measured from the intended start
    lateness: np.ndarray  # seconds between intended and actual send, every request
    errors: dict[str, int]  # gRPC status name -> count
    error_samples: dict[str, str]  # gRPC status name -> one server message
    first_end: float = math.inf  # earliest and latest completion of the window's requests
    last_end: float = -math.inf


@dataclass
class Totals:
    """Everything a worker did in one step, warm-up and drain included (to compare with server counts)."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class _Bucket:
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    pending: int = 0
    first_end: float = math.inf
    last_end: float = -math.inf


class WindowRecorder:
    def __init__(self, measure_start: float, window_s: float, emit: Callable[[WindowData], None]) -> None:
        self.measure_start = measure_start
        self.window_s = window_s
        self.emit = emit
        self.totals = Totals()
        self._buckets: dict[int, _Bucket] = {}
        self._next_emit = 0
        self._closed_before = -1  # windows with index < this can receive no more requests

    def window_of(self, intended: float) -> int:
        if intended < self.measure_start:
            return -1
        return int((intended - self.measure_start) / self.window_s)

    def window_end(self, index: int) -> float:
        return self.measure_start + (index + 1) * self.window_s

    def begin(self, intended: float) -> int:
        self.totals.sent += 1
        index = self.window_of(intended)
        if index >= self._next_emit:
            self._buckets.setdefault(index, _Bucket()).pending += 1
        return index

    def finish(
        self, index: int, intended: float, sent: float, ended: float, code: str, details: str = ""
    ) -> None:
        if code == OK:
            self.totals.ok += 1
        else:
            self.totals.errors[code] = self.totals.errors.get(code, 0) + 1
        bucket = self._buckets.get(index)
        if bucket is None:  # warm-up, or a window already emitted after a stop
            return
        bucket.pending -= 1
        bucket.first_end = min(bucket.first_end, ended)
        bucket.last_end = max(bucket.last_end, ended)
        bucket.lateness.append(sent - intended)
        if code == OK:
            bucket.latencies.append(ended - intended)
        else:
            bucket.errors[code] = bucket.errors.get(code, 0) + 1
            bucket.error_samples.setdefault(code, details)
        self._emit_ready()

    def close_before(self, now: float) -> None:
        """No request intended before `now` is still to begin: windows ending by then are closed."""
        closed = int((now - self.measure_start) / self.window_s) if now >= self.measure_start else 0
        if closed > self._closed_before:
            self._closed_before = closed
            self._emit_ready()

    def close_all(self) -> None:
        """After the load stopped and drained: emit whatever windows hold requests."""
        self._closed_before = max(self._buckets, default=-1) + 1
        self._emit_ready()

    def _emit_ready(self) -> None:
        while self._next_emit < self._closed_before:
            bucket = self._buckets.get(self._next_emit) or _Bucket()
            if bucket.pending:
                return
            self._buckets.pop(self._next_emit, None)
            self.emit(
                WindowData(
                    index=self._next_emit,
                    latencies=np.asarray(bucket.latencies, dtype=np.float64),
                    lateness=np.asarray(bucket.lateness, dtype=np.float64),
                    errors=bucket.errors,
                    error_samples=bucket.error_samples,
                    first_end=bucket.first_end,
                    last_end=bucket.last_end,
                )
            )
            self._next_emit += 1


def clock() -> float:
    """The one clock for schedules and latencies: monotonic and shared by all processes of a host."""
    return time.monotonic()
