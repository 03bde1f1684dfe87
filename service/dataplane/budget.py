"""One budget of request bytes in flight (--max-inflight-bytes): what requests hold in memory before and
while they are served, counted before the memory is taken.

HTTP bodies reserve their Content-Length before they are read (chunked bodies as their chunks arrive),
decompressed bodies their inflated size, and every inference request its checked tensors (for images:
their decoded rows); each is released when its request ends. A request that would pass the budget is
refused at once (:class:`BudgetFull`, RESOURCE_EXHAUSTED / 429 with Retry-After), unread."""

from __future__ import annotations

from service.errors import Overloaded

RETRY_AFTER_SECONDS = 1  # what a refused client is told to wait (the budget frees as requests end)


class BudgetFull(Overloaded):
    """The bytes a request needs would take the server past --max-inflight-bytes."""

    retry_after = RETRY_AFTER_SECONDS


class ByteBudget:
    """Bytes reserved by the requests in flight, at most ``limit``; used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reserve(self, nbytes: int, what: str = "the request's") -> int:
        """Reserve ``nbytes``; returns them (what the caller releases), or raises :class:`BudgetFull`."""
        if self.held + nbytes > self.limit:
            raise BudgetFull(
                f"{what} {nbytes} bytes would take the bytes held by requests in flight past the server's "
                f"limit of {self.limit} bytes (--max-inflight-bytes); retry later or elsewhere"
            )
        self.held += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        self.held -= nbytes
