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


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = ServerMetrics()
    try:
        metrics_server, metrics_port = metrics.serve(settings.host, settings.metrics_port)
    except OSError as e:
        raise OSError(
            f"cannot serve metrics on {settings.host}:{settings.metrics_port} (port in use?): {e}"
        ) from None
    log.info("metrics on http://%s:%d/metrics", settings.host, metrics_port)

    health = health_aio.HealthServicer()
    for service in ("", SERVICE_NAME):
        await health.set(service, NOT_SERVING)
    await health.set(LIVENESS, SERVING)

    async def on_model_change(name: str, ready: bool) -> None:
        await health.set(name, SERVING if ready and not plane.draining else NOT_SERVING)

    manager = ModelManager(settings, metrics, on_change=on_model_change)
    plane = DataPlane(manager, metrics, decode_threads=os.cpu_count() or 1)
    server, port = build_server(plane, health, settings.host, settings.grpc_port, settings.max_message_bytes)
    await server.start()
    log.info(
        "gRPC (KServe v2) on %s:%d, repository %s, model control %s",
        settings.host,
        port,
        settings.repo,
        settings.model_control_mode,
    )

    startup = loop.create_task(manager.start(), name="startup")
    stopped = loop.create_task(stop.wait())
    await asyncio.wait((startup, stopped), return_when=asyncio.FIRST_COMPLETED)
    if startup.done() and startup.exception() is None:
        plane.started = True
        if plane.ready:
            for service in ("", SERVICE_NAME):
                await health.set(service, SERVING)
            log.info("ready: %d model version(s) loaded", len(manager.loaded()))
        else:
            log.error("not ready: startup model(s) failed to load: %s", ", ".join(manager.startup_failures))
        await stopped
    elif startup.done():
        log.error("startup failed", exc_info=startup.exception())
        await stopped
    else:
        startup.cancel()
        await asyncio.gather(startup, return_exceptions=True)

    # ---- drain
    started = time.monotonic()
    log.info("shutting down: draining for up to %.1fs", settings.grace_period)
    plane.draining = True
    for service in ("", SERVICE_NAME, *(v.name for v in manager.loaded())):
        await health.set(service, NOT_SERVING)
    if not await plane.wait_idle(settings.grace_period):
        log.warning("grace period over with requests still in flight; they are cancelled")

    def remaining() -> float:
        return max(0.0, settings.grace_period - (time.monotonic() - started))

    await server.stop(grace=remaining())
    await manager.close(timeout=remaining())
    plane.close()
    metrics_server.shutdown()
    log.info("stopped after %.2fs of draining", time.monotonic() - started)
    return 0
