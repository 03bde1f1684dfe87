"""Every error the HTTP port answers, against the shared server: hostile bodies get a 4xx naming the field
at fault, and each error class of the data plane its HTTP status (the one that matches its gRPC status),
always as ``{"error": "..."}``."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness.waiting import wait_for

INFER = "/v2/models/lenet5/infer"
HEADER = "Inference-Header-Content-Length"
ROW = np.zeros((1, 1, 32, 32), np.float32)


def tensor(**fields) -> dict:
    base = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": ROW.ravel().tolist()}
    return {**base, **fields}


def binary(header: dict, data: bytes, length: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + data, {HEADER: str(len(head) if length is None else length)}


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BINARY_INPUT = {
    "name": "input",
    "datatype": "FP32",
    "shape": [1, 1, 32, 32],
    "parameters": {"binary_data_size": 4096},
}

# (what, body, headers, expected status, the error message or a part of it)
HOSTILE = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "inference request: malformed JSON: Expecting value"),
    ("not UTF-8", b"\xff\xfe{}", {}, 400, "inference request: malformed JSON"),
    ("not an object", b"[1, 2]", {}, 400, "inference request: expected a JSON object, got a list"),
    ("no inputs", {"outputs": []}, {}, 400, "'inputs' must be a list of input tensors, got null"),
    (
        "inputs not a list",
        {"inputs": {"name": "input"}},
        {},
        400,
        "'inputs' must be a list of input tensors, got an object",
    ),
    (
        "input not an object",
        {"inputs": [3]},
        {},
        400,
        "inputs[0]: must be an object with name, datatype, shape and data, got a number",
    ),
    (
        "name not a string",
        {"inputs": [tensor(name=7)]},
        {},
        400,
        "inputs[0]: 'name' must be a string, got a number",
    ),
    (
        "datatype missing",
        {"inputs": [without(tensor(), "datatype")]},
        {},
        400,
        "input 'input': 'datatype' must be a string, got null",
    ),
    (
        "negative dimension",
        {"inputs": [tensor(shape=[1, -1, 32, 32])]},
        {},
        400,
        "input 'input': 'shape' must be a list of non-negative integers, got [1, -1, 32, 32]",
    ),
    (
        "shape of strings",
        {"inputs": [tensor(shape="1,1,32,32")]},
        {},
        400,
        "'shape' must be a list of non-negative integers",
    ),
    (
        "no data",
        {"inputs": [without(tensor(), "data")]},
        {},
        400,
        "input 'input': set exactly one of 'data' and parameter 'binary_data_size', got neither",
    ),
    (
        "data not a list",
        {"inputs": [tensor(data="0.0")]},
        {},
        400,
        "input 'input': 'data' must be a list of the elements in row-major order",
    ),
    (
        "strings as FP32",
        {"inputs": [tensor(data=["0.5"] * 1024)]},
        {},
        400,
        "input 'input': FP32 elements must be numbers",
    ),
    (
        "ragged nesting",
        {"inputs": [tensor(data=[[0.0] * 1000, [0.0] * 24])]},
        {},
        400,
        "input 'input': 'data' must be a flat list of numbers, or lists nested evenly to the tensor's shape",
    ),
    (
        "floats as UINT8",
        {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 1], "data": [0.5] * 1024}]},
        {},
        400,
        "input 'pixels': UINT8 elements must be integers",
    ),
    (
        "numbers as BYTES",
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [[7]]}]},
        {},
        400,
        "input 'image': BYTES elements must be strings, got a number",
    ),
    (
        "unknown datatype",
        {"inputs": [tensor(datatype="FP8")]},
        {},
        400,
        "input 'input': unknown datatype 'FP8'",
    ),
    (
        "too few elements",
        {"inputs": [tensor(data=[0.0] * 10)]},
        {},
        400,
        "input 'input': 'data' holds 10 elements but shape [1, 1, 32, 32] has 1024",
    ),
    (
        "parameter of an object",
        {"inputs": [tensor()], "parameters": {"timeout": {"us": 5}}},
        {},
        400,
        "request: parameter 'timeout' must be a string, number or boolean, got an object",
    ),
    (
        "binary_data_output not a flag",
        {"inputs": [tensor()], "parameters": {"binary_data_output": "yes"}},
        {},
        400,
        "request: parameter 'binary_data_output' must be a boolean, got 'yes'",
    ),
    ("id not a string", {"id": 5, "inputs": [tensor()]}, {}, 400, "'id' must be a string, got a number"),
    (
        "outputs not a list",
        {"inputs": [tensor()], "outputs": "logits"},
        {},
        400,
        "'outputs' must be a list of requested outputs, got a string",
    ),
    (
        "output without a name",
        {"inputs": [tensor()], "outputs": [{}]},
        {},
        400,
        "outputs[0]: must be an object with a string 'name'",
    ),
    (
        "binary_data not a flag",
        {"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]},
        {},
        400,
        "output 'logits': parameter 'binary_data' must be a boolean, got 1",
    ),
    (
        "shared memory input",
        {"inputs": [tensor(parameters={"shared_memory_region": "r"})]},
        {},
        400,
        "input 'input': shared memory ('shared_memory_region') is not supported",
    ),
    (
        "unknown output",
        {"inputs": [tensor()], "outputs": [{"name": "probs"}]},
        {},
        400,
        "unknown output 'probs'; the model has one output 'logits'",
    ),
    (
        "bad classification",
        {"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": {"classification": "3"}}]},
        {},
        400,
        "output 'logits': parameter 'classification' must be an integer",
    ),
    (
        "unknown input",
        {"inputs": [tensor(name="x")]},
        {},
        400,
        "unknown input 'x'; model 'lenet5' expects exactly one of 'input'",
    ),
    (
        "batch too large",
        {"inputs": [tensor(shape=[33, 1, 32, 32], data=[0.0] * 33 * 1024)]},
        {},
        400,
        "batch of 33 rows exceeds the model's max_batch_size 32",
    ),
    (
        "both data and binary",
        *binary({"inputs": [{**BINARY_INPUT, "data": [0.0]}]}, bytes(4096)),
        400,
        "input 'input': set exactly one of 'data' and parameter 'binary_data_size', got both",
    ),
    (
        "binary without the header",
        json.dumps({"inputs": [BINARY_INPUT]}).encode(),
        {},
        400,
        "input 'input': binary data (parameter 'binary_data_size') needs the header "
        "Inference-Header-Content-Length",
    ),
    (
        "header length not a number",
        b"{}",
        {HEADER: "ten"},
        400,
        "header Inference-Header-Content-Length must be an integer, got 'ten'",
    ),
    (
        "header length zero",
        b"{}",
        {HEADER: "0"},
        400,
        "header Inference-Header-Content-Length is 0 (a raw binary request without a JSON header)",
    ),
    (
        "header length past the body",
        *binary({"inputs": [BINARY_INPUT]}, bytes(4096), length=10**6),
        400,
        "header Inference-Header-Content-Length is 1000000 but the request body holds",
    ),
    (
        "binary size past the body",
        *binary({"inputs": [BINARY_INPUT]}, bytes(4000)),
        400,
        "input 'input': binary_data_size is 4096 but only 4000 bytes of binary data remain in the request "
        "body",
    ),
    (
        "binary sizes short of the body",
        *binary({"inputs": [BINARY_INPUT]}, bytes(4100)),
        400,
        "the request body holds 4100 bytes after the JSON header, but the inputs' binary_data_size add up "
        "to 4096",
    ),
    (
        "binary size not a count",
        *binary({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": -1}}]}, b""),
        400,
        "parameter 'binary_data_size' must be a non-negative integer, got -1",
    ),
    (
        "binary size disagrees with the shape",
        *binary({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 400}}]}, bytes(400)),
        400,
        "input 'input': raw contents hold 400 bytes, expected 4096",
    ),
    (
        "unknown content encoding",
        b"{}",
        {"Content-Encoding": "br"},
        415,
        "header Content-Encoding 'br' is not supported; send gzip, deflate or identity",
    ),
    (
        "corrupt gzip",
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        "request body is not valid gzip data (Content-Encoding)",
    ),
]


@pytest.mark.parametrize(
    ("what", "body", "headers", "status", "message"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_requests_get_a_clear_4xx(server, what, body, headers, status, message):
    answer = server.http("POST", INFER, body, headers)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert message in error, error


def infer_body(rows: int = 1, value: float = 0.0) -> dict:
    return {"inputs": [tensor(shape=[rows, 1, 32, 32], data=[value] * rows * 1024)]}


def test_unknown_model_or_version_is_404(server):
    answer = server.http("POST", "/v2/models/ghost/infer", infer_body())
    assert answer.status == 404
    assert answer.json()["error"].startswith("unknown model 'ghost'; loaded models: ")
    answer = server.http("POST", "/v2/models/lenet5/versions/7/infer", infer_body())
    assert answer.status == 404 and "lenet5" in answer.json()["error"]
    assert server.http("GET", "/v2/models/ghost").status == 404
    assert server.http("GET", "/v2/models/ghost/config").status == 404


def test_backend_failure_is_500_and_fails_only_its_request(server):
    answer = server.http("POST", "/v2/models/faulty/infer", infer_body(value=2.0))  # >= 1 breaks it
    assert answer.status == 500
    assert answer.json()["error"]
    assert server.http("POST", "/v2/models/faulty/infer", infer_body(value=0.5)).status == 200


def test_timeout_parameter_expiring_in_the_queue_is_504(server):
    body = {**infer_body(), "parameters": {"timeout": 50_000}}  # microseconds; the model waits 300 ms
    answer = server.http("POST", "/v2/models/lenet5_batched/infer", body)
    assert answer.status == 504
    assert "passed its deadline before it could run" in answer.json()["error"]


def test_full_queue_is_429(server):
    """lenet5_tiny_queue waits 1 s for a batch and queues at most 2 requests."""
    with ThreadPoolExecutor(2) as pool:
        waiting = [
            pool.submit(server.http, "POST", "/v2/models/lenet5_tiny_queue/infer", infer_body())
            for _ in range(2)
        ]
        model = {"model": "lenet5_tiny_queue"}
        wait_for(lambda: server.metric("cnnserve_queue_depth", **model) == 2, 10, "two requests in the queue")
        answer = server.http("POST", "/v2/models/lenet5_tiny_queue/infer", infer_body())
        assert answer.status == 429, answer.body
        assert (
            "model lenet5_tiny_queue/1 queue is full (2 requests waiting); retry later"
            in answer.json()["error"]
        )
        assert [f.result().status for f in waiting] == [200, 200]


def test_a_client_that_disconnects_cancels_its_request(server):
    """As a cancelled RPC on gRPC: the request leaves the batcher queue unanswered and counts as cancelled
    (lenet5_tiny_queue waits 1 s for a batch)."""
    model = {"model": "lenet5_tiny_queue"}
    cancelled = {**model, "protocol": "http", "outcome": "cancelled"}
    before = server.metric("cnnserve_requests_total", **cancelled)
    executions = server.http("GET", "/v2/models/lenet5_tiny_queue/stats").json()["model_stats"][0]
    body = json.dumps(infer_body()).encode()
    port = int(server.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        head = f"POST /v2/models/lenet5_tiny_queue/infer HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode() + body)
        wait_for(lambda: server.metric("cnnserve_queue_depth", **model) == 1, 10, "the request in the queue")
    cancellations = lambda: server.metric("cnnserve_requests_total", **cancelled)  # noqa: E731
    wait_for(lambda: cancellations() == before + 1, 10, "the cancellation")
    assert server.metric("cnnserve_queue_depth", **model) == 0
    after = server.http("GET", "/v2/models/lenet5_tiny_queue/stats").json()["model_stats"][0]
    assert after["execution_count"] == executions["execution_count"]  # nothing was computed
