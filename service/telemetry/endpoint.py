"""The metrics port, on threads of its own: Prometheus ``/metrics``, and for HTTP probes
``/v2/health/live``, ``/v2/health/ready`` and ``/v2/models/{name}/ready`` (200 true, 400 false, as
Triton's HTTP front end answers), read from the health state without touching the event loop."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HealthProbe = Callable[[str], bool | None]  # path -> answer (None: not a health path)

# A thread per connection, at most this many at once: past it a new connection is closed at once, so
# that a flood of idle connections cannot grow the process by a thread each. Kubernetes probes go to
# the health port, not here; scrapes and HTTP probes retry.
MAX_CONNECTIONS = 256
CONNECTION_TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped (slowloris)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # SO_REUSEADDR: a restart binds at once though the last connections wait out TIME_WAIT (else
    # "Address already in use" for a minute after a scrape). A second server on a port that is still
    # listening fails all the same on Linux.
    allow_reuse_address = True
    # socketserver's listen backlog is 5: past 6 connections arriving at once (scrapes, slow clients, a
    # flood) the kernel drops the next SYN, and a probe's connection waits a second for its resend.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else will give the slot back
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (TimeoutError, ConnectionError)):
            return  # a client that sent nothing in time, or went away: nothing to report
        super().handle_error(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S

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
