"""Waiting on a condition that has no event to wait on (a server-side state, a file, a port)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, period: float = 0.02) -> T:
    """Call ``condition`` every ``period`` s until it returns something truthy, and return that; after
    ``timeout`` s fail the test, naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last seen: {value!r})")
        time.sleep(period)
