"""Connecting to a KServe v2 target and reading what its model expects."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from loadtest.options import TargetError, UsageError
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Image batches easily pass gRPC's 4 MiB default.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # From Triton's ModelConfig RPC: 0 = the model does not batch; None = the server has no ModelConfig.
    max_batch_size: int | None

    def describe_inputs(self) -> str:
        return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in self.inputs) or "none"


def connect(url: str, timeout_s: float) -> grpc.Channel:
    """A ready channel to `url`, or TargetError after `timeout_s` seconds."""
    channel = grpc.insecure_channel(url, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TargetError(
            f"cannot reach a gRPC server at {url} within {timeout_s:g} s (is it running, and is that the "
            "gRPC port?)"
        ) from None
    return channel


def _rpc_error(url: str, what: str, error: grpc.RpcError) -> TargetError:
    return TargetError(f"{what} failed on {url}: {error.code().name}: {error.details()}")


def describe_model(channel: grpc.Channel, url: str, model: str, version: str, timeout_s: float) -> ModelSpec:
    """Check the server and model are ready and read the model's metadata (and config where offered)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        if not stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s).ready:
            raise TargetError(f"the server at {url} is live but not ready")
    except grpc.RpcError as error:
        raise _rpc_error(url, "ServerReady", error) from None
    try:
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout_s)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise UsageError(f"--model {model!r}: the server at {url} answered: {error.details()}") from None
        raise _rpc_error(url, f"ModelMetadata for {model!r}", error) from None
    try:
        ready = stub.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=timeout_s).ready
    except grpc.RpcError as error:
        raise _rpc_error(url, f"ModelReady for {model!r}", error) from None
    if not ready:
        raise TargetError(f"model {model!r} (version {version or 'latest'}) is not ready on {url}")
    return ModelSpec(
        name=metadata.name or model,
        version=version,
        platform=metadata.platform,
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.outputs),
        max_batch_size=_max_batch_size(stub, url, model, version, timeout_s),
    )


def _max_batch_size(stub, url: str, model: str, version: str, timeout_s: float) -> int | None:
    try:
        response = stub.ModelConfig(pb.ModelConfigRequest(name=model, version=version), timeout=timeout_s)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None  # e.g. MLServer: no Triton ModelConfig extension
        raise _rpc_error(url, f"ModelConfig for {model!r}", error) from None
    return int(response.config.max_batch_size)
