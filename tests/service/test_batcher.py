"""The dynamic batcher: pure batch planning with plain data, then the scheduler with plain functions."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import BatchPolicy, DynamicBatcher
from service.batching import batcher as batcher_module
from service.batching.batcher import TIMER_SLACK_NS
from service.batching.policy import concat_rows, plan_batch, split_rows
from service.errors import BackendError, DeadlineExceeded, Overloaded, Unavailable

# ----------------------------------------------------------------------------------- plan_batch (pure)


def policy(max_batch_size=8, preferred=(), delay=0.0, **kw) -> BatchPolicy:
    return BatchPolicy(max_batch_size, tuple(preferred), delay, **kw)


@pytest.mark.parametrize(
    ("rows", "pol", "expired", "expected"),
    [
        ([], policy(), False, 0),  # nothing queued
        ([1, 1, 1], policy(), False, 3),  # delay 0: whatever is queued goes at once
        ([1] * 12, policy(), False, 8),  # never more than max_batch_size rows
        ([3, 3, 3], policy(), False, 2),  # requests are never split: 6 rows, the third waits
        ([5, 4], policy(), False, 1),  # the second would overflow: batch is full at 5
        ([8, 1], policy(), False, 1),
        ([1, 1], policy(delay=0.01), False, 0),  # with a delay, a batch that can still grow waits...
        ([1, 1], policy(delay=0.01), True, 2),  # ...until the oldest request's delay has passed
        ([1] * 8, policy(delay=0.01), False, 8),  # a full batch goes without waiting
        ([4, 4, 4], policy(delay=0.01), False, 2),  # full: the next request cannot join
        ([1] * 5, policy(preferred=[4]), False, 4),  # the preferred size goes at once
        ([1] * 5, policy(preferred=[2, 4], delay=0.01), False, 4),  # the largest preferred that fits
        ([1] * 3, policy(preferred=[2, 4], delay=0.01), False, 2),  # a preferred size can be formed now
        ([3], policy(preferred=[2, 4], delay=0.01), False, 0),  # no preferred size yet: wait for the delay
        ([3], policy(preferred=[2, 4], delay=0.01), True, 1),
        ([3, 3], policy(preferred=[4], delay=0.01), False, 2),  # past the largest preferred: full
        ([1, 1, 1], policy(dynamic=False), False, 1),  # no dynamic batching: one request per batch
    ],
)
def test_plan_batch(rows, pol, expired, expected):
    assert plan_batch(rows, pol, expired) == expected


def test_plan_batch_reads_only_what_it_needs():
    consumed = []

    def rows():
        for r in [1] * 1000:
            consumed.append(r)
            yield r

    assert plan_batch(rows(), policy(max_batch_size=4), False) == 4
    assert len(consumed) <= 5


def test_policy_validation():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(0)
    with pytest.raises(ValueError, match="preferred_batch_size"):
        BatchPolicy(4, (8,))
    with pytest.raises(ValueError, match="max_queue_size"):
        BatchPolicy(4, max_queue_size=0)


def test_concat_and_split_rows():
    a, b, c = np.arange(2 * 3).reshape(2, 3), np.arange(3).reshape(1, 3) + 100, np.zeros((3, 3))
    assert concat_rows([a]) is a
    batch = concat_rows([a, b, c])
    assert batch.shape == (6, 3)
    parts = split_rows(batch * 2, [2, 1, 3])
    assert [p.shape[0] for p in parts] == [2, 1, 3]
    np.testing.assert_array_equal(parts[1], b * 2)
    with pytest.raises(ValueError, match="returned 5 rows for a batch of 6"):
        split_rows(batch[:5], [2, 1, 3])
    with pytest.raises(ValueError, match="scalar"):
        split_rows(np.float32(1.0), [1])


# ------------------------------------------------------------------------------ the scheduler (async)


class Recorder:
    """An instance that records the batch sizes it ran and returns rows * 10."""

    def __init__(self, delay: float = 0.0, fail_when=None) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.fail_when = fail_when
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("backend exploded")
        return batch * 10


def rows(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.float32)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_requests_arriving_while_busy_are_batched_and_answered_in_order():
    async def main():
        instance = Recorder(delay=0.05)
        batcher = DynamicBatcher("m", [instance], policy(max_batch_size=8))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        await asyncio.sleep(0.01)  # the first batch is computing now
        rest = [asyncio.ensure_future(batcher.submit(rows(1, i))) for i in range(1, 6)]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return instance.batches, results

    batches, results = run(main())
    assert batches == [1, 5]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, rows(1, i) * 10)


def test_tensors_and_pixels_never_share_a_batch():
    async def main():
        instance = Recorder(delay=0.05)
        batcher = DynamicBatcher("m", [instance], policy(max_batch_size=8))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        await asyncio.sleep(0.01)  # computing: the next ones queue
        kinds = [rows(1, 1), rows(1, 2), np.full((1, 2), 3, np.uint8), rows(1, 4)]
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in kinds]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return instance.batches, results

    batches, results = run(main())
    assert batches == [1, 2, 1, 1]  # FIFO, and a batch never mixes dtypes
    assert results[3].dtype == np.uint8 and results[3][0, 0] == 30


def test_max_queue_delay_gathers_a_batch_and_n_row_requests_count_as_n():
    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(max_batch_size=8, delay=0.2))
        batcher.start()
        started = time.monotonic()
        outs = await asyncio.gather(batcher.submit(rows(3)), batcher.submit(rows(2)), batcher.submit(rows(1)))
        waited = time.monotonic() - started
        full = await asyncio.gather(batcher.submit(rows(4)), batcher.submit(rows(4)))  # 8 rows: no waiting
        await batcher.close()
        return instance.batches, [o.shape[0] for o in outs], waited, full

    batches, sizes, waited, full = run(main())
    assert batches == [6, 8]
    assert sizes == [3, 2, 1]
    assert waited >= 0.19
    assert [f.shape[0] for f in full] == [4, 4]


def test_the_last_stretch_of_a_delay_keeps_the_loop_turning(monkeypatch):
    """The last stretch of a delay (here all of it) is waited in short sleeps between turns of the loop:
    other coroutines keep running, a request arriving meanwhile joins the batch, and the loop thread's
    timer slack is tightened (Linux). One blocking sleep would give the loop a turn or two and two batches."""
    monkeypatch.setattr(batcher_module, "TIMER_MARGIN", 0.05)

    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(max_batch_size=8, delay=0.04))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        for _ in range(5):
            await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.submit(rows(1, 1)))
        turns = 0
        while not first.done():
            turns += 1
            await asyncio.sleep(0)
        await batcher.close()
        return instance.batches, await second, turns, _timer_slack_ns()

    batches, second, turns, slack = run(main())
    assert batches == [2]
    np.testing.assert_array_equal(second, rows(1, 1) * 10)
    assert turns >= 10, turns  # 40 ms in slices of tens of µs: hundreds of turns
    if slack is not None:
        assert slack == TIMER_SLACK_NS


def test_one_instance_waits_out_a_delay_and_hands_the_rest_on(monkeypatch):
    """Two instances, a full batch and a leftover: the full batch goes at once, the leftover waits its
    delay (one task sleeps; the other waits for news) and is answered."""
    monkeypatch.setattr(batcher_module, "TIMER_MARGIN", 0.05)

    async def main():
        instance = Recorder(delay=0.001)
        batcher = DynamicBatcher("m", [instance, instance], policy(max_batch_size=2, delay=0.03))
        batcher.start()
        outs = await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(3)))
        later = await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(3, 6)))
        await batcher.close()
        return sorted(instance.batches), outs + later

    batches, outs = run(main())
    assert batches == [1, 1, 2, 2]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, rows(1, i) * 10)


def _timer_slack_ns() -> int | None:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None).prctl(30, 0, 0, 0, 0)  # PR_GET_TIMERSLACK


def test_bounded_queue_rejects_with_overloaded():
    async def main():
        batcher = DynamicBatcher("m", [Recorder()], policy(delay=5.0, max_queue_size=2))
        batcher.start()
        queued = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(rows(1))
        await batcher.close()  # closing flushes the queue: the two queued requests still run
        return await asyncio.gather(*queued)

    assert [r.shape for r in run(main())] == [(1, 2), (1, 2)]


def test_expired_deadline_fails_without_computing():
    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(delay=1.0))
        batcher.start()
        with pytest.raises(DeadlineExceeded, match="before model m could queue"):
            await batcher.submit(rows(1), deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded, match=r"waited .* ms in the queue"):
            await batcher.submit(rows(1), deadline=time.monotonic() + 0.05)
        depth = batcher.queue_depth
        await batcher.close()
        return instance.batches, depth

    batches, depth = run(main())
    assert batches == []
    assert depth == 0


def test_a_failing_batch_fails_only_its_requests():
    async def main():
        instance = Recorder(delay=0.05, fail_when=lambda b: (b < 0).any())
        batcher = DynamicBatcher("m", [instance], policy())
        batcher.start()
        bad = asyncio.ensure_future(batcher.submit(rows(1, -1)))
        await asyncio.sleep(0.01)
        good = [asyncio.ensure_future(batcher.submit(rows(1, 2))) for _ in range(3)]
        with pytest.raises(BackendError, match="failed on a batch of 1 rows: backend exploded"):
            await bad
        results = await asyncio.gather(*good)
        await batcher.close()
        return instance.batches, results

    batches, results = run(main())
    assert batches == [1, 3]
    assert all((r == 20).all() for r in results)


def test_wrong_output_row_count_is_a_backend_error():
    async def main():
        batcher = DynamicBatcher("m", [lambda b: b[:1]], policy())
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(rows(2)) for _ in range(2)))
        finally:
            await batcher.close()

    with pytest.raises(BackendError, match="returned 1 rows for a batch of"):
        run(main())


def test_cancelled_request_leaves_the_queue():
    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(delay=0.3))
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit(rows(1, 7)))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        gone.cancel()
        await asyncio.sleep(0.01)
        depth = batcher.queue_depth
        kept = await batcher.submit(rows(2))
        await batcher.close()
        return depth, instance.batches, kept

    depth, batches, kept = run(main())
    assert depth == 0
    assert batches == [2]
    assert kept.shape == (2, 2)


def test_instances_run_in_parallel_threads():
    """Each instance's call waits at a barrier for the other's: run one after the other, the first would
    wait in vain (the barrier breaks after 10 s and the batch fails)."""
    barrier = threading.Barrier(2, timeout=10)

    class Meeting(Recorder):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            barrier.wait()
            return super().__call__(batch)

    async def main():
        instance = Meeting()
        batcher = DynamicBatcher("m", [instance, instance], policy(max_batch_size=1))
        batcher.start()
        answers = await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(1)))
        await batcher.close()
        return answers, instance.threads

    answers, threads = run(main())
    assert [a.tolist() for a in answers] == [[[10.0, 10.0]]] * 2
    assert len(threads) == 2


def test_inline_instance_runs_on_the_event_loop_thread():
    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(), inline=True)
        batcher.start()
        await batcher.submit(rows(1))
        await batcher.close()
        return instance.threads

    assert run(main()) == {threading.current_thread().name}


def test_a_crash_of_the_scheduler_fails_every_pending_request(monkeypatch):
    async def main():
        batcher = DynamicBatcher("m", [Recorder()], policy(delay=0.05))
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(rows(1))) for _ in range(3)]
        await asyncio.sleep(0)

        def broken(*args, **kwargs):
            raise RuntimeError("scheduler bug")

        monkeypatch.setattr("service.batching.batcher.plan_batch", broken)
        results = await asyncio.gather(*pending, return_exceptions=True)
        with pytest.raises(Unavailable, match="stopped serving after an internal error: scheduler bug"):
            await batcher.submit(rows(1))
        await batcher.close()
        return results

    results = run(main())
    assert all(isinstance(r, Unavailable) for r in results)


def test_close_runs_the_queue_then_refuses():
    async def main():
        instance = Recorder()
        batcher = DynamicBatcher("m", [instance], policy(delay=10.0))
        batcher.start()
        queued = asyncio.ensure_future(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        await batcher.close(timeout=5)
        with pytest.raises(Unavailable, match="not accepting"):
            await batcher.submit(rows(1))
        return await queued, instance.batches

    out, batches = run(main())
    assert out.shape == (1, 2)
    assert batches == [1]
