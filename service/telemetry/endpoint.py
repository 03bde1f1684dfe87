"""The metrics port, on threads of its own: Prometheus ``/metrics``, and for HTTP probes
``/v2/health/live``, ``/v2/health/ready`` and ``/v2/models/{name}/ready`` (200 true, 400 false, as
Triton's HTTP front end answers), read from the health state without touching the event loop."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HealthProbe = Callable[[str], bool | None]  # path -> answer (None: not a health path)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = False  # a second server on the same port must fail
    # socketserver's listen backlog is 5: past 6 connections arriving at once (scrapes, slow clients, a
    # flood) the kernel drops the next SYN, and a probe's connection waits a second for its resend.
    request_queue_size = socket.SOMAXCONN


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


def make_app(registry: CollectorRegistry, probe: HealthProbe):
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        answer = probe(environ.get("PATH_INFO", ""))
        if answer is None:
            return metrics(environ, start_response)
        start_response("200 OK" if answer else "400 Bad Request", [("Content-Length", "0")])
        return [b""]

    return app


def serve_endpoint(
    registry: CollectorRegistry, probe: HealthProbe, host: str, port: int
) -> tuple[_Server, int]:
    """Serve in daemon threads; returns the server (``shutdown()`` stops it) and the bound port."""
    server = make_server(host, port, make_app(registry, probe), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True).start()
    return server, server.server_port
