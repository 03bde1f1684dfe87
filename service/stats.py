"""Per-version telemetry as plain counters: Triton's ModelStatistics and the Prometheus series' values.

Everything here is updated on the event loop thread only, without locks (a request touches a handful of
integers); :mod:`service.metrics` reads it at scrape time. A scrape may see a histogram's ``sum`` one
observation ahead of or behind its buckets, never inconsistent buckets and count.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

from protos import grpc_service_pb2 as pb
from service.batcher import BatchTiming, PendingRequest

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
OUTCOMES = (
    "success",
    "invalid_argument",
    "not_found",
    "resource_exhausted",
    "deadline_exceeded",
    "internal",
    "unavailable",
    "cancelled",
)


class Histogram:
    """Bucket counts (per bucket, not cumulative; the last one is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le semantics: value == bound goes in that bucket
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """[(le, cumulative count)] ending with "+Inf", and the sum."""
        counts, total, out = list(self.counts), 0, []
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            total += n
            out.append((bound, total))
        return out, self.sum


def _le(bound: float) -> str:
    return repr(float(bound))


class ModelStats:
    """Triton's statistics: per-request success/fail/queue/compute counts with cumulative nanoseconds;
    ``inference_count`` counts rows, ``execution_count`` batches; batch stats per executed batch size."""

    KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.KEYS, 0)
        self.ns = dict.fromkeys(self.KEYS, 0)
        self.batches: dict[int, list[int]] = {}  # rows -> [count, input ns, infer ns, output ns]
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def request_done(self, ok: bool, seconds: float) -> None:
        key = "success" if ok else "fail"
        self.counts[key] += 1
        self.ns[key] += int(seconds * 1e9)

    def batch_done(self, n: int, queue_s: float, timing: BatchTiming) -> None:
        """A batch of ``n`` requests that waited ``queue_s`` seconds in the queue altogether."""
        counts, ns = self.counts, self.ns
        input_ns, infer_ns, output_ns = (
            int(timing.input_s * 1e9),
            int(timing.infer_s * 1e9),
            int(timing.output_s * 1e9),
        )
        counts["queue"] += n
        ns["queue"] += int(queue_s * 1e9)
        # Triton charges each request of a batch with the batch's time
        counts["compute_input"] += n
        ns["compute_input"] += input_ns * n
        counts["compute_infer"] += n
        ns["compute_infer"] += infer_ns * n
        counts["compute_output"] += n
        ns["compute_output"] += output_ns * n
        size = self.batches.get(timing.rows)
        if size is None:
            size = self.batches[timing.rows] = [0, 0, 0, 0]
        size[0] += 1
        size[1] += input_ns
        size[2] += infer_ns
        size[3] += output_ns
        self.inference_count += timing.rows
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)  # a timestamp, not an interval

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        out = pb.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        for key in self.KEYS:
            duration = getattr(out.inference_stats, key)
            duration.count, duration.ns = self.counts[key], self.ns[key]
        for rows in sorted(self.batches):
            count, input_ns, infer_ns, output_ns = self.batches[rows]
            entry = out.batch_stats.add(batch_size=rows)
            for key, ns in (
                ("compute_input", input_ns),
                ("compute_infer", infer_ns),
                ("compute_output", output_ns),
            ):
                getattr(entry, key).count = count
                getattr(entry, key).ns = ns
        return out


class VersionTelemetry:
    """Everything measured about one model version (labels: model, version, backend, precision).

    It is the batcher's observer and takes the request outcomes. The serving version that owns it sets
    ``ready``, ``load_seconds`` and the two gauges read at scrape time (queue depth, requests in flight).
    """

    def __init__(self, model: str, version: str, backend: str, precision: str) -> None:
        self.labels = (model, version, backend, precision)
        self.request = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
        self.compute = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.rows = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.stats = ModelStats()
        self.ready = False
        self.load_seconds = 0.0
        self.owner: object | None = None
        self.queue_depth: Callable[[], int] = lambda: 0
        self.inflight: Callable[[], int] = lambda: 0

    # batcher observer
    def batch_done(self, requests: Sequence[PendingRequest], timing: BatchTiming) -> None:
        observe = self.queue.observe
        waited = 0.0
        for request in requests:
            wait = request.started - request.enqueued
            observe(wait)
            waited += wait
        self.compute.observe(timing.infer_s)
        self.batch.observe(timing.rows)
        self.rows += timing.rows
        self.stats.batch_done(len(requests), waited, timing)

    def batch_failed(self, requests: Sequence[PendingRequest]) -> None:
        pass  # the requests are counted with outcome "internal" when they are answered

    # requests
    def request_done(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        if outcome == "success":
            self.request.observe(seconds)
            self.stats.request_done(True, seconds)
        else:
            self.stats.request_done(False, seconds)
