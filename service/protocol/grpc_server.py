"""The gRPC front end: KServe v2 servicer over the data plane, health, reflection, server options.

Every RPC goes through :func:`_rpc`, the one place where errors become gRPC status codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from service.dataplane.plane import DataPlane
from service.errors import ServeError, to_serve_error
from service.protocol import grpc_codec as codec

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS = "liveness"  # health service name that stays SERVING while draining
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream answered concurrently


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message of any exception (unexpected ones are logged: they are bugs)."""
    serve_error = to_serve_error(error)
    if not isinstance(error, ServeError):
        log.error("unexpected error in RPC", exc_info=error)
    return grpc.StatusCode[serve_error.status], serve_error.message


def _rpc(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as e:
            code, message = status_of(e)
            await context.abort(code, message)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService: each RPC translates its messages and calls the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.plane.live)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @_rpc
    async def ServerMetadata(self, request, context):
        return codec.server_metadata(self.plane.server_metadata())

    @_rpc
    async def ModelMetadata(self, request, context):
        return codec.model_metadata(self.plane.model_metadata(request.name, request.version))

    @_rpc
    async def ModelConfig(self, request, context):
        return codec.model_config(self.plane.model_config(request.name, request.version))

    @_rpc
    async def ModelStatistics(self, request, context):
        return codec.model_statistics(self.plane.model_statistics(request.name, request.version))

    @_rpc
    async def RepositoryIndex(self, request, context):
        return codec.repository_index(self.plane.repository_index(request.ready))

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        await self.plane.load_model(request.model_name, list(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        await self.plane.unload_model(request.model_name, list(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def ModelInfer(self, request, context):
        plain = codec.infer_request(request, context.time_remaining())
        return codec.infer_response(await self.plane.infer(plain))

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch); errors travel as error_message."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        responses: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW + 1)
        tasks: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                plain = codec.infer_request(request, context.time_remaining())
                result = codec.infer_response(await self.plane.infer(plain))
                message = pb.ModelStreamInferResponse(infer_response=result)
            except Exception as e:
                _, text = status_of(e)
                message = pb.ModelStreamInferResponse(
                    error_message=text,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
                    ),
                )
            await responses.put(message)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.get_running_loop().create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await responses.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (message := await responses.get()) is not None:
                yield message
                window.release()
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]


def build_server(
    plane: DataPlane, health: health_aio.HealthServicer, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the inference, health and reflection services; returns it and its bound port."""
    server = grpc.aio.server(options=server_options(max_message_bytes))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:  # grpcio's "Failed to bind to address ..."
        raise OSError(f"cannot bind gRPC to {address} (port in use?): {e}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {address} (port in use?)")
    return server, bound
