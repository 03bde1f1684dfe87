"""The batching settings an export writes into each entry's config.pbtxt."""

from __future__ import annotations

from modelrepo.entries import Batching

MAX_QUEUE_DELAY_MICROSECONDS = 500  # a CNN batch computes in milliseconds; wait briefly to fill one
QUEUE_ROWS_PER_BATCH = 8  # bound the queue at this many full batches


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    return tuple(sorted({s for s in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if s >= 2}))


def default_batching(max_batch_size: int) -> Batching:
    return Batching(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes(max_batch_size),
        max_queue_delay_microseconds=MAX_QUEUE_DELAY_MICROSECONDS,
        max_queue_size=QUEUE_ROWS_PER_BATCH * max_batch_size,
    )
