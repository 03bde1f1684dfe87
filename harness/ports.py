"""Free loopback ports for the servers that tests and benchmarks start."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

TCP_TABLE = Path("/proc/net/tcp")  # Linux's table of IPv4 TCP sockets
TIME_WAIT = "06"  # its state code for TIME_WAIT


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now. Every socket stays bound until all are picked:
    closed one by one, the kernel may hand out the same port twice. Another process may still take one
    before the server binds it (see ``harness.server.start_server``, which retries)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def in_time_wait(port: int) -> bool:
    """Whether a connection on local port ``port`` (IPv4) is in TIME_WAIT (Linux: read from /proc)."""
    for line in TCP_TABLE.read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        if int(local.rsplit(":", 1)[1], 16) == port and state == TIME_WAIT:
            return True
    return False


def exchange(port: int, request: bytes, timeout: float = 10, host: str = "127.0.0.1") -> bytes:
    """Send ``request`` on a connection of its own and read until the server closes it (a reset counts
    as closed): what a raw client sees, for tests of what a port answers."""
    import contextlib

    with socket.create_connection((host, port), timeout=timeout) as client:
        client.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                answer += chunk
    return answer
