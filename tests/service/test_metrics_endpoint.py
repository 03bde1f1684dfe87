"""The metrics port in-process: scrapes and HTTP probes, and what slow or idle clients can hold (an event
loop of its own, every request whole within a deadline, a bounded number of connections)."""

from __future__ import annotations

import contextlib
import gzip
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from harness.ports import exchange
from harness.waiting import wait_for
from service.telemetry import endpoint as endpoint_module
from service.telemetry.endpoint import serve_endpoint

HEALTH = {"/v2/health/live": True, "/v2/health/ready": False, "/v2/models/m/ready": True}


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("cnnserve_test_requests", "a counter", registry=registry).inc(3)
    server, _ = serve_endpoint(registry, HEALTH.get, "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(server) -> int:
    return server.server_port


def get(port: int, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    head = "".join(f"{h}\r\n" for h in headers)
    answer = exchange(port, f"GET {path} HTTP/1.1\r\nhost: t\r\n{head}connection: close\r\n\r\n".encode())
    status_line, _, rest = answer.partition(b"\r\n")
    fields, _, body = rest.partition(b"\r\n\r\n")
    parsed = dict(line.decode().lower().split(": ", 1) for line in fields.split(b"\r\n") if line)
    return int(status_line.split()[1]), parsed, body


def test_scrape_and_probes(endpoint):
    status, headers, body = get(endpoint, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"cnnserve_test_requests_total 3.0" in body
    status, headers, body = get(endpoint, "/metrics", "accept-encoding: gzip")
    assert headers.get("content-encoding") == "gzip"
    assert b"cnnserve_test_requests_total 3.0" in gzip.decompress(body)
    status, headers, body = get(endpoint, "/metrics", "accept: application/openmetrics-text; version=1.0.0")
    assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    assert [get(endpoint, p)[0] for p in HEALTH] == [200, 400, 200]
    assert get(endpoint, "/v2/models/m%2Fx/ready")[0] == 404  # not a health path, not /metrics
    post = b"POST /metrics HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert exchange(endpoint, post).startswith(b"HTTP/1.1 405")


def test_keep_alive_serves_request_after_request(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint), timeout=10) as client:
        reader = client.makefile("rb")
        for _ in range(3):
            client.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            while reader.readline() not in (b"\r\n", b""):
                pass


def test_malformed_and_oversized_requests_are_dropped(endpoint):
    assert exchange(endpoint, b"\x16\x03\x01 not http\r\n\r\n").startswith((b"", b"HTTP/1.1 4"))
    huge = b"GET /metrics HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    assert b"cnnserve_test_requests" not in exchange(endpoint, huge)
    assert get(endpoint, "/v2/health/live")[0] == 200  # and the port still answers


def test_a_trickling_client_is_cut_off_at_the_deadline(endpoint, monkeypatch):
    """A byte every 0.2 s keeps every single read short; the deadline is for the whole request."""
    monkeypatch.setattr(endpoint_module, "REQUEST_DEADLINE_S", 1.0)
    with socket.create_connection(("127.0.0.1", endpoint), timeout=10) as client:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nhost: t\r\nx-slow: " + b"a" * 200:
            try:
                client.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 30:
                break
        if not closed:
            with contextlib.suppress(ConnectionResetError):
                closed = client.recv(100) == b""
    assert closed, "the server should have dropped the trickling client"


def test_connections_past_the_limit_are_closed_and_idle_ones_expire(server, endpoint, monkeypatch):
    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 20)
    monkeypatch.setattr(endpoint_module, "REQUEST_DEADLINE_S", 2.0)
    idle = [socket.create_connection(("127.0.0.1", endpoint), timeout=10) for _ in range(20)]
    try:
        wait_for(lambda: server.open_connections == 20, 10, "the idle connections to be accepted")
        assert exchange(endpoint, b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n") == b""
        for connection in idle:  # the deadline drops the idle ones (recv returns at close)
            with contextlib.suppress(ConnectionResetError):
                assert connection.recv(100) == b""
    finally:
        for connection in idle:
            connection.close()
    assert get(endpoint, "/v2/health/live")[0] == 200


def test_garbage_is_answered_400_and_an_oversized_head_431(endpoint):
    assert exchange(endpoint, b"GARBAGE " * 100 + b"\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET /metrics HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * (20 * 1024) + b"\r\n\r\n"
    assert exchange(endpoint, huge).startswith(b"HTTP/1.1 431")


def test_a_client_that_does_not_read_its_answers_is_dropped(monkeypatch):
    """Scrapes whose answers are never read fill the buffers: an answer must go out within the deadline
    too, or the connection is aborted (it would hold its slot forever)."""
    monkeypatch.setattr(endpoint_module, "REQUEST_DEADLINE_S", 1.0)
    registry = CollectorRegistry()
    for i in range(2000):  # a scrape of about 200 KB
        Counter(f"cnnserve_test_{i}", "a counter", registry=registry).inc()
    server, port = serve_endpoint(registry, HEALTH.get, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for _ in range(50):  # 10 MB of answers, none read
                client.sendall(b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n")
            wait_for(lambda: server.open_connections == 1, 10, "the connection to be served")
            wait_for(lambda: server.open_connections == 0, 15, "the non-reading connection to be dropped")
    finally:
        server.shutdown()
        server.server_close()
