"""The transport-free data plane: validate and decode a request, batch it, build the response.

The gRPC servicer is a thin layer over :class:`InferenceCore`; every error is a :mod:`service.errors`
exception naming the field at fault and what was expected.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import numpy as np

from modelrepo.preprocess import ImageDecodeError, InputSpec, preprocess_bytes
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from service.codec import bytes_elements, numeric_array, serialize_bytes
from service.errors import InvalidInput, ModelNotFound, ServeError, Unavailable
from service.metrics import ServerMetrics
from service.model_manager import InflightCounter, ModelManager, RepositoryEntry, ServedVersion
from service.repository import ModelIO

SERVER_NAME = "cnnserve"
IMAGE_INPUT = "image"  # BYTES, one encoded image per batch row
CLASSIFICATION = "classification"  # requested-output parameter: top-k as "score:index:label"
TIMEOUT_PARAMETER = "timeout"  # request parameter, microseconds (Triton's)
FP32 = np.dtype("<f4")
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "statistics",
)
INLINE_DECODE_BYTES = 16 * 1024  # smaller image payloads are decoded on the event loop (no thread hop)


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "0+unknown"


# ------------------------------------------------------------------------------------ request parsing


def _expected_inputs(io: ModelIO) -> str:
    c, h, w = io.input_shape
    return (
        f"exactly one of {io.input_name!r} (FP32 [N, {c}, {h}, {w}]) or {IMAGE_INPUT!r} "
        "(BYTES [N], one encoded JPEG/PNG per row)"
    )


def _check_rows(what: str, rows: int, io: ModelIO) -> None:
    if rows < 1:
        raise InvalidInput(f"{what}: batch dimension must be >= 1, got {rows}")
    if rows > io.max_batch_size:
        raise InvalidInput(
            f"{what}: batch of {rows} rows exceeds the model's max_batch_size {io.max_batch_size}"
        )


def parse_inputs(request: pb.ModelInferRequest, io: ModelIO) -> np.ndarray | list[bytes]:
    """The request's one input: an FP32 [N, C, H, W] array, or N encoded images."""
    inputs = request.inputs
    if len(inputs) != 1:
        names = [t.name for t in inputs]
        got = "no inputs" if not names else f"inputs {names}"
        raise InvalidInput(f"request has {got}; model {request.model_name!r} expects {_expected_inputs(io)}")
    raws = request.raw_input_contents
    raw_count = len(raws)
    if raw_count > 1:
        raise InvalidInput(f"raw_input_contents has {raw_count} entries for 1 input")
    raw = raws[0] if raw_count else None
    tensor = inputs[0]
    name = tensor.name
    shape = tensor.shape[:]  # a list; much cheaper than list() or tuple() of the repeated field
    if name == io.input_name:
        what = f"input {io.input_name!r}"
        if tensor.datatype != "FP32":
            raise InvalidInput(f"{what}: datatype must be FP32, got {tensor.datatype!r}")
        if len(shape) != 4 or tuple(shape[1:]) != io.input_shape:
            c, h, w = io.input_shape
            raise InvalidInput(f"{what}: shape must be [N, {c}, {h}, {w}], got {shape}")
        _check_rows(what, shape[0], io)
        if raw is not None and len(raw) == shape[0] * io.row_bytes:
            return np.frombuffer(raw, dtype=FP32).reshape(shape)  # zero-copy, read-only
        return numeric_array(tensor, raw, what)  # typed contents, or the byte-count error
    if name == IMAGE_INPUT:
        what = f"input {IMAGE_INPUT!r}"
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"{what}: datatype must be BYTES (encoded JPEG/PNG), got {tensor.datatype!r}")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(
                f"{what}: shape must be [N] or [N, 1] (one encoded image per row), got {shape}"
            )
        _check_rows(what, shape[0], io)
        return bytes_elements(tensor, raw, what)
    raise InvalidInput(f"unknown input {name!r}; model {request.model_name!r} expects {_expected_inputs(io)}")


def parse_classification(request: pb.ModelInferRequest, io: ModelIO) -> int:
    """Top-k requested through the classification extension (0: plain logits)."""
    outputs = request.outputs
    if not outputs:
        return 0
    if len(outputs) > 1:
        names = [o.name for o in outputs]
        raise InvalidInput(f"request asks for outputs {names}; the model has one output {io.output_name!r}")
    output = outputs[0]
    if output.name != io.output_name:
        raise InvalidInput(f"unknown output {output.name!r}; the model has one output {io.output_name!r}")
    if CLASSIFICATION not in output.parameters:
        return 0
    param = output.parameters[CLASSIFICATION]
    which = param.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidInput(
            f"output {io.output_name!r}: parameter {CLASSIFICATION!r} must be an integer "
            f"(int64_param), got {which or 'nothing'}"
        )
    k = getattr(param, which)
    if k < 1:
        raise InvalidInput(f"output {io.output_name!r}: parameter {CLASSIFICATION!r} must be >= 1, got {k}")
    return min(k, io.num_classes)  # Triton clamps to the number of classes


def request_deadline(
    request: pb.ModelInferRequest, io: ModelIO, received: float, grpc_remaining: float | None
) -> float | None:
    """time.monotonic() by which the request must have run: the gRPC deadline, the `timeout` parameter
    (microseconds) or the model's default queue timeout, whichever comes first."""
    timeout = io.default_timeout
    parameters = request.parameters
    if parameters and TIMEOUT_PARAMETER in parameters and io.allow_timeout_override:
        param = parameters[TIMEOUT_PARAMETER]
        if param.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
            raise InvalidInput(
                f"request parameter {TIMEOUT_PARAMETER!r} must be an integer number of microseconds"
            )
        value = param.int64_param or param.uint64_param
        if value < 0:
            raise InvalidInput(
                f"request parameter {TIMEOUT_PARAMETER!r} must be >= 0 microseconds, got {value}"
            )
        timeout = value / 1e6 if value else None
    if timeout is None:
        return None if grpc_remaining is None else received + grpc_remaining
    if grpc_remaining is None:
        return received + timeout
    return received + min(timeout, grpc_remaining)


def decode_images(images: Sequence[bytes], spec: InputSpec) -> np.ndarray:
    """Encoded images -> normalized FP32 [N, C, H, W] with the manifest's preprocessing."""
    out = np.empty((len(images), *spec.shape), dtype=np.float32)
    for i, data in enumerate(images):
        try:
            out[i] = preprocess_bytes(data, spec)
        except ImageDecodeError as e:
            raise InvalidInput(f"input {IMAGE_INPUT!r} element {i}: {e}") from None
    return out


def classification_strings(logits: np.ndarray, k: int, labels: Sequence[str] | None) -> list[bytes]:
    """Triton's classification output: per row the top-k as "score:index[:label]", best first."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for row, indices in zip(logits, top, strict=True):
        for i in indices:
            text = f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")
            out.append(text.encode())
    return out


def build_response(
    request: pb.ModelInferRequest, served: ServedVersion, logits: np.ndarray, top_k: int
) -> pb.ModelInferResponse:
    io = served.io
    rows = logits.shape[0]
    if top_k:
        response = pb.ModelInferResponse(
            model_name=served.name, model_version=served.version_str, id=request.id
        )
        response.outputs.add(name=io.output_name, datatype="BYTES", shape=(rows, top_k))
        response.raw_output_contents.append(serialize_bytes(classification_strings(logits, top_k, io.labels)))
        return response
    # Copying a prepared message (name, version, output tensor metadata) is half the cost of building it.
    template = served.response_templates.get(rows)
    if template is None:
        template = pb.ModelInferResponse(model_name=served.name, model_version=served.version_str)
        template.outputs.add(name=io.output_name, datatype="FP32", shape=(rows, io.num_classes))
        served.response_templates[rows] = template
    response = pb.ModelInferResponse()
    response.CopyFrom(template)
    if request.id:
        response.id = request.id
    if logits.dtype != FP32 or not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits, dtype=FP32)
    response.raw_output_contents.append(logits.tobytes())
    return response


# ------------------------------------------------------------------------------------------- the core


class InferenceCore:
    """Everything the KServe v2 RPCs do, without gRPC."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self.draining = False
        self.started = False
        self.inflight = InflightCounter()
        self._decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="image-decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=False)

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

    async def infer(
        self, request: pb.ModelInferRequest, grpc_remaining: float | None = None
    ) -> pb.ModelInferResponse:
        received = time.monotonic()
        try:
            served = self.manager.resolve(request.model_name, request.model_version)
        except ModelNotFound:
            self.metrics.count_unknown_model("not_found")
            raise
        if self.draining:
            served.telemetry.request_done("unavailable", 0.0)
            raise Unavailable("server is shutting down; retry on another replica")
        inflight, served_inflight = self.inflight, served.inflight
        inflight.enter()
        served_inflight.enter()
        outcome = "internal"
        try:
            io = served.io
            data = parse_inputs(request, io)
            top_k = parse_classification(request, io)
            deadline = request_deadline(request, io, received, grpc_remaining)
            if isinstance(data, list):
                if sum(len(x) for x in data) <= INLINE_DECODE_BYTES:
                    data = decode_images(data, io.input_spec)
                else:
                    loop = asyncio.get_running_loop()
                    data = await loop.run_in_executor(self._decoder, decode_images, data, io.input_spec)
            batcher = served.batcher
            logits = batcher.run_now(data, deadline)  # a tiny model's idle instance: no await at all
            if logits is None:
                logits = await batcher.enqueue(data, deadline)
            response = build_response(request, served, logits, top_k)
            outcome = "success"
            return response
        except ServeError as e:
            outcome = e.outcome
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            served_inflight.exit()
            inflight.exit()
            served.telemetry.request_done(outcome, time.monotonic() - received)

    # ------------------------------------------------------------- metadata

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        served = self.manager.resolve(name, version)
        io = served.io
        config = served.config
        response = pb.ModelMetadataResponse(
            name=name,
            versions=[v.version_str for v in self.manager.versions_of(name)],
            platform=config.platform or config.backend,
        )
        response.inputs.add(name=io.input_name, datatype="FP32", shape=(-1, *io.input_shape))
        response.inputs.add(name=IMAGE_INPUT, datatype="BYTES", shape=(-1,))
        response.outputs.add(name=io.output_name, datatype="FP32", shape=(-1, io.num_classes))
        return response

    def model_config(self, name: str, version: str = "") -> pb.ModelConfigResponse:
        """The config.pbtxt as loaded, plus the `image` input (optional: a request sends it instead of
        `input`), so Triton clients and perf_analyzer can discover it."""
        served = self.manager.resolve(name, version)
        config = mc.ModelConfig()
        config.CopyFrom(served.config)
        image = config.input.add(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1], optional=True)
        image.reshape.SetInParent()  # one string per batch row: clients may send [N] or [N, 1]
        return pb.ModelConfigResponse(config=config)

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        if name:
            served = [self.manager.resolve(name, version)] if version else self.manager.versions_of(name)
            if not served:
                self.manager.resolve(name)  # raises ModelNotFound with the reason
        else:
            served = self.manager.loaded()
        response = pb.ModelStatisticsResponse()
        for v in served:
            response.model_stats.append(v.telemetry.stats.to_proto(v.name, v.version_str))
        return response

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
