"""Health, kept apart from inference: one thread-safe state, answered on the gRPC port and on a health port
of its own.

The event loop that runs inference can fall behind under overload: everything it does waits its turn.
Probes must not. The health port is a gRPC server on threads of its own (``grpc.health.v1`` Check and
Triton's ServerLive/ServerReady/ModelReady); it answers from :class:`HealthState` without touching the
event loop, so it answers at any load the server is shedding. Liveness still notices a wedged event
loop: the loop beats (:func:`heartbeat`), and the process is not live when it has not for
``LOOP_STALL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import health_pb2, health_pb2_grpc
from service.errors import clip
from service.protocol.grpc_handlers import Unparseable, add_servicer

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS = "liveness"  # SERVING while the process is up and its event loop runs, also while draining
READINESS = ("", INFERENCE_SERVICE)  # SERVING when the server is ready
RESERVED_NAMES = frozenset({*READINESS, LIVENESS, HEALTH_SERVICE})  # no model may take these names
LOOP_STALL_SECONDS = 20.0  # liveness fails when the event loop has not run for this long
# The loop-lag meter (cnnserve_event_loop_lag_seconds) sees a stall only where it covers a beat: every
# stall of 100 ms or more is seen, shorter ones in proportion. Ten wake-ups a second cost nothing.
HEARTBEAT_SECONDS = 0.1
HEALTH_PORT_THREADS = 4  # probes are few and quick; more concurrent calls are refused at once


class HealthState:
    """Readiness of the server and of each model, and the event loop's last heartbeat. Written on the event
    loop, read from any thread."""

    def __init__(self, stall_seconds: float = LOOP_STALL_SECONDS) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._models: dict[str, frozenset[str]] = {}  # ready model -> its ready versions
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.stall_seconds = stall_seconds
        self.heartbeat = time.monotonic()
        self.loop_lag = 0.0  # seconds the last heartbeat ran late: how far behind the event loop is

    # ---- written by the server
    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready
        self._notify()

    def set_model(self, name: str, versions: tuple[str, ...]) -> None:
        """``versions``: the model's ready versions (empty: not ready; its name stays a known service)."""
        with self._lock:
            self._models[name] = frozenset(versions)
        self._notify()

    def beat(self, lag: float) -> None:
        self.heartbeat, self.loop_lag = time.monotonic(), lag

    # ---- read by anyone
    @property
    def live(self) -> bool:
        return time.monotonic() - self.heartbeat < self.stall_seconds

    @property
    def ready(self) -> bool:
        return self._ready and self.live

    def model_ready(self, name: str, version: str = "") -> bool:
        versions = self._models.get(name)
        return bool(versions) and (not version or version in versions) and self.live

    def status(self, service: str) -> int | None:
        """The grpc.health.v1 status of ``service``; None for a service the server does not know."""
        if service == LIVENESS:
            return SERVING if self.live else NOT_SERVING
        if service in READINESS:
            return SERVING if self.ready else NOT_SERVING
        if service in self._models:
            return SERVING if self.model_ready(service) else NOT_SERVING
        return None

    # ---- watchers (grpc.health.v1 Watch on the event loop)
    def watch(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._watchers.append((asyncio.get_running_loop(), queue))
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._watchers = [(loop, q) for loop, q in self._watchers if q is not queue]

    def _notify(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for loop, queue in watchers:
            loop.call_soon_threadsafe(queue.put_nowait, None)


def http_probe(state: HealthState) -> Callable[[str], bool | None]:
    """The answers of KServe's HTTP health paths, for the metrics port (None: not a health path)."""

    def answer(path: str) -> bool | None:
        if path == "/v2/health/live":
            return state.live
        if path == "/v2/health/ready":
            return state.ready
        parts = path.strip("/").split("/")  # v2/models/{name}[/versions/{v}]/ready
        if len(parts) in (4, 6) and parts[:2] == ["v2", "models"] and parts[-1] == "ready":
            if len(parts) == 6 and parts[3] != "versions":
                return None
            return state.model_ready(parts[2], parts[4] if len(parts) == 6 else "")
        return None

    return answer


async def heartbeat(state: HealthState, interval: float = HEARTBEAT_SECONDS) -> None:
    """Beat every ``interval`` seconds on the event loop, recording how late each beat ran."""
    while True:
        due = time.monotonic() + interval
        await asyncio.sleep(interval)
        state.beat(max(0.0, time.monotonic() - due))


# -------------------------------------------------------------------------------- on the gRPC port


class AioHealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 on the main gRPC port (event loop): Check and Watch."""

    def __init__(self, state: HealthState) -> None:
        self.state = state

    async def Check(self, request, context):
        if isinstance(request, Unparseable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        status = self.state.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {clip(request.service)}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if isinstance(request, Unparseable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        queue = self.state.watch()
        try:
            last = None
            while True:
                status = self.state.status(request.service)
                status = SERVICE_UNKNOWN if status is None else status
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                await queue.get()
        finally:
            self.state.unwatch(queue)


# ------------------------------------------------------------------------------- on the health port


def _refuse_unparseable(request, context) -> None:
    if isinstance(request, Unparseable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


class _ThreadHealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, state: HealthState) -> None:
        self.state = state

    def Check(self, request, context):
        _refuse_unparseable(request, context)
        status = self.state.status(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {clip(request.service)}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is served on the main gRPC port; use Check here")


class _ProbeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Triton's health RPCs on the health port; every other RPC of the service is UNIMPLEMENTED here."""

    def __init__(self, state: HealthState) -> None:
        self.state = state

    def ServerLive(self, request, context):
        _refuse_unparseable(request, context)
        return pb.ServerLiveResponse(live=self.state.live)

    def ServerReady(self, request, context):
        _refuse_unparseable(request, context)
        return pb.ServerReadyResponse(ready=self.state.ready)

    def ModelReady(self, request, context):
        _refuse_unparseable(request, context)
        return pb.ModelReadyResponse(ready=self.state.model_ready(request.name, request.version))


class HealthServer:
    """The health port: a gRPC server on threads of its own, answering from the state alone."""

    def __init__(self, state: HealthState) -> None:
        self._pool = ThreadPoolExecutor(HEALTH_PORT_THREADS, thread_name_prefix="health")
        self.server = grpc.server(
            self._pool,
            maximum_concurrent_rpcs=HEALTH_PORT_THREADS * 4,
            options=[("grpc.so_reuseport", 0)],
        )
        add_servicer(
            _ThreadHealthServicer(state),
            self.server,
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            health_pb2,
        )
        add_servicer(
            _ProbeServicer(state), self.server, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb
        )

    def start(self, address: str) -> int:
        """Bind ``address`` (port 0: any free one) and serve; returns the bound port."""
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot bind the health port {address} (port in use?): {e}") from None
        if port == 0:
            raise OSError(f"cannot bind the health port {address} (port in use?)")
        self.server.start()
        return port

    def stop(self) -> None:
        self.server.stop(grace=None)
        self._pool.shutdown(wait=False)
