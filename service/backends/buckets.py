"""Padded batch-size buckets: a GPU backend captures one CUDA graph per bucket and runs a batch of N rows
in the smallest bucket that holds N, the rows past N being padding whose outputs are dropped.

Pure functions over integers, unit-tested without a GPU.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


def batch_buckets(max_batch_size: int, preferred: Iterable[int] = ()) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size``, the config's preferred batch sizes (the batches the dynamic
    batcher aims for run unpadded) and ``max_batch_size`` itself; ascending. Padding is then at most
    half of a bucket's rows."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = {max_batch_size}
    power = 1
    while power < max_batch_size:
        sizes.add(power)
        power *= 2
    sizes |= {p for p in preferred if 1 <= p <= max_batch_size}
    return tuple(sorted(sizes))


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding ``rows`` rows (ValueError past the largest)."""
    index = bisect.bisect_left(buckets, rows)
    if rows < 1 or index == len(buckets):
        raise ValueError(f"a batch of {rows} rows fits no bucket of {list(buckets)}")
    return buckets[index]
