"""Each error case over the wire: its status code, and a message naming the field and what was expected."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos.wire import add_input, output_array, serialize_bytes

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def request(model="lenet5", x=None, version=""):
    r = pb.ModelInferRequest(model_name=model, model_version=version)
    add_input(r, "input", np.zeros((1, 1, 32, 32), np.float32) if x is None else x)
    return r


def raw_request(name="input", datatype="FP32", shape=(1, 1, 32, 32), raw=None):
    r = pb.ModelInferRequest(model_name="lenet5")
    r.inputs.add(name=name, datatype=datatype, shape=shape)
    r.raw_input_contents.append(bytes(4 * int(np.prod(shape))) if raw is None else raw)
    return r


def with_output(r, name="logits", **param):
    out = r.outputs.add(name=name)
    for key, value in param.items():
        setattr(out.parameters["classification"], key, value)
    return r


def both_inputs():
    r = request()
    add_input(r, "image", [b"x"])
    return r


CASES = {
    "unknown model": (
        request("resnet9000"),
        NOT_FOUND,
        "unknown model 'resnet9000'; loaded models: faulty, lenet5",
    ),
    "unknown version": (
        request(version="7"),
        NOT_FOUND,
        "model 'lenet5' has no version '7' loaded (loaded: 1)",
    ),
    "non-numeric version": (request(version="latest"), NOT_FOUND, "has no version 'latest' loaded"),
    "wrong input name": (
        raw_request(name="data"),
        INVALID,
        "unknown input 'data'; model 'lenet5' expects exactly one of 'input' (FP32 [N, 1, 32, 32]), "
        "'pixels' (UINT8 [N, 32, 32, 1]) or 'image' (BYTES [N], one encoded JPEG/PNG image per row)",
    ),
    "wrong datatype": (
        raw_request(datatype="FP64"),
        INVALID,
        "input 'input': datatype must be FP32, got 'FP64'",
    ),
    "wrong shape": (
        raw_request(shape=(1, 3, 32, 32)),
        INVALID,
        "input 'input': shape must be [N, 1, 32, 32] (NCHW, normalized), got [1, 3, 32, 32]",
    ),
    "byte length": (
        raw_request(raw=b"\0" * 100),
        INVALID,
        "input 'input': raw contents hold 100 bytes, expected 4096 (1024 FP32 elements of shape",
    ),
    "both inputs": (
        both_inputs(),
        INVALID,
        "request has inputs ['input', 'image']; model 'lenet5' expects exactly one of",
    ),
    "no inputs": (
        pb.ModelInferRequest(model_name="lenet5"),
        INVALID,
        "request has no inputs; model 'lenet5' expects exactly one of 'input'",
    ),
    "undecodable image": (
        raw_request("image", "BYTES", (1,), serialize_bytes([b"GIF89a?"])),
        INVALID,
        "input 'image' element 0: cannot decode image: 7 bytes are not one of JPEG, PNG",
    ),
    "image datatype": (
        raw_request("image", "UINT8", (1,), b"\0"),
        INVALID,
        "input 'image': datatype must be BYTES (encoded JPEG/PNG), got 'UINT8'",
    ),
    "image shape": (
        raw_request("image", "BYTES", (1, 2), serialize_bytes([b"a", b"b"])),
        INVALID,
        "input 'image': shape must be [N] or [N, 1]",
    ),
    "batch over max_batch_size": (
        request(x=np.zeros((33, 1, 32, 32), np.float32)),
        INVALID,
        "input 'input': batch of 33 rows exceeds the model's max_batch_size 32",
    ),
    "empty batch": (raw_request(shape=(0, 1, 32, 32)), INVALID, "batch dimension must be >= 1, got 0"),
    "classification not an integer": (
        with_output(request(), string_param="3"),
        INVALID,
        "output 'logits': parameter 'classification' must be an integer",
    ),
    "classification zero": (
        with_output(request(), int64_param=0),
        INVALID,
        "parameter 'classification' must be >= 1, got 0",
    ),
    "unknown requested output": (
        with_output(request(), name="probs"),
        INVALID,
        "unknown output 'probs'; the model has one output 'logits'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_error(stub, case):
    req, code, message = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req, timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()


def test_timeout_parameter_must_be_an_integer(stub):
    r = request()
    r.parameters["timeout"].string_param = "soon"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(r, timeout=30)
    assert info.value.code() == INVALID
    assert "parameter 'timeout' must be an integer number of microseconds" in info.value.details()


def test_backend_failure_fails_only_that_batch_and_the_server_keeps_serving(stub, client):
    before = client.statistics("faulty").model_stats[0].inference_stats.fail.count
    poison = request("faulty", np.full((2, 1, 32, 32), 5.0, np.float32))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(poison, timeout=30)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "model faulty/1 failed on a batch of 2 rows" in info.value.details()
    assert "indices element out of data bounds" in info.value.details()  # onnxruntime's reason
    good = output_array(
        stub.ModelInfer(request("faulty", np.full((2, 1, 32, 32), 0.5, np.float32)), timeout=30), "logits"
    )
    assert good.shape == (2, 10) and np.isfinite(good).all()
    assert client.statistics("faulty").model_stats[0].inference_stats.fail.count == before + 1
    assert client.ready()


def test_invalid_requests_are_counted_as_failures(client, stub):
    before = client.statistics("lenet5").model_stats[0].inference_stats.fail.count
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(raw_request(shape=(1, 3, 32, 32)), timeout=30)
    assert client.statistics("lenet5").model_stats[0].inference_stats.fail.count == before + 1


def test_statistics_of_unknown_model(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope"), timeout=10)
    assert info.value.code() == NOT_FOUND and "unknown model 'nope'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="lenet5", version="3"), timeout=10)
    assert info.value.code() == NOT_FOUND and "no version '3'" in info.value.details()
