"""Prometheus metrics with the names of docs/ARCHITECTURE.md, on the server's own registry.

Latencies are histograms (aggregatable across replicas), in seconds. GPU gauges come from NVML, read at
scrape time, and exist only where NVML finds a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

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
UNKNOWN_MODEL = "_unknown"  # the `model` label of requests for models the server does not serve


class ServerMetrics:
    """Every metric family of the server, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, gpu: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, mv = self.registry, ("model", "version")
        self.request_duration = Histogram(
            "cnnserve_request_duration_seconds",
            "Seconds from receipt of a ModelInfer request to its response (successful requests)",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "cnnserve_queue_duration_seconds",
            "Seconds a request waited in the batcher queue",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "cnnserve_compute_duration_seconds",
            "Seconds of one batch's backend call",
            (*mv, "backend", "precision"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size", "Rows per executed batch", mv, buckets=BATCH_BUCKETS, registry=r
        )
        self.requests = Counter(
            "cnnserve_requests_total", "ModelInfer requests by outcome", (*mv, "outcome"), registry=r
        )
        self.rows = Counter("cnnserve_inference_rows_total", "Rows (images) inferred", mv, registry=r)
        self.queue_depth = Gauge(
            "cnnserve_queue_depth", "Requests waiting in the batcher queue", mv, registry=r
        )
        self.inflight = Gauge(
            "cnnserve_inflight_requests", "Requests accepted and not yet answered", mv, registry=r
        )
        self.load_duration = Gauge(
            "cnnserve_model_load_duration_seconds",
            "Seconds the last load of the model version took, warm-up included",
            (*mv, "backend"),
            registry=r,
        )
        self.model_ready = Gauge(
            "cnnserve_model_ready",
            "1 when the model version is loaded and ready",
            (*mv, "backend", "precision"),
            registry=r,
        )
        ProcessCollector(registry=r)
        if gpu:
            nvml = NvmlCollector.create()
            if nvml is not None:
                r.register(nvml)

    def for_version(self, model: str, version: str, backend: str, precision: str) -> VersionMetrics:
        return VersionMetrics(self, model, version, backend, precision)

    def count_unknown_model(self, outcome: str) -> None:
        self.requests.labels(UNKNOWN_MODEL, "", outcome).inc()

    def serve(self, host: str, port: int) -> tuple[Any, int]:
        """Serve /metrics over HTTP in a daemon thread; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port


class VersionMetrics:
    """The labelled children of one model version, looked up once (not per request)."""

    def __init__(
        self, metrics: ServerMetrics, model: str, version: str, backend: str, precision: str
    ) -> None:
        mv = (model, version)
        self.request_duration = metrics.request_duration.labels(*mv)
        self.queue_duration = metrics.queue_duration.labels(*mv)
        self.compute_duration = metrics.compute_duration.labels(*mv, backend, precision)
        self.batch_size = metrics.batch_size.labels(*mv)
        self.rows = metrics.rows.labels(*mv)
        self.queue_depth = metrics.queue_depth.labels(*mv)
        self.inflight = metrics.inflight.labels(*mv)
        self.load_duration = metrics.load_duration.labels(*mv, backend)
        self.model_ready = metrics.model_ready.labels(*mv, backend, precision)
        self.outcomes = {outcome: metrics.requests.labels(*mv, outcome) for outcome in OUTCOMES}


class NvmlCollector(Collector):
    """GPU utilization and memory per GPU, read from NVML at each scrape."""

    def __init__(self, nvml: Any, count: int) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    @classmethod
    def create(cls) -> NvmlCollector | None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            log.debug("NVML unavailable (%s): no GPU metrics", e)
            return None
        if count == 0:
            return None
        log.info("exporting NVML metrics for %d GPU(s)", count)
        return cls(pynvml, count)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._nvml
        util = GaugeMetricFamily(
            "cnnserve_gpu_utilization_ratio",
            "GPU busy fraction over NVML's last sample period (0..1)",
            labels=["gpu"],
        )
        used = GaugeMetricFamily("cnnserve_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("cnnserve_gpu_memory_total_bytes", "GPU memory installed", labels=["gpu"])
        for i, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as e:
                log.warning("NVML read of GPU %d failed: %s", i, e)
                continue
            util.add_metric([str(i)], rates.gpu / 100.0)
            used.add_metric([str(i)], float(memory.used))
            total.add_metric([str(i)], float(memory.total))
        yield from (util, used, total)
