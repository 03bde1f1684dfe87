"""Per-version telemetry: Triton's ModelStatistics counters and the Prometheus series, fed by one observer."""

from __future__ import annotations

import time
from collections.abc import Sequence

from protos import grpc_service_pb2 as pb
from service.batcher import BatchTiming, PendingRequest
from service.metrics import VersionMetrics


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class _BatchSizeStats:
    __slots__ = ("count", "infer_ns", "input_ns", "output_ns")

    def __init__(self) -> None:
        self.count = self.input_ns = self.infer_ns = self.output_ns = 0


class ModelStats:
    """Triton's statistics semantics: per-request success/fail/queue/compute counts with cumulative ns;
    ``inference_count`` counts rows, ``execution_count`` batches; batch stats per executed batch size."""

    def __init__(self) -> None:
        self.durations = {
            k: [0, 0]
            for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        }
        self.batches: dict[int, _BatchSizeStats] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def _add(self, key: str, seconds: float, count: int = 1) -> None:
        entry = self.durations[key]
        entry[0] += count
        entry[1] += _ns(seconds) * count

    def request_done(self, ok: bool, seconds: float) -> None:
        self._add("success" if ok else "fail", seconds)

    def batch_done(self, requests: Sequence[PendingRequest], timing: BatchTiming) -> None:
        n = len(requests)
        for request in requests:
            self._add("queue", request.started - request.enqueued)
        self._add("compute_input", timing.input_s, n)
        self._add("compute_infer", timing.infer_s, n)
        self._add("compute_output", timing.output_s, n)
        size = self.batches.get(timing.rows)
        if size is None:
            size = self.batches[timing.rows] = _BatchSizeStats()
        size.count += 1
        size.input_ns += _ns(timing.input_s)
        size.infer_ns += _ns(timing.infer_s)
        size.output_ns += _ns(timing.output_s)
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
        for key, (count, ns) in self.durations.items():
            duration = getattr(out.inference_stats, key)
            duration.count, duration.ns = count, ns
        for rows in sorted(self.batches):
            s = self.batches[rows]
            entry = out.batch_stats.add(batch_size=rows)
            for key, ns in (
                ("compute_input", s.input_ns),
                ("compute_infer", s.infer_ns),
                ("compute_output", s.output_ns),
            ):
                getattr(entry, key).count = s.count
                getattr(entry, key).ns = ns
        return out


class VersionTelemetry:
    """Implements the batcher's observer and the request hooks for one model version."""

    def __init__(self, metrics: VersionMetrics) -> None:
        self.metrics = metrics
        self.stats = ModelStats()

    # batcher observer
    def queue_depth(self, depth: int) -> None:
        self.metrics.queue_depth.set(depth)

    def batch_done(self, requests: Sequence[PendingRequest], timing: BatchTiming) -> None:
        m = self.metrics
        for request in requests:
            m.queue_duration.observe(request.started - request.enqueued)
        m.compute_duration.observe(timing.infer_s)
        m.batch_size.observe(timing.rows)
        m.rows.inc(timing.rows)
        self.stats.batch_done(requests, timing)

    def batch_failed(self, requests: Sequence[PendingRequest]) -> None:
        pass  # the requests are counted with outcome "internal" when they are answered

    # requests
    def request_done(self, outcome: str, seconds: float) -> None:
        self.metrics.outcomes[outcome].inc()
        if outcome == "success":
            self.metrics.request_duration.observe(seconds)
        self.stats.request_done(outcome == "success", seconds)
