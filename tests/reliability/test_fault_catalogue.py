"""The catalogue of malformed requests, each sent to the real server: the right status and a message that
names the field (or model) at fault, and the server alive and correct after every one.

Classes: routing (unknown model or version), names (inputs, outputs), tensors (datatype, shape and length
mismatches, zero and negative dimensions, overflowing shapes, raw and typed contents together, BYTES
counts), values (NaN, inf: computed, not refused, as Triton does), parameters, requested outputs, sizes,
streams, and the other RPCs. tests/service/test_server_errors.py holds the everyday cases; these are the
hostile ones around them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos.wire import MAX_MESSAGE_BYTES, add_input, output_array, serialize_bytes
from tests.reliability.fault_kit import (
    MAX_DETAILS,
    MODEL,
    UNEXPECTED,
    assert_alive_and_correct,
    health_status,
    infer_request,
    x,
)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
HUGE = 100_000  # characters in a hostile name: far past what gRPC carries back in a status message


def raw(name="input", datatype="FP32", shape=(1, 1, 32, 32), contents: bytes | None = None, model=MODEL):
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    count = 1
    for d in shape:
        count *= max(d, 0)
    request.raw_input_contents.append(bytes(4 * min(count, 1 << 20)) if contents is None else contents)
    return request


def typed(field: str, values, name="input", datatype="FP32", shape=(1, 1, 32, 32)):
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    getattr(tensor.contents, field).extend(values)
    return request


def raw_and_typed():
    request = raw()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 1024)
    return request


def two_raws():
    request = raw()
    request.raw_input_contents.append(bytes(4096))
    return request


def inputs(*names_types):
    request = pb.ModelInferRequest(model_name=MODEL)
    for name, array in names_types:
        add_input(request, name, array)
    return request


def pixels(shape=(1, 32, 32, 1), datatype="UINT8"):
    return raw("pixels", datatype, shape, bytes(int(np.prod(shape)) * (1 if datatype == "UINT8" else 4)))


def image(shape, contents: bytes):
    return raw("image", "BYTES", shape, contents)


def with_param(request, key, **value):
    for field, v in value.items():
        setattr(request.parameters[key], field, v)
    if not value:
        request.parameters[key].SetInParent()  # a parameter without a value
    return request


def with_output(request, name="logits", **classification):
    output = request.outputs.add(name=name)
    for field, v in classification.items():
        setattr(output.parameters["classification"], field, v)
    return request


def classification_without_value():
    request = infer_request()
    request.outputs.add(name="logits").parameters["classification"].SetInParent()
    return request


def huge_shape():
    return raw(shape=(1,) * 50_000, contents=bytes(4))


# name -> (request builder, status, what the message must contain)
Case = tuple[Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]
CASES: dict[str, Case] = {
    # ---- routing
    "model: unknown": (lambda: infer_request("resnet9000"), NOT_FOUND, "unknown model 'resnet9000'"),
    "model: empty name": (lambda: infer_request(""), INVALID, "model name is empty"),
    "model: a path": (lambda: infer_request("../lenet5"), INVALID, "model name '../lenet5' is not a model"),
    "model: NUL and control characters": (
        lambda: infer_request("lenet5\x00\x07"),
        INVALID,
        "holds characters that are not printable",
    ),
    "model: huge name": (lambda: infer_request("m" * HUGE), INVALID, "model name 'mmm"),
    "model: huge non-ASCII name": (lambda: infer_request("é😀" * HUGE), INVALID, "model name 'é😀"),
    "version: unknown": (lambda: infer_request(version="7"), NOT_FOUND, "has no version '7' loaded"),
    "version: negative": (lambda: infer_request(version="-1"), NOT_FOUND, "has no version '-1' loaded"),
    "version: not an integer": (lambda: infer_request(version="1.0"), NOT_FOUND, "has no version '1.0'"),
    "version: huge": (lambda: infer_request(version="9" * HUGE), NOT_FOUND, "has no version '999"),
    # ---- names
    "input: unknown name": (
        lambda: raw(name="data"),
        INVALID,
        "unknown input 'data'; model 'lenet5' expects",
    ),
    "input: huge name": (lambda: raw(name="i" * HUGE), INVALID, "unknown input 'iii"),
    "input: none": (lambda: pb.ModelInferRequest(model_name=MODEL), INVALID, "request has no inputs"),
    "input: two kinds": (
        lambda: inputs(("input", x()), ("pixels", np.zeros((1, 32, 32, 1), np.uint8))),
        INVALID,
        "request has inputs ['input', 'pixels']",
    ),
    "input: the same twice": (
        lambda: inputs(("input", x()), ("input", x())),
        INVALID,
        "request has inputs ['input', 'input']",
    ),
    "output: unknown name": (
        lambda: with_output(infer_request(), "probs"),
        INVALID,
        "unknown output 'probs'",
    ),
    "output: huge name": (lambda: with_output(infer_request(), "o" * HUGE), INVALID, "unknown output 'ooo"),
    "output: two asked": (
        lambda: with_output(with_output(infer_request()), "logits"),
        INVALID,
        "request asks for outputs ['logits', 'logits']",
    ),
    # ---- tensors: datatype, shape, length
    "datatype: FP64": (lambda: raw(datatype="FP64"), INVALID, "datatype must be FP32, got 'FP64'"),
    "datatype: lower case": (lambda: raw(datatype="fp32"), INVALID, "datatype must be FP32, got 'fp32'"),
    "datatype: unknown": (lambda: raw(datatype="FP8"), INVALID, "datatype must be FP32, got 'FP8'"),
    "datatype: empty": (lambda: raw(datatype=""), INVALID, "datatype must be FP32, got ''"),
    "datatype: huge": (lambda: raw(datatype="D" * HUGE), INVALID, "datatype must be FP32, got 'DDD"),
    "shape: rank 3": (lambda: raw(shape=(1, 32, 32)), INVALID, "shape must be [N, 1, 32, 32]"),
    "shape: rank 0": (lambda: raw(shape=()), INVALID, "shape must be [N, 1, 32, 32]"),
    "shape: wrong row": (lambda: raw(shape=(1, 1, 32, 31)), INVALID, "got [1, 1, 32, 31]"),
    "shape: zero rows": (lambda: raw(shape=(0, 1, 32, 32)), INVALID, "batch dimension must be >= 1, got 0"),
    "shape: negative rows": (
        lambda: raw(shape=(-1, 1, 32, 32), contents=bytes(4096)),
        INVALID,
        "batch dimension must be >= 1, got -1",
    ),
    "shape: zero in a row": (lambda: raw(shape=(1, 0, 32, 32)), INVALID, "got [1, 0, 32, 32]"),
    "shape: negative in a row": (
        lambda: raw(shape=(1, -1, 32, 32), contents=bytes(4096)),
        INVALID,
        "got [1, -1, 32, 32]",
    ),
    "shape: product overflows int64": (
        lambda: raw(shape=(2**62, 1, 32, 32), contents=bytes(4096)),
        INVALID,
        f"batch of {2**62} rows exceeds the model's max_batch_size 32",
    ),
    "shape: rows past max_batch_size": (
        lambda: raw(shape=(33, 1, 32, 32)),
        INVALID,
        "batch of 33 rows exceeds the model's max_batch_size 32",
    ),
    "shape: huge rank": (huge_shape, INVALID, "shape has more than 16 dimensions"),
    "raw: short": (lambda: raw(contents=bytes(4095)), INVALID, "raw contents hold 4095 bytes, expected 4096"),
    "raw: long": (lambda: raw(contents=bytes(4100)), INVALID, "raw contents hold 4100 bytes, expected 4096"),
    "raw: empty": (lambda: raw(contents=b""), INVALID, "raw contents hold 0 bytes, expected 4096"),
    "raw: two for one input": (two_raws, INVALID, "raw_input_contents has 2 entries for 1 inputs"),
    "raw and typed together": (raw_and_typed, INVALID, "carries both raw contents and typed contents"),
    "typed: too few": (
        lambda: typed("fp32_contents", [0.0] * 10),
        INVALID,
        "holds 10 elements, expected 1024",
    ),
    "typed: wrong field": (
        lambda: typed("int_contents", [0] * 1024),
        INVALID,
        "holds 0 elements, expected 1024",
    ),
    "typed: FP16 has no field": (
        lambda: typed("fp32_contents", [0.0], datatype="FP16"),
        INVALID,
        "datatype 'FP16' cannot travel as typed contents",
    ),
    "typed: unknown datatype": (
        lambda: typed("fp32_contents", [0.0], datatype="FOO"),
        INVALID,
        "datatype 'FOO' cannot travel as typed contents",
    ),
    # ---- pixels
    "pixels: FP32": (lambda: pixels(datatype="FP32"), INVALID, "input 'pixels': datatype must be UINT8"),
    "pixels: NCHW": (lambda: pixels(shape=(1, 1, 32, 32)), INVALID, "shape must be [N, 32, 32, 1] (NHWC)"),
    "pixels: typed 256": (
        lambda: typed("uint_contents", [256] * 1024, "pixels", "UINT8", (1, 32, 32, 1)),
        INVALID,
        "UINT8 elements must lie in 0..255",
    ),
    "pixels: short": (
        lambda: raw("pixels", "UINT8", (2, 32, 32, 1), bytes(1024)),
        INVALID,
        "raw contents hold 1024 bytes, expected 2048",
    ),
    # ---- image (BYTES)
    "image: shape [1, 2]": (
        lambda: image((1, 2), serialize_bytes([b"a", b"b"])),
        INVALID,
        "shape must be [N] or [N, 1]",
    ),
    "image: rank 0": (lambda: image((), serialize_bytes([b"a"])), INVALID, "shape must be [N] or [N, 1]"),
    "image: rank 3": (
        lambda: image((1, 1, 1), serialize_bytes([b"a"])),
        INVALID,
        "shape must be [N] or [N, 1]",
    ),
    "image: zero rows": (lambda: image((0,), b""), INVALID, "batch dimension must be >= 1, got 0"),
    "image: truncated length prefix": (
        lambda: image((1,), b"\x05\x00"),
        INVALID,
        "truncated BYTES length prefix at byte 0 of 2",
    ),
    "image: length past the end": (
        lambda: image((1,), struct.pack("<I", 2**32 - 1) + b"abc"),
        INVALID,
        "BYTES element 0 claims 4294967295 bytes but only 3 remain",
    ),
    "image: fewer elements than rows": (
        lambda: image((2,), serialize_bytes([b"a"])),
        INVALID,
        "holds 1 BYTES elements, expected 2 for shape [2]",
    ),
    "image: more elements than rows": (
        lambda: image((1,), serialize_bytes([b"a", b"b", b"c"])),
        INVALID,
        "holds more than 1 BYTES elements, expected 1",
    ),
    "image: a million empty elements": (
        lambda: image((1,), bytes(4 * 1_000_000)),
        INVALID,
        "holds more than 1 BYTES elements, expected 1",
    ),
    "image: UINT8": (lambda: raw("image", "UINT8", (1,), b"\x00"), INVALID, "datatype must be BYTES"),
    "image: typed, too many": (
        lambda: typed("bytes_contents", [b"a", b"b"], "image", "BYTES", (1,)),
        INVALID,
        "holds 2 BYTES elements, expected 1",
    ),
    "image: empty bytes": (
        lambda: image((1,), serialize_bytes([b""])),
        INVALID,
        "cannot decode image: 0 bytes",
    ),
    # ---- parameters
    "timeout: a string": (
        lambda: with_param(infer_request(), "timeout", string_param="soon"),
        INVALID,
        "parameter 'timeout' must be an integer number of microseconds, got str",
    ),
    "timeout: a double": (
        lambda: with_param(infer_request(), "timeout", double_param=1.5),
        INVALID,
        "got float 1.5",
    ),
    "timeout: a bool": (
        lambda: with_param(infer_request(), "timeout", bool_param=True),
        INVALID,
        "got bool True",
    ),
    "timeout: negative": (
        lambda: with_param(infer_request(), "timeout", int64_param=-5),
        INVALID,
        "parameter 'timeout' must be >= 0 microseconds, got -5",
    ),
    "timeout: no value": (
        lambda: with_param(infer_request(), "timeout"),
        INVALID,
        "parameter 'timeout' must be an integer number of microseconds, got no value",
    ),
    "timeout: the largest uint64 (no deadline)": (
        lambda: with_param(infer_request(), "timeout", uint64_param=2**64 - 1),
        OK,
        "",
    ),
    "unknown request parameter (ignored)": (
        lambda: with_param(infer_request(), "priority_class", string_param="gold"),
        OK,
        "",
    ),
    "classification: zero": (
        lambda: with_output(infer_request(), int64_param=0),
        INVALID,
        "parameter 'classification' must be >= 1, got 0",
    ),
    "classification: negative": (
        lambda: with_output(infer_request(), int64_param=-3),
        INVALID,
        "parameter 'classification' must be >= 1, got -3",
    ),
    "classification: a string": (
        lambda: with_output(infer_request(), string_param="3"),
        INVALID,
        "parameter 'classification' must be an integer, got str",
    ),
    "classification: a double": (
        lambda: with_output(infer_request(), double_param=3.0),
        INVALID,
        "parameter 'classification' must be an integer, got float",
    ),
    "classification: no value": (
        classification_without_value,
        INVALID,
        "parameter 'classification' must be an integer, got no value",
    ),
    "classification: past the classes (clamped)": (
        lambda: with_output(infer_request(), uint64_param=2**64 - 1),
        OK,
        "",
    ),
    # ---- values: computed, not refused (the input is already normalized; Triton does not look either)
    "values: NaN": (lambda: infer_request(data=np.full((1, 1, 32, 32), np.nan, np.float32)), OK, ""),
    "values: +-inf": (
        lambda: infer_request(data=np.where(x() > 0, np.inf, -np.inf).astype(np.float32)),
        OK,
        "",
    ),
    "values: NaN in typed contents": (lambda: typed("fp32_contents", [float("nan")] * 1024), OK, ""),
    "values: float32 extremes": (
        lambda: infer_request(data=np.where(x() > 0, 3.4e38, -3.4e38).astype(np.float32)),
        OK,
        "",
    ),
    # ---- sizes
    "message past --max-message-bytes": (
        lambda: raw(contents=bytes(MAX_MESSAGE_BYTES + 1)),
        EXHAUSTED,
        "",
    ),
}


@pytest.fixture(scope="module")
def stub(shared_server):
    big = 2 * MAX_MESSAGE_BYTES
    channel = grpc.insecure_channel(
        shared_server.address,
        options=[("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)],
    )
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("case", CASES)
def test_malformed_request(case, stub, shared_server, reference):
    build, code, fragment = CASES[case]
    request = build()
    try:
        response = stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as e:
        got, details = e.code(), e.details() or ""
    else:
        got, details = OK, ""
        logits = output_array(response, "logits")
        assert logits.shape == (1, 10), logits.shape  # logits, or top-k clamped to the 10 classes
    assert got == code, f"{case}: expected {code.name}, got {got.name}: {details[:300]}"
    assert fragment in details, f"{case}: {fragment!r} not in {details[:300]!r}"
    assert len(details) <= MAX_DETAILS, f"{case}: a {len(details)}-character status message"
    assert_alive_and_correct(shared_server, reference, seed=len(case))


def test_no_case_reached_our_unexpected_error_path(shared_server):
    """Runs after the catalogue (same module, same server): no case ended in an exception the server
    did not expect (it would have been logged with its traceback)."""
    assert UNEXPECTED not in shared_server.log(), shared_server.log()[-3000:]


# --------------------------------------------------------------------------------------------- streams


def test_a_stream_answers_each_request_and_survives_bad_ones(shared_server, reference):
    """ModelStreamInfer: a bad request gets an error message in its own response, the stream goes on."""
    good = [infer_request(data=x(1, seed)) for seed in range(3)]
    bad = [raw(name="data"), raw(shape=(0, 1, 32, 32)), infer_request("nope"), raw(name="i" * HUGE)]
    requests = [good[0], bad[0], bad[1], good[1], bad[2], bad[3], good[2]]
    for i, request in enumerate(requests):
        request.id = str(i)
    with grpc.insecure_channel(shared_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert sorted(a.infer_response.id for a in answers) == [str(i) for i in range(len(requests))]
    by_id = {a.infer_response.id: a for a in answers}
    for i, seed in ((0, 0), (3, 1), (6, 2)):
        assert by_id[str(i)].error_message == ""
        np.testing.assert_allclose(
            output_array(by_id[str(i)].infer_response, "logits"), reference(x(1, seed)), rtol=1e-4, atol=1e-5
        )
    for i, fragment in ((1, "unknown input 'data'"), (2, "batch dimension"), (4, "unknown model 'nope'")):
        assert fragment in by_id[str(i)].error_message
    assert 0 < len(by_id["5"].error_message) <= MAX_DETAILS
    assert_alive_and_correct(shared_server, reference)


# ------------------------------------------------------------------------------------------ other RPCs


def test_the_other_rpcs_refuse_what_they_cannot_answer(stub, shared_server, reference):
    name = "m" * HUGE
    calls = [
        (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=10), NOT_FOUND),
        (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10), INVALID),
        (lambda: stub.ModelConfig(pb.ModelConfigRequest(name=MODEL, version="x"), timeout=10), NOT_FOUND),
        (lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=10), INVALID),
        (
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ]
    for call, code in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code, info.value.details()[:300]
        assert len(info.value.details()) <= MAX_DETAILS
    with pytest.raises(grpc.RpcError) as info:  # a name no folder can have: refused before any lookup
        stub.ModelReady(pb.ModelReadyRequest(name=name, version="1"), timeout=10)
    assert info.value.code() == INVALID and len(info.value.details()) <= MAX_DETAILS
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope", version="1"), timeout=10).ready
    for address in (shared_server.address, shared_server.health_address):
        assert health_status(address, "nope") == "NOT_FOUND"
        assert health_status(address, name) == "NOT_FOUND"  # not RESOURCE_EXHAUSTED: the message is short
    assert_alive_and_correct(shared_server, reference)


# ------------------------------------------------------------------------------------- health ports


def test_probes_answer_beside_a_burst_of_stalled_and_garbage_connections(shared_server, reference):
    """64 connections opened at once on the metrics port and left half-sent (a scraper storm, a slow
    client, a connection flood), bytes that are not HTTP/2 sent to both gRPC ports: a kubelet's HTTP probe
    sent right after the burst is answered, and so are the gRPC probes (how fast: `bench --section health`;
    a test on a shared 2-core machine asserts no time)."""
    import socket
    import urllib.parse

    from service.healthcheck import check
    from tests.reliability.fault_kit import health_url, http_status

    metrics = urllib.parse.urlsplit(shared_server.metrics_url)
    stalled = []
    try:
        for _ in range(64):  # all at once: nothing waits for the server to accept the one before
            conn = socket.socket()
            conn.setblocking(False)
            conn.connect_ex((metrics.hostname, metrics.port))
            stalled.append(conn)
        assert http_status(health_url(shared_server, "/v2/health/ready"), timeout=5) == 200
        for conn in stalled:
            conn.setblocking(True)
            conn.settimeout(10)
            conn.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")  # never finished
        for address in (shared_server.address, shared_server.health_address):
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(b"\x16\x03\x01 not a gRPC client " * 100)
        with socket.create_connection((metrics.hostname, metrics.port), timeout=10) as conn:
            conn.sendall(b"GARBAGE " * 2000 + b"\r\n\r\n")
            reply = b""
            while b"400" not in reply and len(reply) < 100_000 and (chunk := conn.recv(4096)):
                reply += chunk
            assert b"400" in reply, f"the metrics port answers garbage with a 400 error page: {reply[:200]!r}"
        assert http_status(health_url(shared_server, "/v2/health/ready"), timeout=5) == 200
        assert check(shared_server.health_address, "", timeout=5)[0]
        assert check(shared_server.address, "", timeout=5)[0]
    finally:
        for conn in stalled:
            conn.close()
    assert_alive_and_correct(shared_server, reference)
