"""Batching settings fitted to the model: latency measured against batch size on this machine, then the
``max_batch_size``, preferred size and queue delay that maximise throughput within a latency budget.
``python -m export`` fits them when it writes an entry (the curve goes into the manifest, with the device
and runtime that ran it and the model's own limit, the export's ``--max-batch-size``); ``python -m
service --tune`` fits them again at warm-up, on the serving machine, up to that limit: an entry fitted
on a CPU, where large batches miss the budget, may batch far more on a GPU.

The rules, from the measured curve ``t(b)`` (seconds of one batch of ``b`` rows, the fastest of several):

- ``max_batch_size``: the largest measured ``b`` (up to the export's limit) whose batch computes within
  the budget; at least 1. (Under load a larger batch only adds throughput, but a batch that alone takes
  longer than the budget cannot answer within it.)
- preferred size: the knee, the smallest ``b`` that reaches 95% of the best throughput ``b / t(b)`` within
  ``max_batch_size`` (none when that is 1 or ``max_batch_size`` itself: a full batch goes at once anyway).
- queue delay: waiting for company pays only where a batch costs much less per row than a single row (the
  knee's cost per row at most half of one row's) and a row's compute outweighs the per-request overhead
  of the protocol (one row at least 1 ms). Then the wait is one row's compute time (a request that waits
  longer would have been answered alone), at most a quarter of the budget. Otherwise no delay: under load
  requests queue while a batch computes and batch anyway, and at low load a wait is pure latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from modelrepo.entries import Batching

DEFAULT_LATENCY_BUDGET_MS = 100.0
KNEE = 0.95  # share of the best throughput that counts as reaching it
WAIT_PAYS_BELOW = 0.5  # a batch's cost per row, relative to a single row, under which waiting can pay
MIN_ROW_SECONDS_FOR_DELAY = 0.001  # below this a row's compute is cheaper than the protocol around it
QUEUE_ROWS_PER_BATCH = 8  # bound the queue at this many full batches
REPEATS = 5
WARM_UP = 3
MIN_MEASURE_SECONDS = 0.2  # per batch size: at least this long, or REPEATS runs, whichever is more


@dataclass(frozen=True)
class Fit:
    """The fitted batching and how it was found (recorded in the manifest)."""

    batching: Batching
    curve: tuple[tuple[int, float], ...]  # (rows, seconds of one batch: the fastest of several runs)
    latency_budget_ms: float
    reason: str
    limit: int  # the largest batch the model may take (the most --tune may raise max_batch_size to)
    device: str = "cpu"  # where the curve was measured
    runtime: str = ""  # what ran it

    def record(self) -> dict:
        return {
            "curve": [[b, round(s, 7)] for b, s in self.curve],
            "latency_budget_ms": self.latency_budget_ms,
            "chosen": asdict(self.batching),
            "reason": self.reason,
            "limit": self.limit,
            "device": self.device,
            "runtime": self.runtime,
        }


def tuning_limit(record: dict | None, max_batch_size: int) -> int:
    """The largest batch ``--tune`` may fit a model to: the limit its manifest's batching record keeps,
    never below the config's ``max_batch_size`` (entries written before the limit was recorded: that)."""
    recorded = (record or {}).get("limit")
    return max(max_batch_size, int(recorded)) if isinstance(recorded, int) else max_batch_size


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit`` (and ``limit`` itself)."""
    sizes, b = [], 1
    while b < limit:
        sizes.append(b)
        b *= 2
    return [*sizes, limit]


def measure_curve(
    run: Callable[[np.ndarray], object], row_shape: tuple[int, ...], limit: int, budget_s: float
) -> list[tuple[int, float]]:
    """Seconds of one batch for sizes 1, 2, 4, ... ``limit``: the fastest of at least REPEATS runs and
    MIN_MEASURE_SECONDS, after WARM_UP runs (the fastest run is what the machine can do; slower ones
    measure what else ran meanwhile). Stops at the first size whose batch alone takes more than the whole
    budget (larger ones would too)."""
    curve = []
    for rows in batch_sizes(limit):
        batch = np.zeros((rows, *row_shape), dtype=np.float32)
        for _ in range(WARM_UP):
            run(batch)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < REPEATS or time.perf_counter() - started < MIN_MEASURE_SECONDS:
            t0 = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t0)
            if len(times) >= 50 * REPEATS:
                break
        curve.append((rows, min(times)))
        if curve[-1][1] > budget_s:
            break
    return curve


def fit(
    curve: list[tuple[int, float]],
    limit: int,
    budget_ms: float = DEFAULT_LATENCY_BUDGET_MS,
    *,
    device: str = "cpu",
    runtime: str = "",
) -> Fit:
    """The batching settings for ``curve`` measured on ``device`` with ``runtime`` (see the module's
    rules)."""
    budget = budget_ms / 1e3
    fitting = [(b, t) for b, t in curve if b <= limit and t <= budget]
    if not fitting:
        fitting = [curve[0]]
    max_batch = fitting[-1][0]
    best = max(b / t for b, t in fitting)
    knee = next(b for b, t in fitting if b / t >= KNEE * best)
    preferred = (knee,) if 1 < knee < max_batch else ()
    row = curve[0][1]
    knee_time = dict(fitting)[knee]
    per_row = knee_time / (knee * row)
    if per_row <= WAIT_PAYS_BELOW and row >= MIN_ROW_SECONDS_FOR_DELAY:
        delay_us = int(min(row, budget / 4) * 1e6)
        why = (
            f"a batch of {knee} costs {per_row:.2f} of a row each and a row {row * 1e3:.2f} ms: waiting pays"
        )
    else:
        delay_us = 0
        cheap = row < MIN_ROW_SECONDS_FOR_DELAY
        why = (
            f"one row computes in {row * 1e3:.3f} ms, less than the protocol costs around it"
            if cheap
            else f"a batch of {knee} still costs {per_row:.2f} of a row each: waiting would not pay"
        )
        why += "; no queue delay"
    batching = Batching(
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        max_queue_delay_microseconds=delay_us,
        max_queue_size=QUEUE_ROWS_PER_BATCH * max_batch,
    )
    reason = f"max_batch_size {max_batch}: the largest batch computed within the {budget_ms:g} ms budget; "
    reason += why
    return Fit(batching, tuple(curve), budget_ms, reason, limit, device, runtime)
