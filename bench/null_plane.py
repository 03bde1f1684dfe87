"""A data plane that does nothing: one model that answers every request with zero logits, without looking
at its values. Behind our own front ends (``service.protocol``) it is the do-nothing server of the
benchmarks (the protocol's floor: everything but the model) and a fake for tests of the front ends.

It offers what the front ends call on :class:`service.dataplane.plane.DataPlane` (infer, metadata,
config, statistics, the repository index, model control, errors) and counts requests with the server's
own telemetry, so ``/metrics`` carries cnnserve's names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protos import model_config_pb2 as mc
from service.dataplane.budget import ByteBudget
from service.dataplane.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    OutputTensor,
    ServerMetadata,
    TensorMetadata,
)
from service.errors import SUCCESS, InvalidInput, ModelNotFound, NotAllowed, ServeError, clip, public_status
from service.serving import RepositoryEntry
from service.telemetry.prometheus import ServerMetrics
from service.telemetry.stats import ModelStats

OUTPUT = "logits"


class Unimplemented(ServeError):
    """An extension this server does not offer, answered as MLServer answers for its missing Triton model
    configuration: UNIMPLEMENTED over gRPC, 404 over HTTP (no such route)."""

    status = "UNIMPLEMENTED"
    http_status = 404


@dataclass(frozen=True)
class NullModel:
    name: str = "null"
    version: str = "1"
    shape: tuple[int, ...] = (1, 32, 32)  # C, H, W (no batch dimension)
    classes: int = 10
    max_batch_size: int = 8
    describe_inputs: bool = True  # False: ModelMetadata lists no inputs (like MLServer serving ONNX)
    offer_config: bool = True  # False: no Triton ModelConfig (UNIMPLEMENTED)

    def inputs(self) -> tuple[TensorMetadata, ...]:
        if not self.describe_inputs:
            return ()
        inputs = [TensorMetadata("input", "FP32", (-1, *self.shape))]
        if len(self.shape) == 3:
            c, h, w = self.shape
            inputs.append(TensorMetadata("pixels", "UINT8", (-1, h, w, c)))
        inputs.append(TensorMetadata("image", "BYTES", (-1,)))
        return tuple(inputs)


@dataclass
class NullPlane:
    model: NullModel
    metrics: ServerMetrics
    max_inflight_bytes: int = 256 << 20
    budget: ByteBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = ByteBudget(self.max_inflight_bytes)
        self.telemetry = self.metrics.telemetry(self.model.name, self.model.version, "null", "fp32")
        self.telemetry.attach(self, 0.0, lambda: 0, lambda: 0)
        self._zeros: dict[int, np.ndarray] = {}  # rows -> zero logits, shared (nothing writes them)

    # ------------------------------------------------------------------ inference

    def _resolve(self, name: str, version: str) -> None:
        if name != self.model.name or version not in ("", self.model.version):
            shown = clip(name) + (f" version {clip(version)}" if version else "")
            raise ModelNotFound(f"unknown model {shown}; loaded models: {self.model.name}")

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.monotonic()
        try:
            self._resolve(request.model, request.version)
        except ModelNotFound:
            self.metrics.count_unknown_model(ModelNotFound.outcome)
            raise
        try:
            rows = self._rows(request)
        except ServeError as e:
            self.telemetry.request_done(e.outcome, time.monotonic() - started)
            raise
        logits = self._zeros.get(rows)
        if logits is None:
            logits = self._zeros[rows] = np.zeros((rows, self.model.classes), np.float32)
        self.telemetry.rows += rows
        self.telemetry.batch.observe(rows)
        self.telemetry.request_done(SUCCESS, time.monotonic() - started)
        output = OutputTensor(OUTPUT, "FP32", (rows, self.model.classes), logits)
        return InferResponse(self.model.name, self.model.version, request.id, [output])

    def _rows(self, request: InferRequest) -> int:
        """The batch size of the request's one input (its values are not looked at)."""
        if len(request.inputs) != 1:
            raise InvalidInput(f"expected exactly one input, got {len(request.inputs)}")
        shape = request.inputs[0].shape
        rows = shape[0] if shape else 0
        if not 1 <= rows <= self.model.max_batch_size:
            raise InvalidInput(
                f"input {clip(request.inputs[0].name)}: batch of {clip(rows)} rows is outside "
                f"1..max_batch_size {self.model.max_batch_size}"
            )
        return rows

    # ------------------------------------------------------------------- metadata

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("cnnserve-null", "0", ())

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        self._resolve(name, version)
        m = self.model
        outputs = (TensorMetadata(OUTPUT, "FP32", (-1, m.classes)),)
        return ModelMetadata(m.name, (m.version,), "null", m.inputs(), outputs)

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        if not self.model.offer_config:
            raise Unimplemented("this server has no model configuration")
        self._resolve(name, version)
        m = self.model
        config = mc.ModelConfig(name=m.name, platform="null", max_batch_size=m.max_batch_size)
        config.input.add(name="input", data_type=mc.TYPE_FP32, dims=list(m.shape))
        config.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=[m.classes])
        return config

    def model_statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        if name:
            self._resolve(name, version)
        return [(self.model.name, self.model.version, self.telemetry.stats)]

    # ----------------------------------------------------------------- repository

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        return [RepositoryEntry(self.model.name, self.model.version, "READY", "")]

    def public_status(self, exc: BaseException) -> tuple[str, str]:
        return public_status(exc)

    def check_model_control(self, action: str, name: str) -> None:
        raise NotAllowed(f"model {action}: the null server serves one model and has no model control")

    async def load_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.check_model_control("load", name)

    async def unload_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.check_model_control("unload", name)
