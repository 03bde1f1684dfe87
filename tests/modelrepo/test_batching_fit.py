"""Batching fitted to a measured latency curve: the rules of modelrepo.batching, on plain data."""

from __future__ import annotations

import numpy as np
import pytest

from modelrepo.batching import batch_sizes, fit, measure_curve, tuning_limit


def test_a_cheap_model_gets_the_largest_batch_and_no_delay():
    curve = [(b, 50e-6 + 10e-6 * b) for b in batch_sizes(32)]  # LeNet-5 on a CPU: microseconds
    fitted = fit(curve, 32, 100)
    b = fitted.batching
    assert (b.max_batch_size, b.max_queue_delay_microseconds) == (32, 0)
    assert "less than the protocol costs around it" in fitted.reason
    assert b.max_queue_size == 8 * 32


def test_a_gpu_like_curve_waits_one_row_and_prefers_the_knee():
    curve = [(b, max(0.002, 0.0003 * b)) for b in batch_sizes(64)]  # flat up to 8 rows, then linear
    b = fit(curve, 64, 100).batching
    assert b.max_batch_size == 64
    assert b.max_queue_delay_microseconds == 2000  # one row's time
    assert b.preferred_batch_sizes == (8,)  # the knee: the best throughput first reached there


def test_a_cpu_bound_model_is_limited_by_the_budget_and_does_not_wait():
    curve = [(b, 0.025 * b) for b in batch_sizes(32)]  # resnet-like on a CPU: linear
    fitted = fit(curve, 32, 100)
    assert fitted.batching.max_batch_size == 4  # 100 ms: the whole budget
    assert fitted.batching.max_queue_delay_microseconds == 0 and "would not pay" in fitted.reason
    record = fitted.record()
    assert record["latency_budget_ms"] == 100 and record["chosen"]["max_batch_size"] == 4


def test_a_model_slower_than_the_budget_still_serves_one_row():
    b = fit([(1, 0.5), (2, 1.0)], 32, 100).batching
    assert b.max_batch_size == 1 and b.preferred_batch_sizes == ()


def test_measure_curve_stops_past_the_budget():
    seen = []

    def run(x: np.ndarray) -> None:
        seen.append(len(x))

    curve = measure_curve(run, (1, 2, 2), 8, budget_s=1.0)
    assert [b for b, _ in curve] == [1, 2, 4, 8] and all(t >= 0 for _, t in curve)
    assert set(seen) == {1, 2, 4, 8}


@pytest.mark.parametrize(
    ("record", "max_batch_size", "limit"),
    [({"limit": 128}, 8, 128), ({}, 8, 8), (None, 8, 8), ({"limit": 4}, 8, 8)],
)
def test_tune_may_raise_the_cap_to_the_recorded_limit_never_lower_it(record, max_batch_size, limit):
    assert tuning_limit(record, max_batch_size) == limit
