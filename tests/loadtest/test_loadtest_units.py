"""Unit tests of the load tester's pure parts: window bookkeeping, stability, merging, metric deltas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loadtest.grpc_target import encode_request as encode_grpc_request
from loadtest.http_target import encode_request as encode_http_request
from loadtest.http_target import error_message, status_name
from loadtest.inputs import InputOverrides, build_payloads, encode_bytes_elements, is_batched, request_shape
from loadtest.model_spec import InputTensor
from loadtest.options import CLOSED_LOOP, OPEN_LOOP, LoadTestOptions, UsageError
from loadtest.recorder import OK, WindowData, WindowRecorder
from loadtest.scrape import parse_metrics, server_split
from loadtest.stats import merge_windows, summarize_latencies
from loadtest.target import ModelSpec, TensorSpec
from loadtest.windows import ALL_FAILED, STABLE, TIME_BOUND, StabilityTracker, windows_agree
from loadtest.workers import split_level
from protos import grpc_service_pb2 as pb


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


# Bytes per element, from the KServe v2 datatype table (not from numpy, which the code under test uses).
ELEMENT_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
LITTLE_ENDIAN = {
    "BOOL": "u1",
    "UINT8": "u1",
    "INT8": "i1",
    "UINT16": "<u2",
    "INT16": "<i2",
    "FP16": "<f2",
    "UINT32": "<u4",
    "INT32": "<i4",
    "FP32": "<f4",
    "UINT64": "<u8",
    "INT64": "<i8",
    "FP64": "<f8",
}


def undescribed(max_batch_size=None) -> ModelSpec:
    return ModelSpec("m", "1", "", (), (), max_batch_size)


def sent_tensors(spec: ModelSpec, batch: int, **overrides) -> list[InputTensor]:
    payloads = build_payloads(spec, batch, overrides=InputOverrides(**overrides), encode=lambda _, t: t)
    return list(payloads.requests)


@pytest.mark.parametrize("datatype", list(ELEMENT_BYTES))
def test_random_payload_of_every_datatype(datatype):
    (tensor, *others) = sent_tensors(undescribed(), 4, shapes={"x": (32, 32)}, datatypes={"x": datatype})
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (4, 32, 32))
    assert len(tensor.raw) == 4 * 32 * 32 * ELEMENT_BYTES[datatype]
    values = np.frombuffer(tensor.raw, LITTLE_ENDIAN[datatype]).astype(np.float64)
    assert values.tolist() == tensor.values.ravel().astype(np.float64).tolist()  # JSON sends the same values
    assert others and all(other.raw != tensor.raw for other in others)  # several different requests
    if datatype in ("FP16", "FP32", "FP64"):
        assert abs(values.mean()) < 0.1 and 0.9 < values.std() < 1.1
    elif datatype == "BOOL":
        assert set(values) == {0, 1}
    elif datatype == "UINT8":  # pixels: the whole range
        assert values.min() >= 0 and values.max() <= 255 and values.max() > 250 and values.min() < 5
    elif datatype == "INT8":
        assert values.min() < -120 and values.max() > 120
    else:  # wider integers: small non-negative values (indices, counts)
        assert values.min() >= 0 and 200 < values.max() <= 255


def test_shape_overrides_follow_the_metadata_and_the_batching():
    described = ModelSpec("m", "", "", (TensorSpec("input", "FP32", (-1, 3, -1, -1)),), (), 8)
    (tensor, *_) = sent_tensors(described, 2, shapes={"input": (3, 16, 24)})  # -1 dimensions are free
    assert tensor.shape == (2, 3, 16, 24)
    with pytest.raises(UsageError, match=r"fixes dimension 0 .* to 3"):
        sent_tensors(described, 2, shapes={"input": (1, 16, 24)})
    fixed = ModelSpec("m", "", "", (TensorSpec("input", "FP32", (3, 8)),), (), 0)  # does not batch
    (tensor, *_) = sent_tensors(fixed, 1, shapes={"input": (3, 8)}, datatypes={"input": "FP16"})
    assert (tensor.shape, tensor.datatype) == ((3, 8), "FP16")  # the full shape; the datatype overridden
    with pytest.raises(UsageError, match=r"expected 2 dimensions \(the model does not batch\), got 3"):
        sent_tensors(fixed, 1, shapes={"input": (1, 3, 8)})
    (tensor, *_) = sent_tensors(undescribed(0), 1, shapes={"x": (5,)}, datatypes={"x": "INT64"})
    assert tensor.shape == (5,)  # a config says it does not batch: no batch dimension added
    with pytest.raises(UsageError, match="choose the one to send with --input"):
        sent_tensors(undescribed(), 1, shapes={"a": (1,), "b": (1,)}, datatypes={"a": "FP32", "b": "FP32"})
    (tensor, *_) = sent_tensors(
        undescribed(), 1, input_name="b", shapes={"a": (1,), "b": (2,)}, datatypes={"a": "FP32", "b": "INT8"}
    )
    assert (tensor.name, tensor.shape) == ("b", (1, 2))


def test_grpc_request_carries_raw_contents():
    tensor = InputTensor("input", "UINT8", (1, 2), b"\x01\x02")
    request = pb.ModelInferRequest.FromString(encode_grpc_request(ModelSpec("m", "3", "", (), (), 8), tensor))
    assert (request.model_name, request.model_version) == ("m", "3")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("input", "UINT8", [1, 2])]
    assert list(request.raw_input_contents) == [b"\x01\x02"]


def test_http_binary_and_json_bodies():
    values = np.array([[1.5, -2.0]], np.float32)
    tensor = InputTensor("input", "FP32", (1, 2), values.tobytes(), values)
    binary = encode_http_request(tensor, binary=True)
    header = json.loads(binary.body[: binary.header_length])
    assert header == {
        "inputs": [
            {"name": "input", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
        ],
        "parameters": {"binary_data_output": True},
    }
    assert binary.body[binary.header_length :] == values.tobytes()
    plain = encode_http_request(tensor, binary=False)
    assert plain.header_length is None
    assert json.loads(plain.body) == {
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]
    }
    with pytest.raises(UsageError, match="--http-json"):
        encode_http_request(InputTensor("image", "BYTES", (1,), b"\x00\x00\x00\x00"), binary=False)


def test_http_statuses_map_to_the_grpc_names_triton_uses():
    names = {status: status_name(status) for status in (400, 403, 404, 429, 500, 501, 503, 504, 418)}
    assert names == {
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        501: "UNIMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
        418: "UNKNOWN",
    }
    assert error_message(400, b'{"error": "bad shape"}') == "HTTP 400: bad shape"
    assert error_message(502, b"<html>Bad Gateway</html>") == "HTTP 502: <html>Bad Gateway</html>"


def test_http_url_forms():
    def address(url, **tls):
        return LoadTestOptions(url=url, model="m", protocol="http", **tls).address

    assert address("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert address("127.0.0.1:8000", tls=True) == "https://127.0.0.1:8000"
    assert address("https://example.com/") == "https://example.com"
    assert LoadTestOptions(url="https://h:1", model="m", protocol="http").tls_settings() is not None
    assert LoadTestOptions(url="h:1", model="m").tls_settings() is None


@pytest.mark.parametrize(
    ("flags", "window", "noted"),
    [
        ([], 2.0, False),  # 30 s holds 3 windows of the default 2 s
        (["--duration", "3"], 1.0, True),  # fitted: 3 windows of 1 s, and said so
        (["--duration", "3", "--windows", "2"], 1.5, True),
        (["--duration", "3", "--window", "0.5"], 0.5, False),  # given: kept
    ],
)
def test_a_short_duration_fits_its_windows(flags, window, noted):
    from loadtest.cli import build_parser, fitted_window, options_from_args

    args = build_parser().parse_args(["--url", "127.0.0.1:1", "--model", "m", *flags])
    options = options_from_args(args)
    options.validate()  # fits: no UsageError
    assert options.window_s == pytest.approx(window)
    assert (fitted_window(args)[1] is not None) == noted
