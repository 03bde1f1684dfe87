"""The server's lifecycle: start, load models, serve, and drain on SIGTERM.

Startup: the gRPC port opens at once (liveness answers during long loads); health ``""`` and
``inference.GRPCInferenceService`` turn SERVING when the startup models are loaded and warmed up.
SIGTERM/SIGINT: those turn NOT_SERVING first, new inference requests get UNAVAILABLE, queued and in-flight
requests finish within the grace period, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service.dataplane.plane import DataPlane
from service.protocol.grpc_server import LIVENESS, SERVICE_NAME, build_server
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics

log = logging.getLogger("service")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    """The running server: metrics endpoint, health, the model manager, the data plane and the gRPC front
    end, started and drained in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.health = health_aio.HealthServicer()
        self.manager = ModelManager(settings, self.metrics, on_change=self._model_changed)
        self.plane = DataPlane(self.manager, self.metrics, decode_threads=os.cpu_count() or 1)
        self.metrics_server = None
        self.grpc = None

    async def _model_changed(self, name: str, ready: bool) -> None:
        await self.health.set(name, SERVING if ready and not self.plane.draining else NOT_SERVING)

    async def _set_ready(self, ready: bool) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, SERVING if ready else NOT_SERVING)

    async def start(self) -> None:
        """Open the metrics and gRPC ports (liveness answers at once; readiness once models are loaded)."""
        settings = self.settings
        try:
            self.metrics_server, metrics_port = self.metrics.serve(settings.host, settings.metrics_port)
        except OSError as e:
            raise OSError(
                f"cannot serve metrics on {settings.host}:{settings.metrics_port} (port in use?): {e}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", settings.host, metrics_port)
        await self._set_ready(False)
        await self.health.set(LIVENESS, SERVING)
        self.grpc, port = build_server(
            self.plane, self.health, settings.host, settings.grpc_port, settings.max_message_bytes
        )
        await self.grpc.start()
        log.info(
            "gRPC (KServe v2) on %s:%d, repository %s, model control %s",
            settings.host,
            port,
            settings.repo,
            settings.model_control_mode,
        )

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Load the startup models, report ready, and serve until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        startup = loop.create_task(self.manager.start(), name="startup")
        stopped = loop.create_task(stop.wait())
        await asyncio.wait((startup, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():  # stopped while loading
            startup.cancel()
            await asyncio.gather(startup, return_exceptions=True)
            return
        if startup.exception() is not None:
            log.error("startup failed", exc_info=startup.exception())
        else:
            self.plane.started = True
            if self.plane.ready:
                await self._set_ready(True)
                log.info("ready: %d model version(s) loaded", len(self.manager.loaded()))
            else:
                failed = ", ".join(self.manager.startup_failures)
                log.error("not ready: startup model(s) failed to load: %s", failed)
        await stopped

    async def drain(self) -> None:
        """Turn unready, let in-flight requests finish within the grace period, then stop everything."""
        grace = self.settings.grace_period
        started = time.monotonic()
        log.info("shutting down: draining for up to %.1fs", grace)
        self.plane.draining = True
        await self._set_ready(False)
        for served in self.manager.loaded():
            await self.health.set(served.name, NOT_SERVING)
        if not await self.plane.wait_idle(grace):
            log.warning("grace period over with requests still in flight; they are cancelled")

        def remaining() -> float:
            return max(0.0, grace - (time.monotonic() - started))

        await self.grpc.stop(grace=remaining())
        await self.manager.close(timeout=remaining())
        self.plane.close()
        self.metrics_server.shutdown()
        log.info("stopped after %.2fs of draining", time.monotonic() - started)


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(settings)
    await server.start()
    await server.serve_until(stop)
    await server.drain()
    return 0
