"""The thin gRPC layer: KServe v2 servicer over :class:`InferenceCore`, health, reflection, server options."""

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
from service.core import InferenceCore
from service.errors import ServeError, to_serve_error

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name[
    "GRPCInferenceService"
].full_name  # inference.GRPCInferenceService
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS = "liveness"  # health service name that stays SERVING while draining
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream answered concurrently


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    serve_error = to_serve_error(error)
    if not isinstance(error, ServeError):
        log.error("unexpected error in RPC", exc_info=error)
    await context.abort(serve_error.code, serve_error.message)


def _unary(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as e:
            await _abort(context, e)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService: every RPC delegates to the core."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    @_unary
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.core.live)

    @_unary
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.core.ready)

    @_unary
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    @_unary
    async def ServerMetadata(self, request, context):
        return self.core.server_metadata()

    @_unary
    async def ModelMetadata(self, request, context):
        return self.core.model_metadata(request.name, request.version)

    @_unary
    async def ModelConfig(self, request, context):
        return self.core.model_config(request.name, request.version)

    @_unary
    async def ModelStatistics(self, request, context):
        return self.core.model_statistics(request.name, request.version)

    @_unary
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for entry in self.core.repository_index(request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    @_unary
    async def RepositoryModelLoad(self, request, context):
        await self.core.load_model(request.model_name, list(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request, context):
        await self.core.unload_model(request.model_name, list(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request, context):
        try:
            return await self.core.infer(request, context.time_remaining())
        except Exception as e:
            await _abort(context, e)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch); errors travel as error_message."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        responses: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW + 1)
        tasks: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                result = await self.core.infer(request, context.time_remaining())
                message = pb.ModelStreamInferResponse(infer_response=result)
            except Exception as e:
                error = to_serve_error(e)
                if not isinstance(e, ServeError):
                    log.error("unexpected error in ModelStreamInfer", exc_info=e)
                message = pb.ModelStreamInferResponse(
                    error_message=error.message,
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
    core: InferenceCore, health: health_aio.HealthServicer, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the inference, health and reflection services; returns it and its bound port."""
    server = grpc.aio.server(options=server_options(max_message_bytes))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
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
