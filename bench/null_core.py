"""The do-nothing server's core, shared by its gRPC and HTTP front ends: the model it advertises, the
checks it makes, and the counts it exposes as cnnserve's metric names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.errors import OUTCOMES
from service.telemetry.stats import BATCH_BUCKETS, Histogram

UNKNOWN_MODEL = "_unknown"
NULL_OUTCOMES = (*OUTCOMES, "permission_denied")
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class NullModel:
    name: str
    version: str
    shape: tuple[int, ...]  # C, H, W (no batch dimension)
    classes: int
    max_batch_size: int
    describe_inputs: bool = True  # False: ModelMetadata lists no inputs
    offer_config: bool = True  # False: no Triton ModelConfig (gRPC UNIMPLEMENTED, HTTP 404)

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        if not self.describe_inputs:
            return []
        inputs = [("input", "FP32", [-1, *self.shape]), ("image", "BYTES", [-1])]
        if len(self.shape) == 3:
            c, h, w = self.shape
            inputs.insert(1, ("pixels", "UINT8", [-1, h, w, c]))
        return inputs


class NullError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NullCounts(Collector):
    """The subset of cnnserve's metrics a do-nothing server can report truthfully, kept as plain
    integers (updated on the event loop only) and exposed as metric families at scrape time."""

    def __init__(self, model: NullModel) -> None:
        self.model = model
        self.outcomes = dict.fromkeys(NULL_OUTCOMES, 0)
        self.unknown_model = dict.fromkeys(NULL_OUTCOMES, 0)
        self.rows = 0
        self.batch = Histogram(BATCH_BUCKETS)

    def success(self, rows: int) -> None:
        self.outcomes["success"] += 1
        self.rows += rows
        self.batch.observe(rows)

    def collect(self) -> Iterator:
        labels = [self.model.name, self.model.version]
        requests = CounterMetricFamily(
            "cnnserve_requests", "ModelInfer requests by outcome", labels=["model", "version", "outcome"]
        )
        for outcome, n in self.outcomes.items():
            requests.add_metric([*labels, outcome], n)
        for outcome, n in self.unknown_model.items():
            requests.add_metric([UNKNOWN_MODEL, "", outcome], n)
        rows = CounterMetricFamily("cnnserve_inference_rows", "Rows inferred", labels=["model", "version"])
        rows.add_metric(labels, self.rows)
        batch = HistogramMetricFamily("cnnserve_batch_size", "Rows per request", labels=["model", "version"])
        buckets, total = self.batch.cumulative()
        batch.add_metric(labels, buckets, total)
        yield from (requests, rows, batch)


class NullCore:
    """What both front ends answer, transport-free: the model's description and the admission checks."""

    def __init__(self, model: NullModel, counts: NullCounts, required_header: tuple[str, str] | None) -> None:
        self.model = model
        self.counts = counts
        self.required_header = required_header

    def known(self, name: str, version: str) -> bool:
        return name == self.model.name and version in ("", self.model.version)

    def require_model(self, name: str, version: str) -> None:
        if not self.known(name, version):
            shown = f"{name}" + (f" version {version}" if version else "")
            raise NullError(grpc.StatusCode.NOT_FOUND, f"model '{shown}' is not found")

    def metadata(self) -> dict:
        m = self.model
        return {
            "name": m.name,
            "versions": [m.version],
            "platform": "null",
            "inputs": [{"name": n, "datatype": t, "shape": s} for n, t, s in m.inputs()],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, m.classes]}],
        }

    def config(self) -> dict:
        """Triton's model configuration, in its JSON form."""
        m = self.model
        inputs = (
            [{"name": "input", "data_type": "TYPE_FP32", "dims": list(m.shape)}] if m.describe_inputs else []
        )
        output = {"name": "logits", "data_type": "TYPE_FP32", "dims": [m.classes]}
        return {
            "name": m.name,
            "platform": "null",
            "max_batch_size": m.max_batch_size,
            "input": inputs,
            "output": [output],
        }

    def reject(self, outcome: str, code: grpc.StatusCode, message: str) -> NullError:
        self.counts.outcomes[outcome] += 1
        return NullError(code, message)

    def authorize(self, header_value: str | None) -> None:
        """Inference as Triton's restricted protocols guard it: first, before the request is read."""
        if self.required_header is not None and header_value != self.required_header[1]:
            message = f"inference requires the header '{self.required_header[0]}'"
            raise self.reject("permission_denied", grpc.StatusCode.PERMISSION_DENIED, message)

    def admit(self, name: str, version: str, shapes: list[list[int]]) -> int:
        """Check one infer request; the rows it carries, or NullError (counted by outcome)."""
        if not self.known(name, version):
            self.counts.unknown_model["not_found"] += 1
            self.require_model(name, version)
        if len(shapes) != 1 or not shapes[0]:
            raise self.reject(
                "invalid_argument",
                grpc.StatusCode.INVALID_ARGUMENT,
                "expected exactly one input ('input', 'pixels' or 'image') with a batch dimension",
            )
        rows = shapes[0][0]
        if not 1 <= rows <= self.model.max_batch_size:
            raise self.reject(
                "invalid_argument",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch size {rows} is outside 1..max_batch_size={self.model.max_batch_size}",
            )
        self.counts.success(rows)
        return rows
