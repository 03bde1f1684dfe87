"""The server's lifecycle: start, load models, serve, and drain on SIGTERM.

Startup: the ports open at once (liveness answers during long loads); readiness turns true when the
startup models are loaded and warmed up. SIGTERM/SIGINT: readiness turns false first, new inference
requests get UNAVAILABLE (HTTP 503), queued and in-flight requests finish within the grace period, then the
ports close and the process exits 0. Health is answered from :class:`HealthState` on the gRPC and HTTP
ports, on the health port and on the metrics port's HTTP paths; the last two never wait for the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING

from service.cpus import cpu_budget
from service.dataplane.plane import DataPlane, Limits
from service.protocol.grpc_server import address_of, build_server
from service.protocol.health import RESERVED_NAMES, HealthServer, HealthState, heartbeat, http_probe
from service.protocol.http_admission import Admission
from service.protocol.security import grpc_server_credentials, parse_restrictions
from service.serving import ModelManager
from service.settings import Settings, SettingsError
from service.telemetry.endpoint import serve_endpoint
from service.telemetry.prometheus import ServerMetrics

if TYPE_CHECKING:
    from service.protocol.http_server import HttpServer

log = logging.getLogger("service")


class Server:
    """The running server: metrics endpoint, health, the model manager, the data plane and the gRPC and
    HTTP front ends, started and drained in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.restrictions = parse_restrictions(settings.restricted_protocol)
        except ValueError as e:
            raise SettingsError(f"--restricted-protocol: {e}") from None
        self.cpus = cpu_budget()
        self.health = HealthState()
        self.metrics = ServerMetrics(loop_lag=lambda: self.health.loop_lag)
        self.manager = ModelManager(
            settings,
            self.metrics,
            on_change=self._model_changed,
            cpus=self.cpus.cpus,
            reserved_names=RESERVED_NAMES,
        )
        limits = Limits(
            max_inflight=settings.max_inflight,
            max_inflight_bytes=settings.max_inflight_bytes,
            max_image_pixels=settings.max_image_pixels,
            decode_threads=self.cpus.cpus,
        )
        self.plane = DataPlane(self.manager, self.metrics, limits)
        self.health_server = HealthServer(self.health)
        self.endpoint = None
        self.grpc = None
        self.http: HttpServer | None = None  # service.protocol.http_server, when the HTTP port is on
        self._heartbeat: asyncio.Task | None = None

    async def _model_changed(self, name: str) -> None:
        versions = () if self.plane.draining else tuple(v.version_str for v in self.manager.versions_of(name))
        self.health.set_model(name, versions)
        self._update_readiness()

    def _update_readiness(self) -> None:
        self.health.set_ready(self.plane.ready)

    async def start(self) -> None:
        """Open the metrics, health, gRPC and HTTP ports (liveness answers at once; readiness once models
        are loaded)."""
        settings = self.settings
        log.info("CPU budget: %s", self.cpus.describe())
        metrics_on_http = settings.http_port != 0 and settings.metrics_port == settings.http_port
        if not metrics_on_http:
            try:
                self.endpoint, metrics_port = serve_endpoint(
                    self.metrics.registry, http_probe(self.health), settings.host, settings.metrics_port
                )
            except OSError as e:
                raise OSError(
                    f"cannot serve metrics on {settings.host}:{settings.metrics_port} (port in use?): {e}"
                ) from None
            log.info(
                "metrics and HTTP health on http://%s:%d (/metrics, /v2/health/ready)",
                settings.host,
                metrics_port,
            )
        credentials = None
        if settings.tls_cert is not None:
            credentials = grpc_server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        # Plaintext even when the gRPC port has TLS: the kubelet's gRPC probes speak no TLS, and the port
        # tells nothing but SERVING or NOT_SERVING.
        health_port = self.health_server.start(address_of(settings.host, settings.health_port))
        log.info("gRPC health on %s:%d (answered apart from inference)", settings.host, health_port)
        self._heartbeat = asyncio.get_running_loop().create_task(heartbeat(self.health), name="heartbeat")
        self.grpc, port = build_server(
            self.plane,
            self.health,
            address_of(settings.host, settings.grpc_port),
            max_message_bytes=settings.max_message_bytes,
            credentials=credentials,
            restrictions=self.restrictions,
        )
        await self.grpc.start()
        log.info(
            "gRPC (KServe v2%s) on %s:%d, repository %s, model control %s%s",
            ", TLS" + (" with client certificates" if settings.tls_client_ca else "") if credentials else "",
            settings.host,
            port,
            settings.repo,
            settings.model_control_mode,
            "".join(f"; {g} restricted" for g in sorted(self.restrictions)),
        )
        if settings.http_port:
            self._start_http(metrics_on_http)

    def _start_http(self, with_metrics: bool) -> None:
        """The HTTP/REST port, bound after gRPC's (a busy gRPC port is the error reported first). Its
        stack (Starlette, uvicorn) is imported only here: with ``--http-port 0`` the server needs neither."""
        from service.protocol.http_server import HttpServer

        settings = self.settings
        self.http = HttpServer(
            self.http_app(with_metrics),
            settings.host,
            settings.http_port,
            health=None if "health" in self.restrictions else self.health,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            tls_client_ca=settings.tls_client_ca,
        )
        self.http.start()
        log.info(
            "HTTP/REST (KServe v2) on %s://%s:%d%s",
            "https" if settings.tls_cert else "http",
            settings.host,
            self.http.port,
            " with /metrics" if with_metrics else "",
        )

    def http_app(self, with_metrics: bool = False):
        """The HTTP/REST front end's ASGI app over this server's data plane (``with_metrics``: and
        /metrics)."""
        from service.protocol.http_server import HttpFrontEnd

        app = HttpFrontEnd(
            self.plane,
            self.health,
            max_body_bytes=self.settings.max_message_bytes,
            max_json_bytes=self.settings.max_json_bytes,
            body_timeout=self.settings.body_timeout,
            restrictions=self.restrictions,
            registry=self.metrics.registry if with_metrics else None,
        ).app()
        return Admission(
            app,
            self.health,
            self.settings.max_active_http_requests,
            probes_restricted="health" in self.restrictions,
        )

    async def load_startup_models(self) -> None:
        """Load the startup models and report ready (or why not)."""
        await self.manager.start()
        self.plane.started = True
        self._update_readiness()
        if self.plane.ready:
            log.info("ready: %d model version(s) loaded", len(self.manager.loaded()))
        else:
            failed = ", ".join(self.manager.failed())
            log.error("not ready: model(s) failed to load: %s (ready again once fixed)", failed)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Load the startup models, report ready, and serve until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        startup = loop.create_task(self.load_startup_models(), name="startup")
        stopped = loop.create_task(stop.wait())
        await asyncio.wait((startup, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():  # stopped while loading
            startup.cancel()
            await asyncio.gather(startup, return_exceptions=True)
            return
        if startup.exception() is not None:
            log.error("startup failed", exc_info=startup.exception())
        await stopped

    async def drain(self) -> None:
        """Turn unready, let in-flight requests finish within the grace period, then stop everything."""
        grace = self.settings.grace_period
        started = time.monotonic()
        log.info("shutting down: draining for up to %.1fs", grace)
        self.plane.draining = True
        self._update_readiness()
        for served in self.manager.loaded():
            self.health.set_model(served.name, ())
        if not await self.plane.wait_idle(grace):
            log.warning("grace period over with requests still in flight; they are cancelled")

        def remaining() -> float:
            return max(0.0, grace - (time.monotonic() - started))

        stopping = [self.grpc.stop(grace=remaining())]
        if self.http is not None:
            stopping.append(self.http.stop(remaining()))
        await asyncio.gather(*stopping)
        await self.manager.close(timeout=remaining())
        self.plane.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self.health_server.stop()
        if self.endpoint is not None:
            self.endpoint.shutdown()
        log.info("stopped after %.2fs of draining", time.monotonic() - started)


def check_repository(settings: Settings) -> None:
    """Refuse to start on a repository folder that does not exist (as Triton does), unless the operator
    asked to wait for it (--repo-wait)."""
    if settings.repo.is_dir():
        return
    if settings.repo_wait:
        log.warning(
            "model repository %s does not exist yet; serving without models until it appears (--repo-wait)",
            settings.repo,
        )
        return
    raise RepositoryMissing(
        f"model repository {settings.repo} does not exist or is not a folder; not starting (give "
        "--repo-wait to start anyway and load it once it appears, with --model-control-mode poll)"
    )


class RepositoryMissing(OSError):
    """The repository folder the server was started on is not there."""


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    check_repository(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(settings)
    await server.start()
    await server.serve_until(stop)
    await server.drain()
    return 0
