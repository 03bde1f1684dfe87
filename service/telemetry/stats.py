"""Per-version telemetry as plain counters: Triton's ModelStatistics and the Prometheus series' values.

Everything here is updated on the event loop thread only, without locks (a request touches a handful of
integers); :mod:`service.telemetry.prometheus` reads it at scrape time. A scrape may see a histogram's
``sum`` one observation ahead of or behind its buckets, never inconsistent buckets and count.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from contextvars import ContextVar

from service.batching import BatchTiming, PendingRequest
from service.errors import OUTCOMES, SUCCESS

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

# The front end a request came in through: the `protocol` label of the request metrics, read where the
# data plane counts a request, so the data plane stays protocol-free. The HTTP front end sets it in the task
# that answers the request (asyncio runs every HTTP request and every RPC in a task of its own, with a copy
# of the context); gRPC requests keep the default.
GRPC, HTTP = "grpc", "http"
PROTOCOLS = (GRPC, HTTP)
REQUEST_PROTOCOL: ContextVar[str] = ContextVar("request_protocol", default=GRPC)


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


def _zero() -> int:
    return 0


class VersionTelemetry:
    """Everything measured about one model version (labels: model, version, backend, precision).

    It is the batcher's observer and takes the request outcomes. The serving version that owns it
    (:meth:`attach`) gives the two gauges read at scrape time (queue depth, requests in flight); a reload of
    the same version takes it over, and :meth:`detach` drops every reference to the old owner.
    """

    def __init__(self, model: str, version: str, backend: str, precision: str) -> None:
        self.labels = (model, version, backend, precision)
        self.request = {p: Histogram(LATENCY_BUCKETS) for p in PROTOCOLS}  # protocol -> latency
        self.queue = Histogram(LATENCY_BUCKETS)
        self.compute = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.rows = 0
        self.outcomes = {p: dict.fromkeys(OUTCOMES, 0) for p in PROTOCOLS}  # protocol -> outcome -> count
        self.stats = ModelStats()
        self.ready = False
        self.load_seconds = 0.0
        self.owner: object | None = None
        self.queue_depth: Callable[[], int] = _zero
        self.inflight: Callable[[], int] = _zero

    def attach(
        self, owner: object, load_seconds: float, queue_depth: Callable[[], int], inflight: Callable[[], int]
    ) -> None:
        self.owner, self.ready, self.load_seconds = owner, True, load_seconds
        self.queue_depth, self.inflight = queue_depth, inflight

    def detach(self, owner: object) -> None:
        if self.owner is owner:
            self.owner, self.ready = None, False
            self.queue_depth = self.inflight = _zero

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
        protocol = REQUEST_PROTOCOL.get()
        self.outcomes[protocol][outcome] += 1
        if outcome == SUCCESS:
            self.request[protocol].observe(seconds)
            self.stats.request_done(True, seconds)
        else:
            self.stats.request_done(False, seconds)
