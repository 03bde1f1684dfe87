"""Unit tests of the load tester's pure parts: window bookkeeping, stability, merging, metric deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.inputs import encode_bytes_elements, is_batched, request_shape
from loadtest.options import CLOSED_LOOP, OPEN_LOOP, LoadTestOptions, UsageError
from loadtest.recorder import OK, WindowData, WindowRecorder
from loadtest.scrape import parse_metrics, server_split
from loadtest.stats import merge_windows, summarize_latencies
from loadtest.target import ModelSpec, TensorSpec
from loadtest.windows import ALL_FAILED, STABLE, TIME_BOUND, StabilityTracker, windows_agree
from loadtest.workers import split_level


def test_recorder_emits_windows_in_order_once_closed_and_drained():
    emitted: list[WindowData] = []
    recorder = WindowRecorder(measure_start=10.0, window_s=1.0, emit=emitted.append)
    warm = recorder.begin(9.5)
    first = recorder.begin(10.2)
    second = recorder.begin(11.1)
    assert (warm, first, second) == (-1, 0, 1)
    recorder.finish(warm, 9.5, 9.5, 9.6, OK)
    recorder.finish(second, 11.1, 11.1, 11.3, OK)
    recorder.close_before(12.5)
    assert emitted == []  # window 0 still has a request in flight, and window 1 must wait for it
    recorder.finish(first, 10.2, 10.4, 11.9, "UNAVAILABLE", "gone")
    assert [w.index for w in emitted] == [0, 1]
    assert emitted[0].latencies.size == 0 and emitted[0].errors == {"UNAVAILABLE": 1}
    assert emitted[0].lateness == pytest.approx([0.2])
    assert emitted[1].latencies == pytest.approx([0.2])
    totals = recorder.totals
    assert totals.sent == 3 and totals.ok == 2 and totals.errors == {"UNAVAILABLE": 1}


def test_recorder_latency_runs_from_the_intended_start():
    emitted: list[WindowData] = []
    recorder = WindowRecorder(0.0, 1.0, emitted.append)
    index = recorder.begin(0.5)
    recorder.finish(index, intended=0.5, sent=0.9, ended=1.0, code=OK)  # sent 0.4 s late
    recorder.close_all()
    assert emitted[0].latencies == pytest.approx([0.5])
    assert emitted[0].lateness == pytest.approx([0.4])


def window(index: int, latencies: list[float], errors: dict[str, int] | None = None) -> WindowData:
    return WindowData(index, np.asarray(latencies), np.zeros(len(latencies)), errors or {}, {})


def test_merge_concatenates_raw_latencies_not_percentiles():
    a = window(0, [0.001] * 99)
    b = window(0, [1.0], {"UNAVAILABLE": 2})
    merged = merge_windows([a, b])
    assert merged.latencies.size == 100 and merged.errors == {"UNAVAILABLE": 2}
    summary = summarize_latencies(merged.latencies)
    assert summary.p50 == pytest.approx(0.001) and summary.max == 1.0
    assert summary.p99 == pytest.approx(np.percentile(np.r_[[0.001] * 99, 1.0], 99))


def test_windows_agree_within_tolerance_only():
    tracker = StabilityTracker(required=3, tolerance=0.1, max_windows=10, max_requests=None)
    assert not tracker.add(window(0, [0.010] * 100), 1.0)
    assert not tracker.add(window(1, [0.010] * 100), 1.0)
    assert not tracker.add(window(2, [0.020] * 100), 1.0)  # p50 doubles: disagrees
    assert not tracker.add(window(3, [0.020] * 102), 1.0)
    assert tracker.add(window(4, [0.020] * 98), 1.0)
    assert tracker.stable and tracker.stop_reason == STABLE
    assert tracker.measured().latencies.size == 300
    assert not windows_agree(tracker.summaries[1:4], 0.1)


def test_tracker_bounds_and_failures():
    timed = StabilityTracker(required=2, tolerance=0.01, max_windows=3, max_requests=None)
    results = [timed.add(window(i, [0.01 * (i + 1)] * 10), 1.0) for i in range(3)]
    assert results == [False, False, True] and timed.stop_reason == TIME_BOUND and not timed.stable
    failed = StabilityTracker(required=2, tolerance=0.1, max_windows=10, max_requests=None)
    assert failed.add(window(0, [], {"UNAVAILABLE": 5}), 1.0) and failed.stop_reason == ALL_FAILED


def test_split_level_keeps_every_worker_busy():
    assert split_level(CLOSED_LOOP, 5, 2) == [3, 2]
    assert split_level(CLOSED_LOOP, 1, 4) == [1]
    assert split_level(OPEN_LOOP, 100.0, 4) == [25.0] * 4


METRICS_BEFORE = """
# TYPE cnnserve_requests_total counter
cnnserve_requests_total{model="m",version="1",outcome="success"} 10
cnnserve_requests_total{model="other",version="1",outcome="success"} 7
# TYPE cnnserve_batch_size histogram
cnnserve_batch_size_bucket{model="m",version="1",le="1.0"} 4
cnnserve_batch_size_bucket{model="m",version="1",le="4.0"} 5
cnnserve_batch_size_bucket{model="m",version="1",le="+Inf"} 5
cnnserve_batch_size_sum{model="m",version="1"} 8
cnnserve_batch_size_count{model="m",version="1"} 5
# TYPE cnnserve_queue_duration_seconds histogram
cnnserve_queue_duration_seconds_sum{model="m",version="1"} 0.5
cnnserve_queue_duration_seconds_count{model="m",version="1"} 10
"""

METRICS_AFTER = """
# TYPE cnnserve_requests_total counter
cnnserve_requests_total{model="m",version="1",outcome="success"} 40
cnnserve_requests_total{model="m",version="1",outcome="resource_exhausted"} 2
cnnserve_requests_total{model="other",version="1",outcome="success"} 900
# TYPE cnnserve_batch_size histogram
cnnserve_batch_size_bucket{model="m",version="1",le="1.0"} 6
cnnserve_batch_size_bucket{model="m",version="1",le="4.0"} 13
cnnserve_batch_size_bucket{model="m",version="1",le="+Inf"} 13
cnnserve_batch_size_sum{model="m",version="1"} 38
cnnserve_batch_size_count{model="m",version="1"} 13
# TYPE cnnserve_queue_duration_seconds histogram
cnnserve_queue_duration_seconds_sum{model="m",version="1"} 1.1
cnnserve_queue_duration_seconds_count{model="m",version="1"} 42
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3
"""


def test_server_split_from_metric_deltas():
    split = server_split(parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER), "m")
    assert split.requests == 32 and split.requests_by_outcome == {"resource_exhausted": 2, "success": 30}
    assert split.queue_mean_s == pytest.approx(0.6 / 32)
    assert math.isnan(split.compute_mean_s)  # not exported by this target
    assert split.batches == 8 and split.batch_mean == pytest.approx(30 / 8)
    assert [(b.low, b.high, b.count) for b in split.batch_buckets] == [(0, 1, 2), (1, 4, 6), (4, math.inf, 0)]
    assert server_split(parse_metrics(""), parse_metrics(METRICS_AFTER), "absent") is None


def spec(max_batch_size, shape=(-1, 3, 4, 4)) -> ModelSpec:
    return ModelSpec("m", "", "", (TensorSpec("input", "FP32", shape),), (), max_batch_size)


def test_batch_resolution_and_limits():
    shape = (-1, 3, 4, 4)
    assert request_shape(spec(8).inputs[0], 4, is_batched(spec(8), 4, shape)) == (4, 3, 4, 4)
    assert is_batched(spec(None), 2, shape)  # no ModelConfig: the leading -1 is the batch
    assert is_batched(spec(None), 2, None)  # described nowhere: assumed to batch
    assert not is_batched(spec(0, (3, 4, 4)), 1, (3, 4, 4))
    with pytest.raises(UsageError, match="exceeds model 'm''s max_batch_size 8"):
        is_batched(spec(8), 9, shape)
    with pytest.raises(UsageError, match="does not batch"):
        is_batched(spec(0, (3, 4, 4)), 2, (3, 4, 4))
    with pytest.raises(UsageError, match="has no batch dimension"):
        is_batched(spec(None, (3, 4, 4)), 2, (3, 4, 4))
    with pytest.raises(UsageError, match="variable dimensions"):
        request_shape(TensorSpec("input", "FP32", (-1, 3, -1, -1)), 1, True)


def test_bytes_elements_are_length_prefixed():
    assert encode_bytes_elements([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_options_validation_names_the_flag():
    with pytest.raises(UsageError, match="--concurrency: values must be whole numbers"):
        LoadTestOptions(url="h:1", model="m", levels=(1.5,)).validate()
    with pytest.raises(UsageError, match="--url: expected HOST:PORT"):
        LoadTestOptions(url="grpc://h:1", model="m").validate()
