"""uvicorn logs a warning for every malformed request a client sends ("Invalid HTTP request received.",
upgrade requests it does not serve): any client could flood the log with them. This lets one such line
through per interval, saying how many were left out; the gRPC front end logs none of its own
(:mod:`.grpc_handlers`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

UVICORN_LOGGER = "uvicorn.error"
CLIENT_CAUSED = (  # the start of each warning uvicorn logs for what a client sent
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
    "Invalid HTTP/2 frame received",
)
INTERVAL_SECONDS = 60.0


class ClientNoiseFilter(logging.Filter):
    """At most one client-caused warning per ``interval`` seconds; the others are counted, and the next
    line that passes says how many there were."""

    def __init__(self, interval: float = INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(CLIENT_CAUSED):
            return True
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                self._left_out += 1
                return False
            self._last, left_out, self._left_out = now, self._left_out, 0
        if left_out:
            record.msg = f"{record.getMessage()} ({left_out} more client errors left out of the log)"
            record.args = None
        return True


def quiet_client_noise(logger_name: str = UVICORN_LOGGER) -> None:
    """Install :class:`ClientNoiseFilter` on uvicorn's logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, ClientNoiseFilter) for f in logger.filters):
        logger.addFilter(ClientNoiseFilter())
