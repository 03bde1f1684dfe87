"""The HTTP port's acceptor in-process: whole health probes answered on its thread from the health state,
every other connection handed over unread (its bytes still in the socket for uvicorn to read)."""

from __future__ import annotations

import queue
import socket

import pytest

from harness.ports import exchange
from service.protocol import http_accept
from service.protocol.health import HealthState
from service.protocol.http_accept import ProbeFirstAcceptor, probe_of

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: pod:8000\r\nUser-Agent: kube-probe/1.31\r\n\r\n"


@pytest.mark.parametrize(
    "head, probe",
    [
        (LIVE, "live"),
        (b"GET /v2/health/ready HTTP/1.0\r\n\r\n", "ready"),
        (LIVE[:-2], None),  # the head is not complete yet
        (LIVE + b"GET /v2/health/live HTTP/1.1\r\n\r\n", None),  # pipelined: uvicorn answers both
        (b"POST /v2/health/live HTTP/1.1\r\ncontent-length: 0\r\n\r\n", None),
        (b"GET /v2/health/live HTTP/1.1\r\nContent-Length: 5\r\n\r\n", None),
        (b"GET /v2/health/live?verbose=1 HTTP/1.1\r\n\r\n", None),  # the router's to answer
        (b"GET /v2/models/m/ready HTTP/1.1\r\n\r\n", None),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),  # a TLS hello
    ],
)
def test_probe_of(head, probe):
    assert probe_of(head) == probe


@pytest.fixture
def acceptor(monkeypatch):
    monkeypatch.setattr(http_accept, "TRIAGE_TIMEOUT_S", 0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    state = HealthState()
    handed: queue.Queue[socket.socket] = queue.Queue()
    running = ProbeFirstAcceptor(listener, state, handed.put)
    running.start()
    yield running, state, handed, listener.getsockname()[1]
    running.stop()
    while not handed.empty():
        handed.get().close()


def test_probes_are_answered_from_the_health_state(acceptor):
    running, state, handed, port = acceptor
    state.beat(0.0)
    assert exchange(port, LIVE).startswith(b"HTTP/1.1 200 OK\r\n")
    assert exchange(port, b"GET /v2/health/ready HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")  # not ready
    state.set_ready(True)
    assert exchange(port, b"GET /v2/health/ready HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert running.answered == 3 and handed.empty()


def test_other_connections_are_handed_over_unread(acceptor):
    running, _, handed, port = acceptor
    request = b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        adopted = handed.get(timeout=10)
        try:
            adopted.setblocking(True)
            adopted.settimeout(10)
            assert adopted.recv(4096) == request  # every byte still there for the HTTP server
        finally:
            adopted.close()
    assert running.answered == 0


def test_a_silent_connection_is_handed_over_after_the_triage_timeout(acceptor):
    _, _, handed, port = acceptor
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        adopted = handed.get(timeout=10)  # the HTTP server's own timeouts apply from here
        adopted.close()


def test_a_connection_closed_unsent_is_dropped(acceptor):
    running, _, handed, port = acceptor
    socket.create_connection(("127.0.0.1", port), timeout=10).close()
    assert exchange(port, LIVE).startswith(b"HTTP/1.1 200")  # (the next one is served: the first was seen)
    assert handed.empty() and running.answered == 1
