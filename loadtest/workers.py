"""Load-generating workers: one asyncio loop and one connection to the target each (a grpc.aio channel or
an aiohttp session), in a thread or a spawned process.

The parent sends each worker a ``StepCommand`` (its share of the concurrency or rate and a common start
time on the host-wide monotonic clock, so all workers' windows line up), later a ``StopStep``, and
finally ``None``. Workers answer ``Ready`` once connected, a ``WindowReport`` per completed window (raw
latency arrays, merged exactly by the parent), ``StepDone`` with their totals, or ``WorkerFailed``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.closed_loop import Send, run_closed_loop
from loadtest.open_loop import run_open_loop
from loadtest.options import CLOSED_LOOP, TargetError
from loadtest.recorder import Totals, WindowData, WindowRecorder, clock
from loadtest.target import Connection, open_sender

RESULT_QUEUE_SIZE = 4096
COMMAND_QUEUE_SIZE = 16
SPAWN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StepCommand:
    step: int
    mode: str
    level: float  # this worker's concurrency, or its request rate
    start_at: float
    warmup_s: float
    window_s: float
    stop_at: float  # a safety bound; the parent normally stops the step earlier
    timeout_s: float
    max_inflight: int
    seed: int


@dataclass(frozen=True)
class StopStep:
    step: int


@dataclass(frozen=True)
class Ready:
    worker: int


@dataclass(frozen=True)
class WindowReport:
    worker: int
    step: int
    window: WindowData


@dataclass(frozen=True)
class StepDone:
    worker: int
    step: int
    totals: Totals


@dataclass(frozen=True)
class WorkerFailed:
    worker: int
    message: str


async def _run_step(send: Send, requests, command: StepCommand, stop, results, worker: int):
    try:
        await _drive(send, requests, command, stop, results, worker)
    except Exception:
        results.put(
            WorkerFailed(worker, f"worker {worker} failed in step {command.step}:\n{traceback.format_exc()}")
        )


async def _drive(send: Send, requests, command: StepCommand, stop, results, worker: int):
    recorder = WindowRecorder(
        command.start_at + command.warmup_s,
        command.window_s,
        lambda window: results.put(WindowReport(worker, command.step, window)),
    )
    cpu_start, wall_start = time.process_time(), clock()
    if command.mode == CLOSED_LOOP:
        await run_closed_loop(
            send,
            requests,
            int(command.level),
            recorder,
            stop,
            command.start_at,
            command.stop_at,
            command.timeout_s,
        )
    else:
        await run_open_loop(
            send,
            requests,
            command.level,
            recorder,
            stop,
            command.start_at,
            command.stop_at,
            command.timeout_s,
            command.max_inflight,
            command.seed,
        )
    recorder.totals.cpu_s = time.process_time() - cpu_start
    recorder.totals.wall_s = clock() - max(wall_start, command.start_at)
    results.put(StepDone(worker, command.step, recorder.totals))


async def _serve(worker: int, connection: Connection, requests, commands, results) -> None:
    try:
        async with open_sender(connection) as sender:
            results.put(Ready(worker))
            await _obey(sender.send, requests, commands, results, worker)
    except TargetError as error:  # only opening raises it: step failures are reported by _run_step
        results.put(WorkerFailed(worker, f"worker {worker}: {error}"))


async def _obey(send: Send, requests, commands, results, worker: int) -> None:
    """Run each step the parent commands until it sends None."""
    loop = asyncio.get_running_loop()
    step_task: asyncio.Task | None = None
    step = -1
    stop = asyncio.Event()
    while True:
        command = await loop.run_in_executor(None, commands.get)
        if command is None:
            break
        if isinstance(command, StopStep):
            if command.step == step:
                stop.set()
            continue
        if step_task is not None:
            await step_task
        step, stop = command.step, asyncio.Event()
        step_task = asyncio.create_task(_run_step(send, requests, command, stop, results, worker))
    if step_task is not None:
        stop.set()
        await step_task


def worker_main(worker: int, connection: Connection, requests, commands, results) -> None:
    """Entry point of a worker thread or process."""
    try:
        asyncio.run(_serve(worker, connection, requests, commands, results))
    except Exception:
        results.put(WorkerFailed(worker, f"worker {worker} crashed:\n{traceback.format_exc()}"))


def worker_process_main(worker: int, connection: Connection, requests, commands, results) -> None:
    """Entry point of a worker process: Ctrl-C is the parent's to handle (it stops the step and closes us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_main(worker, connection, requests, commands, results)


def split_level(mode: str, level: float, workers: int) -> list[float]:
    """Each worker's share: concurrency as whole clients (no idle workers), a rate evenly."""
    if mode == CLOSED_LOOP:
        active = min(workers, int(level))
        base, extra = divmod(int(level), active)
        return [base + (1 if i < extra else 0) for i in range(active)]
    return [level / workers] * workers


class WorkerPool:
    """`n` workers: with n == 1 a thread of this process, otherwise spawned processes."""

    def __init__(self, n: int, connection: Connection, requests: tuple) -> None:
        self.n = n
        if n == 1:
            self.results = queue.Queue(RESULT_QUEUE_SIZE)
            self.commands = [queue.Queue(COMMAND_QUEUE_SIZE)]
            self.runners = [
                threading.Thread(
                    target=worker_main,
                    args=(0, connection, requests, self.commands[0], self.results),
                    name="loadtest-worker-0",
                    daemon=True,
                )
            ]
        else:
            context = multiprocessing.get_context("spawn")
            self.results = context.Queue(RESULT_QUEUE_SIZE)
            self.commands = [context.Queue(COMMAND_QUEUE_SIZE) for _ in range(n)]
            self.runners = [
                context.Process(
                    target=worker_process_main,
                    args=(i, connection, requests, self.commands[i], self.results),
                    name=f"loadtest-worker-{i}",
                    daemon=True,
                )
                for i in range(n)
            ]
        self.connect_timeout_s = connection.connect_timeout_s

    def start(self) -> None:
        for runner in self.runners:
            runner.start()
        ready = 0
        while ready < self.n:
            message = self._next(SPAWN_TIMEOUT_S + self.connect_timeout_s, "starting workers")
            if isinstance(message, WorkerFailed):
                raise TargetError(message.message)
            ready += isinstance(message, Ready)

    def _next(self, timeout_s: float, doing: str):
        try:
            return self.results.get(timeout=timeout_s)
        except queue.Empty:
            raise TargetError(f"workers sent nothing for {timeout_s:g} s while {doing}") from None

    def run_step(
        self, shares: list[float], template: StepCommand, on_window: Callable[[int, list[WindowData]], bool]
    ) -> list[Totals]:
        """Run one step on len(shares) workers; `on_window(index, parts)` sees each merged window in order
        and returns True to stop the step. Returns each active worker's totals."""
        active = len(shares)
        for i, share in enumerate(shares):
            command = StepCommand(**{**template.__dict__, "level": share, "seed": template.seed * 1000 + i})
            self.commands[i].put(command)
        pending: dict[int, list[WindowData]] = {}
        next_window = 0
        stopped = False
        totals: dict[int, Totals] = {}
        while len(totals) < active:
            timeout = max(1.0, template.stop_at - clock()) + template.timeout_s + 5.0
            message = self._next(timeout, f"running step {template.step}")
            if isinstance(message, WorkerFailed):
                self._stop(active, template.step)
                raise TargetError(message.message)
            if isinstance(message, StepDone):
                totals[message.worker] = message.totals
                continue
            if stopped or not isinstance(message, WindowReport):
                continue
            pending.setdefault(message.window.index, []).append(message.window)
            while len(pending.get(next_window, ())) == active and not stopped:
                if on_window(next_window, pending.pop(next_window)):
                    stopped = True
                    self._stop(active, template.step)
                next_window += 1
        return [totals[i] for i in range(active)]

    def _stop(self, active: int, step: int) -> None:
        for i in range(active):
            self.commands[i].put(StopStep(step))

    def close(self) -> None:
        for command_queue in self.commands:
            command_queue.put(None)
        for runner in self.runners:
            runner.join(timeout=10.0)
            if isinstance(runner, multiprocessing.process.BaseProcess) and runner.is_alive():
                runner.terminate()
                runner.join(timeout=5.0)
