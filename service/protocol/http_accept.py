"""The HTTP port's connections accepted on a thread of its own, where health probes are answered at once.

A burst of hundreds of connections is accepted and parsed by the serving loop in arrival order, so a
probe that arrives with it waited for all of them (600 at once: 147-185 ms; Triton: 14 ms). Here a small
event loop on its own thread accepts every connection and looks at its first bytes without reading them
(``MSG_PEEK``): a plain ``GET /v2/health/live`` or ``/v2/health/ready`` with nothing after its head is
answered from the health state and closed (as the kubelet's HTTP probes expect: one request per
connection); any other connection is handed, unread, to the serving loop's HTTP server. Plain HTTP only:
with TLS the bytes cannot be looked at, and the serving loop accepts as before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from collections.abc import Callable

from service.protocol.health import HealthState

log = logging.getLogger(__name__)

PEEK_BYTES = 1024  # a probe's head is a few hundred bytes at most
TRIAGE_TIMEOUT_S = 1.0  # a connection that sends nothing for this long is handed over as it is
ACCEPT_BATCH = 64  # connections accepted per wake-up before the thread looks at their first bytes
ACCEPT_PAUSE_S = 1.0  # accepting stops this long when the process is out of descriptors or memory
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PROBE_PATHS = {b"/v2/health/live": "live", b"/v2/health/ready": "ready"}
ANSWERS = {
    True: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    False: b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
}


def probe_of(head: bytes) -> str | None:
    """``"live"`` or ``"ready"`` when ``head`` is exactly one whole probe request: ``GET`` of a probe path
    over HTTP/1.x, its header block complete, no body declared, nothing sent after it."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(head):
        return None
    request_line, _, fields = head[:end].partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    lowered = fields.lower()
    if b"content-length" in lowered or b"transfer-encoding" in lowered or b"upgrade" in lowered:
        return None
    return PROBE_PATHS.get(parts[1])


class ProbeFirstAcceptor:
    """Accepts on ``listener`` in a thread of its own; ``hand_over(sock)`` is called (on that thread) for
    every connection that is not a health probe."""

    def __init__(
        self, listener: socket.socket, health: HealthState, hand_over: Callable[[socket.socket], None]
    ) -> None:
        self.listener = listener
        self.health = health
        self.hand_over = hand_over
        self.answered = 0  # probes answered here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="http-accept", daemon=True)
        self._pending: set[socket.socket] = set()

    def start(self) -> None:
        self.listener.setblocking(False)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting (the listener is closed) and hand over the connections still being looked at."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        elif not self._loop.is_closed():  # never started
            self._loop.close()
        self.listener.close()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        loop = self._loop
        loop.add_reader(self.listener.fileno(), self._accept)
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(self.listener.fileno())
            for sock in list(self._pending):
                self._release(sock)
            loop.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in RESOURCE_ERRNOS:  # out of descriptors or memory: pause, as asyncio does
                    log.warning("HTTP port: cannot accept (%s); pausing accepts for %g s", e, ACCEPT_PAUSE_S)
                    self._loop.remove_reader(self.listener.fileno())
                    self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return  # (a connection reset before it was accepted: the next wake-up goes on)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._loop.add_reader(sock.fileno(), self._triage, sock)
            except OSError:  # reset by the peer meanwhile
                sock.close()
                continue
            self._pending.add(sock)
            self._loop.call_later(TRIAGE_TIMEOUT_S, self._release, sock)

    def _resume_accepting(self) -> None:
        if self.listener.fileno() >= 0:
            self._loop.add_reader(self.listener.fileno(), self._accept)

    def _triage(self, sock: socket.socket) -> None:
        try:
            head = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        if not head:  # closed before sending anything (or reset): nothing to serve
            self._pending.discard(sock)
            self._loop.remove_reader(sock.fileno())
            sock.close()
            return
        probe = probe_of(head)
        if probe is None:
            self._release(sock)  # not a whole probe (or closed): the serving loop's HTTP server reads it
            return
        self._loop.remove_reader(sock.fileno())
        self._pending.discard(sock)
        ok = self.health.live if probe == "live" else self.health.ready
        try:
            sock.recv(len(head))  # consume the request, so that closing sends FIN, not RST
            sock.send(ANSWERS[ok])
        except OSError:
            pass
        finally:
            sock.close()
        self.answered += 1

    def _release(self, sock: socket.socket) -> None:
        if sock not in self._pending:
            return
        self._pending.discard(sock)
        self._loop.remove_reader(sock.fileno())
        try:
            self.hand_over(sock)
        except Exception:  # the serving loop is closing: nothing will serve it
            sock.close()
