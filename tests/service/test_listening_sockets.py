"""The listening sockets we make take SO_REUSEADDR (the metrics port's and the HTTP port's; gRPC's core
sets it on its own): a server restarted right after it served a connection binds its port again at once,
though that connection still waits out TIME_WAIT; and a second server on a port still listening fails."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry

from harness.ports import TCP_TABLE, exchange, free_port, in_time_wait
from service.sockets import listening_socket
from service.telemetry.endpoint import serve_endpoint

pytestmark = pytest.mark.skipif(not TCP_TABLE.exists(), reason="TIME_WAIT is read from Linux's /proc/net/tcp")


def test_metrics_endpoint_rebinds_while_its_last_connection_is_in_time_wait():
    port = free_port()
    server, _ = serve_endpoint(CollectorRegistry(), lambda path: None, "127.0.0.1", port)
    answer = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    server.shutdown()
    server.server_close()
    assert in_time_wait(port)
    again, _ = serve_endpoint(CollectorRegistry(), lambda path: None, "127.0.0.1", port)
    try:
        with pytest.raises(OSError):  # a second server while this one listens
            serve_endpoint(CollectorRegistry(), lambda path: None, "127.0.0.1", port)
    finally:
        again.shutdown()
        again.server_close()


def test_http_socket_rebinds_while_its_last_connection_is_in_time_wait():
    port = free_port()
    listener = listening_socket("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first
    assert client.recv(1) == b""
    client.close()
    listener.close()
    assert in_time_wait(port)
    again = listening_socket("127.0.0.1", port)
    try:
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", port)
    finally:
        again.close()
