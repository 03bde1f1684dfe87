"""How much of the HTTP port's work runs at once, and the probes that never wait for it.

A burst of connections arrives in one turn of the event loop: each gets its request parsed and a task,
and every task that can run, runs in the next turn. Routing, reading and decoding hundreds of requests in
one turn made that turn last hundreds of milliseconds, and a health probe on the same port waited it out
(600 concurrent requests: `/v2/health/live` 165-380 ms). :class:`Admission` bounds that turn: at most
``limit`` requests are past admission (routed, body read, in the data plane, answered) at once; the rest
wait before their route runs, their bodies unread (TCP flow control holds them in the client's socket,
so they hold no memory here either). Health paths skip the line, and the unrestricted liveness and
readiness probes are answered right here from the health state, without the router.
"""

from __future__ import annotations

import asyncio

from service.protocol.health import HealthState

PROBES = ("/v2/health/live", "/v2/health/ready")
EMPTY = {"type": "http.response.body", "body": b""}


def _status(ok: bool) -> dict:
    headers = [(b"content-length", b"0")]
    return {"type": "http.response.start", "status": 200 if ok else 400, "headers": headers}


def skips_the_line(method: str, path: str) -> bool:
    """Probes and scrapes: cheap, and what must answer while the port is busy."""
    probe = path.startswith("/v2/health/") or path.endswith("/ready") or path == "/metrics"
    return probe and method in ("GET", "HEAD")


class Admission:
    """An ASGI app that admits at most ``limit`` requests at once into ``app`` (0: no limit)."""

    def __init__(self, app, health: HealthState, limit: int, *, probes_restricted: bool = False) -> None:
        self.app = app
        self.health = health
        self.limit = limit
        self.probes_restricted = probes_restricted  # a restriction header must be checked: the router does
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self.waiting = 0  # requests waiting for a slot now (for tests and the curious)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in PROBES and not self.probes_restricted:
            ok = self.health.live if path == PROBES[0] else self.health.ready
            await send(_status(ok))
            await send(EMPTY)
            return
        if self._slots is None or skips_the_line(method, path):
            await self.app(scope, receive, send)
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()
