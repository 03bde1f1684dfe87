"""Listening sockets for the ports the server opens itself (HTTP, metrics); gRPC's core makes its own."""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before the server starts (a client that connects early waits in the backlog).
    Made from getaddrinfo's answer, not socket.create_server: asyncio turns Nagle off only on sockets
    whose proto says TCP, and create_server's say 0, which costs every response a delayed ACK (40 ms).
    SO_REUSEADDR: a restart binds at once though the last connections wait out TIME_WAIT (else "Address
    already in use" for a minute); a second server on a port still listening fails all the same on Linux."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock
