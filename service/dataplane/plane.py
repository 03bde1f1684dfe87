"""The data plane: everything the KServe v2 endpoints do, on plain objects, with no transport in sight.

Both front ends (``service.protocol``: gRPC, HTTP) translate their messages to :mod:`.types` and call
this; every error is a :mod:`service.errors` exception naming the field at fault and what was expected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from importlib import metadata

from modelrepo.names import IMAGE_INPUT
from protos import model_config_pb2 as mc
from service.dataplane.images import ImageDecoder
from service.dataplane.inputs import IMAGES, read_input, read_top_k, request_deadline
from service.dataplane.outputs import build_response
from service.dataplane.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from service.errors import SUCCESS, Cancelled, InvalidInput, ModelNotFound, ServeError, Unavailable
from service.serving import InflightCounter, ModelManager, RepositoryEntry, ServedVersion
from service.telemetry.prometheus import ServerMetrics
from service.telemetry.stats import ModelStats

SERVER_NAME = "cnnserve"
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "statistics",
)


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "0+unknown"


class DataPlane:
    """Health, inference, metadata, statistics and repository control over the served models."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, decode_threads: int) -> None:
        self.manager = manager
        self.metrics = metrics
        self.draining = False
        self.started = False
        self.inflight = InflightCounter()
        self.images = ImageDecoder(decode_threads)

    def close(self) -> None:
        self.images.close()

    # --------------------------------------------------------------- health

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.manager.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.manager.resolve(name, version)
        except ModelNotFound:
            return False
        return not self.draining

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds pass first."""
        return await self.inflight.wait_idle(timeout)

    # ------------------------------------------------------------ inference

    async def infer(self, request: InferRequest) -> InferResponse:
        received = time.monotonic()
        try:
            served = self.manager.resolve(request.model, request.version)
        except ModelNotFound:
            self.metrics.count_unknown_model(ModelNotFound.outcome)
            raise
        if self.draining:
            served.telemetry.request_done(Unavailable.outcome, 0.0)
            raise Unavailable("server is shutting down; retry on another replica")
        inflight, served_inflight = self.inflight, served.inflight
        inflight.enter()
        served_inflight.enter()
        outcome = ServeError.outcome
        try:
            io = served.io
            model_input = read_input(request, io)
            top_k = read_top_k(request, io)
            deadline = request_deadline(request, io, received)
            data = model_input.data
            if model_input.kind == IMAGES:
                data = await self.images.decode(data, io.input_spec)
            logits = await served.batcher.submit(data, deadline)
            response = build_response(request, served, logits, top_k)
            outcome = SUCCESS
            return response
        except ServeError as e:
            outcome = e.outcome
            raise
        except asyncio.CancelledError:  # the client went away: its RPC or connection was cancelled
            outcome = Cancelled.outcome
            raise
        finally:
            served_inflight.exit()
            inflight.exit()
            served.telemetry.request_done(outcome, time.monotonic() - received)

    # ------------------------------------------------------------- metadata

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, server_version(), EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.manager.resolve(name, version)
        io = served.io
        config = served.config
        return ModelMetadata(
            name=name,
            versions=tuple(v.version_str for v in self.manager.versions_of(name)),
            platform=config.platform or config.backend,
            inputs=(
                TensorMetadata(io.input_name, "FP32", (-1, *io.input_shape)),
                TensorMetadata(IMAGE_INPUT, "BYTES", (-1,)),
            ),
            outputs=(TensorMetadata(io.output_name, "FP32", (-1, io.num_classes)),),
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The config.pbtxt as loaded, plus the `image` input (optional: a request sends it instead of
        `input`), so Triton clients and perf_analyzer can discover it."""
        served = self.manager.resolve(name, version)
        config = mc.ModelConfig()
        config.CopyFrom(served.config)
        image = config.input.add(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1], optional=True)
        image.reshape.SetInParent()  # one string per batch row: clients may send [N] or [N, 1]
        return config

    def model_statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        """(name, version, statistics) of the loaded versions asked for (all: no name)."""
        served: list[ServedVersion]
        if name:
            served = [self.manager.resolve(name, version)] if version else self.manager.versions_of(name)
            if not served:
                self.manager.resolve(name)  # raises ModelNotFound with the reason
        else:
            served = self.manager.loaded()
        return [(v.name, v.version_str, v.telemetry.stats) for v in served]

    # ----------------------------------------------------------- repository

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        return self.manager.index(ready_only)

    async def load_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.manager.check_explicit("load")
        if parameters:
            raise InvalidInput(
                f"RepositoryModelLoad parameters {sorted(parameters)} are not supported; the "
                "model is loaded from the repository as it is on disk"
            )
        await self.manager.load(name)

    async def unload_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.manager.check_explicit("unload")
        unknown = sorted(set(parameters) - {"unload_dependents"})  # no ensembles: nothing depends on a model
        if unknown:
            raise InvalidInput(f"RepositoryModelUnload parameters {unknown} are not supported")
        await self.manager.unload(name)
