"""Prometheus exposition with the names of docs/ARCHITECTURE.md, on the server's own registry.

The values live in :class:`service.telemetry.stats.VersionTelemetry` objects (plain counters updated on
the event loop); a custom collector turns them into metric families at scrape time, so a request costs
no metric locks. Latencies are histograms (aggregatable across replicas), in seconds. GPU gauges come
from NVML, read at scrape time, and exist only where NVML finds a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.errors import OUTCOMES
from service.telemetry.stats import PROTOCOLS, REQUEST_PROTOCOL, VersionTelemetry

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "_unknown"  # the `model` label of requests for models the server does not serve
MV = ["model", "version"]


class ServerMetrics:
    """The telemetry of every model version ever loaded, and the registry that exposes it."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        gpu: bool = True,
        loop_lag: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.loop_lag = loop_lag  # seconds the event loop's last heartbeat ran late
        self._versions: dict[tuple[str, str, str, str], VersionTelemetry] = {}
        self.unknown_model = {p: dict.fromkeys(OUTCOMES, 0) for p in PROTOCOLS}
        self.numerics_failures: dict[tuple[str, str], int] = {}  # (model, version): failed load-time probes
        self.registry.register(_ServingCollector(self))
        ProcessCollector(registry=self.registry)
        if gpu:
            nvml = NvmlCollector.create()
            if nvml is not None:
                self.registry.register(nvml)

    def telemetry(self, model: str, version: str, backend: str, precision: str) -> VersionTelemetry:
        """The telemetry of a label set; a reload of a version that still serves continues its counters."""
        key = (model, version, backend, precision)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionTelemetry(*key)
        return found

    def forget_retired(self, model: str) -> None:
        """Drop the series of ``model``'s versions that nothing serves any more (as Triton drops an
        unloaded model's metrics): versions rolled through in poll mode must not grow the scrape forever.
        A version loaded again starts its counters from zero, which Prometheus reads as a counter reset."""
        for key, t in list(self._versions.items()):
            if key[0] == model and t.owner is None:
                del self._versions[key]

    def versions(self) -> list[VersionTelemetry]:
        return list(self._versions.values())

    def count_unknown_model(self, outcome: str) -> None:
        self.unknown_model[REQUEST_PROTOCOL.get()][outcome] += 1

    def count_numerics_failure(self, model: str, version: str) -> None:
        key = (model, version)
        self.numerics_failures[key] = self.numerics_failures.get(key, 0) + 1


class _ServingCollector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        versions = self._metrics.versions()
        request = HistogramMetricFamily(
            "cnnserve_request_duration_seconds",
            "Seconds from receipt of an inference request to its response (successful requests)",
            labels=[*MV, "protocol"],
        )
        for t in versions:
            for protocol, histogram in t.request.items():
                buckets, total = histogram.cumulative()
                request.add_metric([*t.labels[:2], protocol], buckets, total)
        yield request
        histograms = (
            (
                "cnnserve_queue_duration_seconds",
                "Seconds a request waited in the batcher queue",
                "queue",
                False,
            ),
            ("cnnserve_compute_duration_seconds", "Seconds of one batch's backend call", "compute", True),
            ("cnnserve_batch_size", "Rows per executed batch", "batch", False),
        )
        for name, doc, attribute, with_backend in histograms:
            family = HistogramMetricFamily(
                name, doc, labels=[*MV, "backend", "precision"] if with_backend else MV
            )
            for t in versions:
                buckets, total = getattr(t, attribute).cumulative()
                family.add_metric(list(t.labels) if with_backend else list(t.labels[:2]), buckets, total)
            yield family
        requests = CounterMetricFamily(
            "cnnserve_requests",
            "Inference requests by protocol and outcome",
            labels=[*MV, "protocol", "outcome"],
        )
        for t in versions:
            for protocol, outcomes in t.outcomes.items():
                for outcome, n in outcomes.items():
                    requests.add_metric([*t.labels[:2], protocol, outcome], n)
        for protocol, outcomes in self._metrics.unknown_model.items():
            for outcome, n in outcomes.items():
                requests.add_metric([UNKNOWN_MODEL, "", protocol, outcome], n)
        yield requests
        rows = CounterMetricFamily("cnnserve_inference_rows", "Rows (images) inferred", labels=MV)
        depth = GaugeMetricFamily("cnnserve_queue_depth", "Requests waiting in the batcher queue", labels=MV)
        inflight = GaugeMetricFamily(
            "cnnserve_inflight_requests", "Requests accepted and not yet answered", labels=MV
        )
        load = GaugeMetricFamily(
            "cnnserve_model_load_duration_seconds",
            "Seconds the last load of the model version took, warm-up included",
            labels=[*MV, "backend"],
        )
        ready = GaugeMetricFamily(
            "cnnserve_model_ready",
            "1 when the model version is loaded and ready",
            labels=[*MV, "backend", "precision"],
        )
        for t in versions:
            mv = list(t.labels[:2])
            rows.add_metric(mv, t.rows)
            depth.add_metric(mv, t.queue_depth())
            inflight.add_metric(mv, t.inflight())
            load.add_metric(list(t.labels[:3]), t.load_seconds)
            ready.add_metric(list(t.labels), 1.0 if t.ready else 0.0)
        yield from (rows, depth, inflight, load, ready)
        numerics = CounterMetricFamily(
            "cnnserve_model_numerics_check_failures",
            "Loads refused because the artifact's outputs on its probe inputs were off on this host",
            labels=MV,
        )
        for labels, n in list(self._metrics.numerics_failures.items()):
            numerics.add_metric(list(labels), n)
        yield numerics
        if self._metrics.loop_lag is not None:
            lag = GaugeMetricFamily(
                "cnnserve_event_loop_lag_seconds",
                "How late the event loop's last heartbeat ran (everything on the loop waits this long)",
            )
            lag.add_metric([], self._metrics.loop_lag())
            yield lag


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
