"""A KServe v2 target over gRPC: reading what its model expects, and sending it requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from loadtest.errors import TargetError, UsageError
from loadtest.model_spec import InputTensor, ModelSpec, TensorSpec
from loadtest.recorder import OK
from loadtest.security import TlsSettings, grpc_metadata
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Image batches easily pass gRPC's 4 MiB default.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))

Headers = tuple[tuple[str, str], ...]


def connect(url: str, timeout_s: float, tls: TlsSettings | None = None) -> grpc.Channel:
    """A ready channel to `url`, or TargetError after `timeout_s` seconds."""
    if tls is None:
        channel = grpc.insecure_channel(url, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(
            url, tls.grpc_credentials(), options=CHANNEL_OPTIONS + tls.grpc_options()
        )
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TargetError(unreachable(url, timeout_s, tls)) from None
    return channel


def unreachable(url: str, timeout_s: float, tls: TlsSettings | None) -> str:
    check = "is it running, is that the gRPC port" + (", and does it accept our TLS?" if tls else "?")
    return f"cannot reach a gRPC server at {url} within {timeout_s:g} s ({check})"


def _rpc_error(url: str, what: str, error: grpc.RpcError) -> TargetError:
    return TargetError(f"{what} failed on {url}: {error.code().name}: {error.details()}")


def describe_model(
    channel: grpc.Channel, url: str, model: str, version: str, timeout_s: float, headers: Headers = ()
) -> ModelSpec:
    """Check the server and model are ready and read the model's metadata (and config where offered)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    metadata = grpc_metadata(headers)
    try:
        if not stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s, metadata=metadata).ready:
            raise TargetError(f"the server at {url} is live but not ready")
    except grpc.RpcError as error:
        raise _rpc_error(url, "ServerReady", error) from None
    request = pb.ModelMetadataRequest(name=model, version=version)
    try:
        response = stub.ModelMetadata(request, timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise UsageError(f"--model {model!r}: the server at {url} answered: {error.details()}") from None
        raise _rpc_error(url, f"ModelMetadata for {model!r}", error) from None
    try:
        ready_request = pb.ModelReadyRequest(name=model, version=version)
        ready = stub.ModelReady(ready_request, timeout=timeout_s, metadata=metadata).ready
    except grpc.RpcError as error:
        raise _rpc_error(url, f"ModelReady for {model!r}", error) from None
    if not ready:
        raise TargetError(f"model {model!r} (version {version or 'latest'}) is not ready on {url}")
    return ModelSpec(
        name=response.name or model,
        version=version,
        platform=response.platform,
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in response.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in response.outputs),
        max_batch_size=_max_batch_size(stub, url, model, version, timeout_s, metadata),
    )


def _max_batch_size(stub, url: str, model: str, version: str, timeout_s: float, metadata) -> int | None:
    try:
        request = pb.ModelConfigRequest(name=model, version=version)
        response = stub.ModelConfig(request, timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None  # e.g. MLServer: no Triton ModelConfig extension
        raise _rpc_error(url, f"ModelConfig for {model!r}", error) from None
    return int(response.config.max_batch_size)


def describe(
    url: str, model: str, version: str, timeout_s: float, connect_timeout_s: float, tls, headers: Headers
) -> ModelSpec:
    channel = connect(url, connect_timeout_s, tls)
    try:
        return describe_model(channel, url, model, version, timeout_s, headers)
    finally:
        channel.close()


def encode_request(spec: ModelSpec, tensor: InputTensor) -> bytes:
    """A serialized ModelInferRequest carrying `tensor` in raw_input_contents."""
    request = pb.ModelInferRequest(
        model_name=spec.name, model_version=spec.version, raw_input_contents=[tensor.raw]
    )
    request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return request.SerializeToString()


class GrpcSender:
    """Sends prepared ModelInferRequest bytes on one grpc.aio channel; answers (status name, message)."""

    def __init__(self, channel: grpc.aio.Channel, headers: Headers) -> None:
        self._call = channel.unary_unary(INFER_METHOD)
        self._metadata = grpc_metadata(headers)

    async def send(self, payload: bytes, timeout_s: float) -> tuple[str, str]:
        try:
            await self._call(payload, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            return error.code().name, error.details() or ""
        return OK, ""


@contextlib.asynccontextmanager
async def open_sender(
    url: str, tls: TlsSettings | None, headers: Headers, connect_timeout_s: float
) -> AsyncIterator[GrpcSender]:
    if tls is None:
        channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
    else:
        options = CHANNEL_OPTIONS + tls.grpc_options()
        channel = grpc.aio.secure_channel(url, tls.grpc_credentials(), options=options)
    async with channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout_s)
        except asyncio.TimeoutError:
            raise TargetError(unreachable(url, connect_timeout_s, tls)) from None
        yield GrpcSender(channel, headers)
