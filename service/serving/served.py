"""One loaded model version as it serves: its backends behind one dynamic batcher, and its telemetry."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from modelrepo.manifest import Manifest
from modelrepo.reader import Fingerprint, ModelIO
from protos import model_config_pb2 as mc
from service.backends import ArtifactChoice, Backend
from service.batching import BatchPolicy, DynamicBatcher
from service.telemetry.stats import VersionTelemetry

# (encoded images, the model's input spec, the backend's image decoder) -> the model's input rows
Decode = Callable[[list[bytes], Any, Any], Awaitable[np.ndarray]]

log = logging.getLogger(__name__)


class InflightCounter:
    """Requests in flight and a way to wait until there are none. A request costs two integer updates;
    the future :meth:`wait_idle` awaits exists only while someone waits (a drain or a retirement)."""

    __slots__ = ("_waiters", "count")

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future] = []

    def enter(self) -> None:
        self.count += 1

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0 and self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if ``timeout`` seconds pass first."""
        if self.count == 0:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


def close_backends(backends: list[Backend]) -> None:
    for backend in backends:
        try:
            backend.close()
        except Exception as e:
            log.warning("closing %s failed: %s", backend.describe(), e)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):  # another C library: nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed memory back to the OS; called once the retired versions are dropped. glibc keeps freed
    blocks in its per-thread arenas, and the next load (in another thread) does not reuse all of them:
    without this, resnet18's RSS after an unload crept from 180 to 700 MB over 50 unload/load cycles."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ServedVersion:
    """One loaded model version: its backends behind one dynamic batcher, and its telemetry."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        config: mc.ModelConfig,
        manifest: Manifest,
        choice: ArtifactChoice,
        backends: list[Backend],
        policy: BatchPolicy,
        io: ModelIO,
        telemetry: VersionTelemetry,
        load_seconds: float,
        fingerprint: tuple[Fingerprint, Fingerprint],
        inline: bool = False,
    ) -> None:
        self.name, self.version, self.version_str = name, version, str(version)
        self.config, self.manifest, self.choice, self.io = config, manifest, choice, io
        self.backends = backends
        self.backend_kind = backends[0].kind
        self.precision = choice.precision
        self.telemetry = telemetry
        self.load_seconds = load_seconds
        self.fingerprint = fingerprint
        self.batcher = DynamicBatcher(
            f"{name}/{version}", [b.run for b in backends], policy, telemetry, inline=inline
        )
        self.inflight = InflightCounter()

    async def infer(self, rows, deadline: float | None, decode: Decode | None = None) -> np.ndarray:
        """The logits for a checked request's rows (at most max_batch_size of them: the data plane's
        inputs check them where it reads them). Encoded images are decoded with ``decode`` (the data
        plane's pool) for this version's input and backend; the queue's room is checked before that
        work too (the batcher checks it again when the request joins the queue, which may have filled
        meanwhile)."""
        if decode is not None:
            self.batcher.check_room()
            rows = await decode(rows, self.io.input_spec, self.backends[0].image_decoder())
        return await self.batcher.submit(rows, deadline)

    def start(self) -> None:
        self.batcher.start()
        self.telemetry.attach(self, self.load_seconds, self._queue_depth, self._inflight)

    def _queue_depth(self) -> int:
        return self.batcher.queue_depth

    def _inflight(self) -> int:
        return self.inflight.count

    async def retire(self, timeout: float) -> None:
        """Unload once in-flight requests are answered (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        if not await self.inflight.wait_idle(timeout):
            log.warning(
                "%s version %d: %d request(s) still in flight after %.1fs; unloading anyway",
                self.name,
                self.version,
                self.inflight.count,
                timeout,
            )
        await self.batcher.close(timeout=max(0.0, deadline - time.monotonic()))
        self.telemetry.detach(self)
        await asyncio.to_thread(close_backends, self.backends)
        log.info("unloaded %s version %d", self.name, self.version)
