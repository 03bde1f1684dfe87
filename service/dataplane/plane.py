"""The data plane: everything the KServe v2 endpoints do, on plain objects, with no transport in sight.

Both front ends (``service.protocol``: gRPC, HTTP) translate their messages to :mod:`.types` and call
this; every error is a :mod:`service.errors` exception naming the field at fault and what was expected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata

from modelrepo.names import IMAGE_INPUT, PIXELS_INPUT
from protos import model_config_pb2 as mc
from service.dataplane.budget import ByteBudget
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
from service.errors import (
    SUCCESS,
    Cancelled,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    ServeError,
    Unavailable,
    clip,
    public_status,
    redact_paths,
)
from service.serving import InflightCounter, ModelManager, RepositoryEntry, ServedVersion
from service.serving.model_names import check_model_name
from service.telemetry.prometheus import ServerMetrics
from service.telemetry.stats import ModelStats

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Limits:
    """What the data plane takes on at once (settings, and the CPUs for decoding)."""

    max_inflight: int
    max_inflight_bytes: int
    max_image_pixels: int
    decode_threads: int


class DataPlane:
    """Health, inference, metadata, statistics and repository control over the served models."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, limits: Limits) -> None:
        self.manager = manager
        self.metrics = metrics
        self.limits = limits
        self.draining = False
        self.started = False
        self.inflight = InflightCounter()
        self.budget = ByteBudget(limits.max_inflight_bytes)  # request bytes in flight, every front end
        self.images = ImageDecoder(limits.decode_threads, limits.max_image_pixels)

    def close(self) -> None:
        self.images.close()

    # --------------------------------------------------------------- health

    @property
    def ready(self) -> bool:
        """Whether the server should take traffic: what the health state publishes (service.app), which
        answers every health probe and RPC."""
        return self.started and not self.draining and self.manager.ready

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds pass first."""
        return await self.inflight.wait_idle(timeout)

    # ------------------------------------------------------------ inference

    async def infer(self, request: InferRequest) -> InferResponse:
        """Cheap checks first (model, room, names, shapes, byte counts), then the expensive work (image
        decoding, batching); every refusal before the work is answered at once."""
        received = time.monotonic()
        try:
            served = self.manager.resolve(request.model, request.version)
        except ModelNotFound:
            self.metrics.count_unknown_model(ModelNotFound.outcome)
            raise
        telemetry = served.telemetry
        if self.draining:
            telemetry.request_done(Unavailable.outcome, 0.0)
            raise Unavailable("server is shutting down; retry on another replica")
        if self.inflight.count >= self.limits.max_inflight:
            telemetry.request_done(Overloaded.outcome, 0.0)
            raise Overloaded(
                f"server has {self.inflight.count} requests in flight (its limit); retry later or elsewhere"
            )
        inflight, served_inflight = self.inflight, served.inflight
        inflight.enter()
        served_inflight.enter()
        outcome, held = ServeError.outcome, 0
        try:
            io = served.io
            model_input = read_input(request, io)
            top_k = read_top_k(request, io)
            deadline = request_deadline(request, io, received)
            held = self.budget.reserve(model_input.held_bytes(io.row_bytes), "the request's payload of")
            decode = self.images.decode if model_input.kind == IMAGES else None
            logits = await served.infer(model_input.data, deadline, decode)
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
            self.budget.release(held)
            served_inflight.exit()
            inflight.exit()
            telemetry.request_done(outcome, time.monotonic() - received)

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
                TensorMetadata(PIXELS_INPUT, "UINT8", (-1, *io.input_spec.pixels_shape)),
                TensorMetadata(IMAGE_INPUT, "BYTES", (-1,)),
            ),
            outputs=(TensorMetadata(io.output_name, "FP32", (-1, io.num_classes)),),
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The config.pbtxt as loaded, plus the `pixels` and `image` inputs (optional: a request sends one of
        them instead of `input`), so Triton clients and perf_analyzer can discover them."""
        served = self.manager.resolve(name, version)
        config = mc.ModelConfig()
        config.CopyFrom(served.config)
        config.input.add(
            name=PIXELS_INPUT,
            data_type=mc.TYPE_UINT8,
            format=mc.ModelInput.FORMAT_NHWC,
            dims=list(served.io.input_spec.pixels_shape),
            optional=True,
        )
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
        root = self.manager.repo
        return [replace(e, reason=redact_paths(e.reason, root)) for e in self.manager.index(ready_only)]

    def public_status(self, exc: BaseException) -> tuple[str, str]:
        """What a client is told of ``exc``: its status name and a message without filesystem paths.
        Anything but a ServeError is a bug, and is logged with its traceback."""
        if not isinstance(exc, ServeError):
            log.error("unexpected error", exc_info=exc)
        return public_status(exc, self.manager.repo)

    def check_model_control(self, action: str, name: str) -> None:
        """What a load or unload is checked for before its request is read: the mode, and the name."""
        self.manager.check_explicit(action)
        check_model_name(name)

    async def load_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.check_model_control("load", name)
        if parameters:
            raise InvalidInput(
                f"RepositoryModelLoad parameters {clip(sorted(parameters))} are not supported; the "
                "model is loaded from the repository as it is on disk"
            )
        await self.manager.load(name)

    async def unload_model(self, name: str, parameters: Sequence[str] = ()) -> None:
        self.check_model_control("unload", name)
        unknown = sorted(set(parameters) - {"unload_dependents"})  # no ensembles: nothing depends on a model
        if unknown:
            raise InvalidInput(f"RepositoryModelUnload parameters {clip(unknown)} are not supported")
        await self.manager.unload(name)
