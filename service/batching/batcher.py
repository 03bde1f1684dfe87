"""Triton-style dynamic batching: one bounded queue per model version, one asyncio task per instance.

The one way in is :meth:`DynamicBatcher.submit`. A model version has one bounded queue shared by its
instances. Each instance's task takes the next batch
when it is free, so requests that arrive while every instance computes are batched together even with
``max_queue_delay`` 0. Inference runs in a thread per instance (onnxruntime, TensorRT and torch release
the GIL), so the event loop keeps accepting requests while a batch computes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

import numpy as np

from service.batching.policy import BatchPolicy, concat_rows, plan_batch, split_rows
from service.errors import BackendError, DeadlineExceeded, Overloaded, Unavailable

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]
# seconds: the event loop's timers fire on whole milliseconds (uvloop: a wait of 1.5 ms ends after ~2.1),
# so a queue delay's timer is set this much before its end and the rest is waited in sleeps
TIMER_MARGIN = 0.002
SLEEP_SLICE = 20e-6  # seconds: one sleep in the last stretch of a queue delay
SLEEP_OVERRUN = 30e-6  # seconds: how much longer such a sleep may take (slack tightened)
PR_SET_TIMERSLACK, TIMER_SLACK_NS = 29, 1000  # Linux's default slack (50 µs) would dwarf the slice


def tighten_timer_slack() -> None:
    """Let the calling thread's sleeps end within about a microsecond of their time (Linux; elsewhere a
    no-op): the event loop's thread waits out queue delays in sleeps of SLEEP_SLICE."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # a libc without prctl
            ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)


class PendingRequest:
    """One queued request: its rows, its future, and its timing."""

    __slots__ = ("data", "deadline", "enqueued", "future", "queued", "rows", "started", "timer")

    def __init__(
        self, data: np.ndarray, future: asyncio.Future | None, enqueued: float, deadline: float | None
    ):
        self.data = data
        self.rows = int(data.shape[0])
        self.future = future
        self.enqueued = enqueued
        self.deadline = deadline
        self.started = enqueued
        self.queued = True
        self.timer: asyncio.TimerHandle | None = None


class BatchTiming(NamedTuple):
    """Seconds spent on one batch: gathering inputs, the backend call, splitting outputs."""

    rows: int
    started: float  # time.monotonic() when the batch left the queue
    input_s: float
    infer_s: float
    output_s: float


class BatchObserver(Protocol):
    def batch_done(self, requests: Sequence[PendingRequest], timing: BatchTiming) -> None: ...

    def batch_failed(self, requests: Sequence[PendingRequest]) -> None: ...


class _NullObserver:
    def batch_done(self, requests: Sequence[PendingRequest], timing: BatchTiming) -> None:
        pass

    def batch_failed(self, requests: Sequence[PendingRequest]) -> None:
        pass


def _compute(infer: InferFn, arrays: list[np.ndarray], rows: list[int]) -> tuple[list[np.ndarray], tuple]:
    t0 = time.monotonic()
    batch = concat_rows(arrays)
    t1 = time.monotonic()
    output = infer(batch)
    t2 = time.monotonic()
    parts = split_rows(output, rows)
    return parts, (t1 - t0, t2 - t1, time.monotonic() - t2)


class DynamicBatcher:
    """The queue of one model version and one scheduling task per instance.

    ``start()`` must run inside the event loop that will call :meth:`submit`.
    """

    def __init__(
        self,
        name: str,
        instances: Sequence[InferFn],
        policy: BatchPolicy,
        observer: BatchObserver | None = None,
        inline: bool = False,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        self.name = name
        self.policy = policy
        self._instances = list(instances)
        # inline: run batches on the event loop itself. Worth it only for a single instance whose batches take
        # well under a millisecond, where the two thread hops per batch would cost more than the compute.
        self.inline = inline and len(self._instances) == 1
        self._direct = self.inline and (policy.max_queue_delay == 0 or not policy.dynamic)
        self._observer = observer or _NullObserver()
        self._queue: collections.deque[PendingRequest] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._closing = False
        self._failure: BaseException | None = None
        self._waiter: asyncio.Task | None = None  # the task waiting out the last stretch of a delay

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tighten_timer_slack()
        self._arrived = asyncio.Event()
        for i, infer in enumerate(self._instances):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-instance{i}")
            self._executors.append(executor)
            task = self._loop.create_task(
                self._run_instance(infer, executor), name=f"batcher {self.name} #{i}"
            )
            self._tasks.append(task)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, run what is queued (up to ``timeout`` seconds), then stop."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(Unavailable(f"model {self.name} was unloaded before this request ran"))
        for executor in self._executors:
            executor.shutdown(wait=False)

    # ------------------------------------------------------------- requests

    def _admit(self, data: np.ndarray, deadline: float | None) -> float:
        """Reject a request whose deadline already passed; returns now. (Its rows are at most
        max_batch_size: the data plane checks them where it reads the request.)"""
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"deadline passed before model {self.name} could queue the request")
        return now

    def check_room(self) -> None:
        """Raise Overloaded when the queue is full (a cheap check before a request's expensive work)."""
        if len(self._queue) >= self.policy.max_queue_size:
            waiting = self.policy.max_queue_size
            raise Overloaded(f"model {self.name} queue is full ({waiting} requests waiting); retry later")

    async def submit(self, data: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """The backend's N output rows for ``data`` (N rows), computed in a batch the policy allows.

        An inline instance (see ``inline``) that is idle with nothing queued, under a policy that would not
        wait for company (delay 0, or no dynamic batching), is exactly where Triton's scheduler runs the
        request alone at once. Such a request is computed right here, without suspending: no future and
        no task switch, which for a microsecond model is most of the work.
        """
        if self._closing or self._loop is None:
            raise Unavailable(f"model {self.name} is not accepting requests (unloading)")
        if self._failure is not None:
            raise Unavailable(f"model {self.name} stopped serving after an internal error: {self._failure}")
        now = self._admit(data, deadline)
        if self._direct and not self._queue:
            return self._run_now(PendingRequest(data, None, now, deadline))
        self.check_room()
        request = PendingRequest(data, self._loop.create_future(), now, deadline)
        self._queue.append(request)
        self._arrived.set()
        if deadline is not None:
            request.timer = self._loop.call_at(deadline, self._expire, request)
        try:
            return await request.future
        finally:
            if request.timer is not None:
                request.timer.cancel()
            if request.queued:  # cancelled while waiting (client gone): leave the queue
                request.queued = False
                self._queue.remove(request)

    def _run_now(self, request: PendingRequest) -> np.ndarray:
        """One request as a batch of its own, on this thread (no concatenation, no split)."""
        rows = request.rows
        try:
            output = self._instances[0](request.data)
            infer_s = time.monotonic() - request.started
            if output.ndim == 0 or output.shape[0] != rows:
                split_rows(output, (rows,))  # raises, naming what the backend returned
        except Exception as e:
            log.warning("model %s failed on a batch of %d rows: %s", self.name, rows, e)
            self._observer.batch_failed([request])
            raise BackendError(f"model {self.name} failed on a batch of {rows} rows: {e}") from None
        self._observer.batch_done((request,), BatchTiming(rows, request.started, 0.0, infer_s, 0.0))
        return output

    def _expire(self, request: PendingRequest) -> None:
        if not request.queued:
            return
        request.queued = False
        self._queue.remove(request)
        waited_ms = (time.monotonic() - request.enqueued) * 1e3
        if not request.future.done():
            request.future.set_exception(
                DeadlineExceeded(
                    f"request to model {self.name} waited {waited_ms:.1f} ms in the queue and "
                    "passed its deadline before it could run"
                )
            )

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            request = self._queue.popleft()
            request.queued = False
            if not request.future.done():
                request.future.set_exception(error)

    # ------------------------------------------------------------ scheduling

    async def _next_batch(self) -> list[PendingRequest] | None:
        """Wait for the next batch the policy allows; None once closing with an empty queue."""
        while True:
            while self._queue and self._queue[0].future.done():  # cancelled; its finally removes it too
                self._queue.popleft().queued = False
            timeout = None
            if self._queue:
                now = time.monotonic()
                due = self._queue[0].enqueued + self.policy.max_queue_delay
                rows, other_kind_waits = self._head_rows()
                count = plan_batch(rows, self.policy, self._closing or now >= due or other_kind_waits)
                if count:
                    if self._waiter is asyncio.current_task():
                        self._waiter = None
                        if len(self._queue) > count:  # the rest: another idle instance waits it out
                            self._arrived.set()
                    batch = []
                    for _ in range(count):
                        request = self._queue.popleft()
                        request.queued = False
                        request.started = now
                        batch.append(request)
                    return batch
                timeout = due - now
            elif self._closing:
                return None
            self._arrived.clear()
            if timeout is None:
                if self._waiter is asyncio.current_task():  # what it waited for left the queue
                    self._waiter = None
                await self._arrived.wait()
            elif timeout > TIMER_MARGIN:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout - TIMER_MARGIN)
            elif self._waiter is not None and self._waiter is not asyncio.current_task():
                await self._arrived.wait()  # another instance's task waits out this stretch
            else:
                # One task per batcher does this: each sleep holds up the whole event loop.
                self._waiter = asyncio.current_task()
                # The last stretch of a queue delay (see TIMER_MARGIN) is waited here, turning the loop
                # between short sleeps, so that a delay of D µs costs D, not D + 1 ms. The sleeps release
                # the GIL: a loop that only yielded would hold it, and grpc.aio's poller thread, which
                # moves the queued request's RPC along, would wait.
                time.sleep(SLEEP_SLICE if timeout > SLEEP_SLICE + SLEEP_OVERRUN else 0)
                await asyncio.sleep(0)

    def _head_rows(self) -> tuple[list[int], bool]:
        """Row counts of the requests at the head of the queue that can share a batch (same dtype: FP32
        tensors and UINT8 pixels never mix), and whether a request of the other kind waits behind them."""
        queue = self._queue
        dtype = queue[0].data.dtype
        rows = []
        for request in queue:
            if request.data.dtype != dtype:
                return rows, True
            rows.append(request.rows)
            if len(rows) > self.policy.max_batch_size:  # no batch takes more requests than rows
                break
        return rows, False

    async def _run_instance(self, infer: InferFn, executor: ThreadPoolExecutor) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                await self._run_batch(infer, executor, batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in scheduling: fail everything waiting rather than hang it
            log.exception("batcher for model %s crashed", self.name)
            self._failure = e
            self._fail_queued(Unavailable(f"model {self.name} stopped serving after an internal error: {e}"))

    async def _run_batch(
        self, infer: InferFn, executor: ThreadPoolExecutor, batch: list[PendingRequest]
    ) -> None:
        live = [r for r in batch if not r.future.done()]
        if not live:
            return
        rows = [r.rows for r in live]
        started = live[0].started
        try:
            arrays = [r.data for r in live]
            if self.inline:
                parts, (input_s, infer_s, output_s) = _compute(infer, arrays, rows)
            else:
                parts, (input_s, infer_s, output_s) = await self._loop.run_in_executor(
                    executor, _compute, infer, arrays, rows
                )
        except asyncio.CancelledError:  # close() ran out of time: these requests get an answer too
            error = Unavailable(f"model {self.name} was unloaded while this request was computing")
            for request in live:
                if not request.future.done():
                    request.future.set_exception(error)
            raise
        except Exception as e:
            log.warning("model %s failed on a batch of %d rows: %s", self.name, sum(rows), e)
            error = BackendError(f"model {self.name} failed on a batch of {sum(rows)} rows: {e}")
            for request in live:
                if not request.future.done():
                    request.future.set_exception(error)
            self._observer.batch_failed(live)
            return
        for request, part in zip(live, parts, strict=True):
            if not request.future.done():
                request.future.set_result(part)
        self._observer.batch_done(live, BatchTiming(sum(rows), started, input_s, infer_s, output_s))
