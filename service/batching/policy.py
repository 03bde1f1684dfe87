"""Triton's dynamic batching rules as pure functions: which queued requests form the next batch, and how a
batch's rows are joined and split. Unit-tested with plain data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from protos import model_config_pb2 as mc

# Triton's max_queue_size 0 means unbounded; we never run an unbounded queue, so 0 means this many requests.
DEFAULT_MAX_QUEUE_SIZE = 4096


@dataclass(frozen=True)
class BatchPolicy:
    """The scheduling part of a model's config.pbtxt."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0  # seconds (config: max_queue_delay_microseconds)
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # requests
    dynamic: bool = True  # False (no dynamic_batching in the config): each request is its own batch

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_size {bad} must lie in 1..max_batch_size ({self.max_batch_size})"
            )
        if self.max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must be >= 0, got {self.max_queue_delay}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")


def plan_batch(rows: Iterable[int], policy: BatchPolicy, delay_expired: bool) -> int:
    """How many requests from the head of the queue to run now (0: wait for more).

    ``rows`` are the row counts of the queued requests, oldest first. A request is never split and never
    overtaken. Triton's rules: the largest preferred batch size that can be formed goes at once; otherwise
    a batch goes when it is full (``max_batch_size`` rows, or the next request would not fit), when the
    oldest request has waited ``max_queue_delay`` (``delay_expired``), or at once when the delay is 0.
    """
    if not policy.dynamic:
        return 1 if any(True for _ in rows) else 0
    preferred = policy.preferred_batch_sizes
    limit = max(preferred) if preferred else policy.max_batch_size
    taken = total = best_preferred = 0
    full = False
    for r in rows:
        if total + r > policy.max_batch_size:
            full = True  # the next request cannot join: this batch cannot grow
            break
        total += r
        taken += 1
        if total in preferred:
            best_preferred = taken
        if total >= limit:
            full = True
            break
    if taken == 0:
        return 0
    if best_preferred:
        return best_preferred
    if full or delay_expired or policy.max_queue_delay == 0:
        return taken
    return 0


def concat_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One batch from the requests' arrays (no copy for a single request)."""
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays, axis=0)


def split_rows(output: np.ndarray, rows: Sequence[int]) -> list[np.ndarray]:
    """The batch output cut back into one array per request; the row count must match the input's."""
    total = sum(rows)
    if output.ndim == 0 or output.shape[0] != total:
        got = output.shape[0] if output.ndim else "a scalar"
        raise ValueError(f"backend returned {got} rows for a batch of {total} input rows")
    if len(rows) == 1:
        return [output]
    bounds = np.cumsum(rows)[:-1]
    return np.split(output, bounds, axis=0)


def policy_from_config(config: mc.ModelConfig) -> BatchPolicy:
    """The BatchPolicy of a config.pbtxt (raises ValueError naming the bad setting)."""
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(config.max_batch_size, dynamic=False)
    db = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
        max_queue_delay=db.max_queue_delay_microseconds / 1e6,
        max_queue_size=db.default_queue_policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
    )
