"""Closed loop: a fixed number of clients, each sending its next request as soon as the last one returns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loadtest.recorder import WindowRecorder, clock

# Sends one prepared request with a deadline; answers (status name, server message), "OK" on success.
Send = Callable[[object, float], Awaitable[tuple[str, str]]]


async def run_closed_loop(
    send: Send,
    payloads: tuple,
    concurrency: int,
    recorder: WindowRecorder,
    stop: asyncio.Event,
    start_at: float,
    stop_at: float,
    timeout_s: float,
) -> None:
    """Run `concurrency` clients from `start_at` until `stop` is set or `stop_at`; in-flight calls finish."""

    async def client(first: int) -> None:
        turn = first
        while not stop.is_set():
            sent = clock()
            if sent >= stop_at:
                return
            index = recorder.begin(sent)
            code, details = await send(payloads[turn % len(payloads)], timeout_s)
            recorder.finish(index, sent, sent, clock(), code, details)
            turn += concurrency

    async def close_windows() -> None:
        # Requests are placed by their send time, so a window is closed once its end has passed.
        index = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, recorder.window_end(index) - clock()))
            recorder.close_before(clock())
            index += 1

    await asyncio.sleep(max(0.0, start_at - clock()))
    closer = asyncio.create_task(close_windows())
    try:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    finally:
        closer.cancel()
    recorder.close_all()
