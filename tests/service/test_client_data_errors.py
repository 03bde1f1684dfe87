"""Whatever a client sends is answered 4xx / a client status naming the field, with a message bounded
before it is built: huge shapes, names, versions and headers; numbers outside what a parameter takes;
text JSON allows and UTF-8 does not. In-process: the HTTP and gRPC front ends over a hand-made model."""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from service.errors import MAX_MESSAGE_BYTES, InvalidInput, clip, public_status
from tests.service.inprocess import linear_model, run, serving

INFER = "/v2/models/lenet5/infer"
ROW = [1, 1, 32, 32]
BINARY_SIZE = {"binary_data_size": 10**400}


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    return repo


def tensor(**overrides) -> dict:
    entry = {"name": "input", "datatype": "FP32", "shape": ROW, "data": [0.0] * 1024}
    entry.update(overrides)
    return entry


def test_clip_shows_a_bounded_start_of_any_value():
    assert clip("lenet5") == "'lenet5'"
    assert clip("x" * 10**6) == repr("x" * 64) + "...(1000000 characters)"
    shape = clip([0] * 8_000_000)
    assert shape.startswith("[0, 0, ") and shape.endswith("...(8000000 items)]") and len(shape) < 100
    assert clip([[1, 2], 3]) == "[[1, 2], 3]"
    assert clip(10**4000) == "<an integer of 13288 bits>"  # str() would fail past 4300 digits
    assert clip({"k": "v" * 1000}) == "<an object of 1 entries>"


def test_public_status_bounds_a_message_before_looking_for_paths():
    message = public_status(InvalidInput("bad " + "/srv/models/secret/x " * 500_000))[1]
    assert len(message.encode()) <= MAX_MESSAGE_BYTES and "shortened" in message
    assert "/" not in message and "secret" not in message  # no path was cut in two and escaped


HTTP_CASES = {
    "huge shape": ({"inputs": [tensor(shape=[0] * 1_000_000)]}, {}, "more than 16"),
    "long input name": ({"inputs": [tensor(name="n" * 1_000_000)]}, {}, "(1000000 characters)"),
    "long datatype": ({"inputs": [tensor(datatype="T" * 1_000_000)]}, {}, "(1000000 characters)"),
    "long output name": (
        {"inputs": [tensor()], "outputs": [{"name": "o" * 1_000_000}]},
        {},
        "(1000000 characters)",
    ),
    "long header length": (
        {"inputs": [tensor()]},
        {"Inference-Header-Content-Length": "9" * 100_000},
        "Inference-Header-Content-Length",
    ),
    "lone surrogate in BYTES data": (
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]},
        {},
        "input 'image': BYTES elements must be valid Unicode text",
    ),
    "timeout past a float": ({"inputs": [tensor()], "parameters": {"timeout": 10**400}}, {}, "'timeout'"),
    "timeout past uint64": ({"inputs": [tensor()], "parameters": {"timeout": 2**64}}, {}, "'timeout'"),
    "timeout infinite": ({"inputs": [tensor()], "parameters": {"timeout": float("inf")}}, {}, "'timeout'"),
    "timeout NaN": ({"inputs": [tensor()], "parameters": {"timeout": float("nan")}}, {}, "'timeout'"),
    "timeout negative": ({"inputs": [tensor()], "parameters": {"timeout": -1}}, {}, "'timeout'"),
    "classification past uint64": (
        {"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": {"classification": 10**30}}]},
        {},
        "'classification'",
    ),
    "classification infinite": (
        {"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": {"classification": 1e400}}]},
        {},
        "'classification'",
    ),
    "rows past a float": ({"inputs": [tensor(shape=[10**400, 1, 32, 32])]}, {}, "input 'input'"),
    "binary size past int64": (
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": ROW, "parameters": BINARY_SIZE}]},
        {},  # the header's length: set when the body is made
        "binary_data_size is <an integer of",
    ),
}


def test_hostile_http_requests_get_400_with_a_short_message_and_log_nothing(repo, caplog):
    async def main():
        answers = {}
        # bodies of megabytes: past --max-json-bytes, which would refuse them before the codec sees them
        async with serving(repo, "--max-json-bytes", str(64 << 20)) as s:
            for what, (document, headers, _) in HTTP_CASES.items():
                body = json.dumps(document).encode()
                if not headers and "binary_data_size" in str(document):
                    headers = {"Inference-Header-Content-Length": str(len(body))}
                answer = await s.http.post(INFER, content=body, headers=headers)
                answers[what] = answer.status_code, answer.json()["error"]
            answers["version"] = (await s.http.get("/v2/models/lenet5/versions/" + "9" * 60_000)).status_code
        return answers

    with caplog.at_level(logging.WARNING):
        answers = run(main())
    assert answers.pop("version") == 404
    for what, (status, message) in answers.items():
        assert status == 400, (what, message)
        assert HTTP_CASES[what][2] in message, (what, message)
        assert len(message.encode()) < 400, what
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_hostile_grpc_requests_get_invalid_argument_with_a_short_message(repo, caplog):
    def request(**tensor_fields) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="lenet5")
        fields = {"name": "input", "datatype": "FP32", "shape": ROW, **tensor_fields}
        message.inputs.add(**fields)
        message.raw_input_contents.append(np.zeros(1024, np.float32).tobytes())
        return message

    cases = {
        "8 MB shape": request(shape=[0] * 1_000_000),
        "long name": request(name="n" * 1_000_000),
        "long datatype": request(datatype="T" * 1_000_000),
        "shape past max rows": request(shape=[2**62, 1, 32, 32]),
    }
    timeout = request()
    timeout.parameters["timeout"].int64_param = -1
    cases["timeout negative"] = timeout
    classification = request()
    classification.outputs.add(name="logits").parameters["classification"].double_param = float("nan")
    cases["classification NaN"] = classification

    async def main():
        answers = {}
        async with serving(repo, grpc_port=True) as s:
            for what, message in cases.items():
                try:
                    await s.stub.ModelInfer(message, timeout=30)
                    answers[what] = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as e:
                    answers[what] = e.code(), e.details()
            try:
                await s.stub.ModelMetadata(pb.ModelMetadataRequest(name="lenet5", version="9" * 100_000))
            except grpc.aio.AioRpcError as e:
                answers["version"] = e.code(), e.details()
        return answers

    with caplog.at_level(logging.WARNING):
        answers = run(main())
    assert answers.pop("version")[0] == grpc.StatusCode.NOT_FOUND
    for what, (code, details) in answers.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, details)
        assert len(details.encode()) < 400, what
    assert "'timeout'" in answers["timeout negative"][1]
    assert "'classification'" in answers["classification NaN"][1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_timeout_at_the_top_of_uint64_is_served(repo):
    """gRPC carries it as uint64_param: its largest value means no deadline (tests/reliability's catalogue
    checks that over gRPC)."""

    async def main():
        async with serving(repo) as s:
            document = {"inputs": [tensor()], "parameters": {"timeout": 2**64 - 1}}
            return (await s.http.post(INFER, json=document)).status_code

    assert run(main()) == 200
