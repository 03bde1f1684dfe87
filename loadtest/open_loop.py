"""Open loop: requests at a fixed mean rate with Poisson arrivals, whatever the server does.

Each request's latency runs from its *scheduled* send time. When the client or the server falls behind
(the event loop is late, or ``max_inflight`` requests are already outstanding), requests go out late and
that lag is part of their latency and reported as lateness: coordinated omission cannot hide slowness.
"""

from __future__ import annotations

import asyncio

import numpy as np

from loadtest.closed_loop import Send
from loadtest.recorder import WindowRecorder, clock


async def run_open_loop(
    send: Send,
    payloads: tuple,
    rate: float,
    recorder: WindowRecorder,
    stop: asyncio.Event,
    start_at: float,
    stop_at: float,
    timeout_s: float,
    max_inflight: int,
    seed: int,
) -> None:
    """Send at `rate` requests/s from `start_at` until `stop` is set or `stop_at`; in-flight calls finish."""
    rng = np.random.default_rng(seed)
    slots = asyncio.Semaphore(max_inflight)
    inflight: set[asyncio.Task] = set()

    async def send_scheduled(payload, scheduled: float, index: int) -> None:
        try:
            sent = clock()
            code, details = await send(payload, timeout_s)
            recorder.finish(index, scheduled, sent, clock(), code, details)
        finally:
            slots.release()

    scheduled = start_at
    turn = 0
    # Gaps drawn in blocks: one numpy call per 1024 requests instead of one per request.
    gaps = iter(())
    while True:
        gap = next(gaps, None)
        if gap is None:
            gaps = iter(rng.exponential(1.0 / rate, 1024).tolist())
            continue
        scheduled += gap
        if scheduled >= stop_at:
            break
        recorder.close_before(scheduled)
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop.is_set():
            break
        await slots.acquire()
        index = recorder.begin(scheduled)
        task = asyncio.create_task(send_scheduled(payloads[turn % len(payloads)], scheduled, index))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        turn += 1
    if inflight:
        await asyncio.wait(inflight)
    recorder.close_all()
