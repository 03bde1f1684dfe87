"""The gRPC front end: KServe v2 servicer over the data plane, health, reflection, TLS, server options.

Every RPC goes through :func:`_rpc`, the one place where restrictions are checked and errors become gRPC
status codes (with messages that name no filesystem path).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import health_pb2
from service.dataplane.plane import DataPlane
from service.errors import InvalidInput
from service.protocol import grpc_codec as codec
from service.protocol.grpc_handlers import Unparseable, add_servicer
from service.protocol.grpc_precheck import shape_refusal
from service.protocol.health import HEALTH_SERVICE, INFERENCE_SERVICE, AioHealthServicer, HealthState
from service.protocol.security import GROUP_OF, Restriction, headers_of
from service.serving.model_names import check_model_name

log = logging.getLogger(__name__)

STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream answered concurrently


def _rpc(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """A unary RPC: its group's restriction checked, any error answered as its status (one place)."""
    group = GROUP_OF[method.__name__]

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            self.check_restriction(group, context)
            if isinstance(request, Unparseable):
                raise InvalidInput(request.message)
            return await method(self, request, context)
        except Exception as e:
            await self.abort(context, e)

    return wrapper


def _stream_rpc(method: Callable[..., AsyncIterator]) -> Callable[..., AsyncIterator]:
    """A streaming RPC: its group's restriction checked before the first message is read, a refusal
    answered as its status, as :func:`_rpc` does (errors of single messages travel in the stream)."""
    group = GROUP_OF[method.__name__]

    @functools.wraps(method)
    async def wrapper(self, request_iterator, context):
        try:
            self.check_restriction(group, context)
        except Exception as e:
            await self.abort(context, e)
        async for message in method(self, request_iterator, context):
            yield message

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService: each RPC translates its messages and calls the data plane."""

    def __init__(self, plane: DataPlane, health: HealthState, restrictions: dict[str, Restriction]) -> None:
        self.plane = plane
        self.health = health  # every health answer, on every port, comes from the health state
        self.restrictions = restrictions

    async def abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        status, message = self.plane.public_status(exc)
        await context.abort(grpc.StatusCode[status], message)

    def check_restriction(self, group: str, context: grpc.aio.ServicerContext) -> None:
        restriction = self.restrictions.get(group)
        if restriction is not None:
            restriction.check(headers_of(context.invocation_metadata()))

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.health.live)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.health.ready)

    @_rpc
    async def ModelReady(self, request, context):
        ready = self.health.model_ready(request.name, request.version)
        if not ready:
            check_model_name(request.name)  # a name no model can have: INVALID_ARGUMENT, as for any RPC
        return pb.ModelReadyResponse(ready=ready)

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

    @_stream_rpc
    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch); errors travel as error_message."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        responses: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW + 1)
        tasks: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest | Unparseable) -> None:
            if isinstance(request, Unparseable):
                text = self.plane.public_status(InvalidInput(request.message))[1]
                await responses.put(pb.ModelStreamInferResponse(error_message=text))
                return
            try:
                plain = codec.infer_request(request, context.time_remaining())
                result = codec.infer_response(await self.plane.infer(plain))
                message = pb.ModelStreamInferResponse(infer_response=result)
            except Exception as e:
                _, text = self.plane.public_status(e)
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


# grpcio buffers a whole message before a handler sees it, so what a connection may hold before admission
# is its concurrent streams times --max-message-bytes, per connection (HTTP/2 bounds streams per
# connection, not per server). Clients queue streams past the limit once they have the server's
# settings, but a burst sent before them is refused (REFUSED_STREAM, UNAVAILABLE to the caller): at 32, 64
# clients on one channel lost 848 of 52,729 calls that way, so the limit sits well above what one client
# runs concurrently. A server-wide bound on gRPC bytes before admission is still open (issue 18).
MAX_CONCURRENT_STREAMS = 256


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]


def build_server(
    plane: DataPlane,
    health: HealthState,
    address: str,
    *,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    restrictions: dict[str, Restriction] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the inference and health services (and reflection where grpcio-reflection is
    installed); returns it and its bound port."""
    server = grpc.aio.server(options=server_options(max_message_bytes))
    add_servicer(
        InferenceServicer(plane, health, restrictions or {}),
        server,
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        pb,
        prechecks={"ModelInferRequest": shape_refusal},  # before grpc.aio parses it on the event loop
    )
    add_servicer(
        AioHealthServicer(health), server, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2
    )
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:
        log.info("server reflection is off: grpcio-reflection is not installed")
    else:
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as e:  # grpcio's "Failed to bind to address ..."
        raise OSError(f"cannot bind gRPC to {address} (port in use?): {e}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {address} (port in use?)")
    return server, bound


def address_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
