"""JSON tensors are bounded before they are parsed and materialised: the JSON part of an HTTP infer
request past --max-json-bytes is refused (413) before it is parsed, from its headers where they say its
size; JSON ``data`` is counted against the declared shape before it is converted. In-process."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from service.protocol.http_codec import MAX_ELEMENTS, element_count, shape_elements
from tests.service.inprocess import linear_model, run, serving

INFER = "/v2/models/lenet5/infer"
ROW = [1, 1, 32, 32]
LIMIT = 8192  # --max-json-bytes in these tests: one LeNet row of JSON zeros fits, four do not


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    return repo


def document(rows: int = 1, data: list | None = None, shape: list | None = None) -> dict:
    values = [0.0] * (1024 * rows) if data is None else data
    tensor = {"name": "input", "datatype": "FP32", "shape": shape or [rows, 1, 32, 32], "data": values}
    return {"inputs": [tensor]}


def test_element_count_walks_nesting_without_converting():
    assert element_count([]) == 0
    assert element_count([1, 2, 3]) == 3
    assert element_count([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]) == 8
    assert element_count([[], [1, 2]]) == 2
    with pytest.raises(ValueError, match="mixed"):
        element_count([[1, 2], 3])


def test_shape_elements_stop_past_the_limit():
    assert shape_elements([]) == 1
    assert shape_elements([2, 3, 4]) == 24
    assert shape_elements([0, 10**400]) == 0
    assert shape_elements([10**400] * 16) is None
    assert shape_elements([MAX_ELEMENTS, 2]) is None


def test_json_past_the_limit_is_refused_pointing_to_binary_data_and_grpc(repo):
    async def main():
        async with serving(repo, "--max-json-bytes", str(LIMIT)) as s:
            small = await s.http.post(INFER, json=document(1))
            large = await s.http.post(INFER, json=document(4))
            tensor = {"name": "input", "datatype": "FP32", "shape": [4, 1, 32, 32]}
            tensor["parameters"] = {"binary_data_size": 4 * 4096}
            head = json.dumps({"inputs": [tensor]}).encode()
            binary = await s.http.post(
                INFER,
                content=head + np.zeros(4 * 1024, np.float32).tobytes(),
                headers={"Inference-Header-Content-Length": str(len(head))},
            )
            zipped = await s.http.post(
                INFER,
                content=gzip.compress(json.dumps(document(4)).encode()),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
            return small, large, binary, zipped

    small, large, binary, zipped = run(main())
    assert small.status_code == 200 and binary.status_code == 200  # the binary part does not count
    for answer in (large, zipped):
        assert answer.status_code == 413, answer.text
        message = answer.json()["error"]
        assert f"limit of {LIMIT} bytes for JSON (--max-json-bytes)" in message
        assert "Inference-Header-Content-Length" in message and "gRPC" in message


def test_a_declared_json_size_past_the_limit_is_refused_before_the_body_is_read(repo):
    pulled = []

    async def body(chunks: int):
        for _ in range(chunks):
            pulled.append(1)
            yield b" " * 1024

    async def main():
        async with serving(repo, "--max-json-bytes", str(LIMIT)) as s:
            by_length = await s.http.post(INFER, content=body(64), headers={"Content-Length": str(64 * 1024)})
            by_header = await s.http.post(
                INFER,
                content=body(64),
                headers={"Content-Length": str(64 * 1024), "Inference-Header-Content-Length": str(LIMIT + 1)},
            )
            return by_length, by_header

    by_length, by_header = run(main())
    assert (by_length.status_code, by_header.status_code) == (413, 413)
    assert f"JSON is {64 * 1024} bytes" in by_length.json()["error"]
    assert f"JSON is {LIMIT + 1} bytes" in by_header.json()["error"]
    assert not pulled


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            document(data=[0.0] * 10),
            "input 'input': 'data' holds 10 elements but shape [1, 1, 32, 32] has 1024",
        ),
        (
            document(data=[[0.0] * 1024] * 2, shape=ROW),
            "input 'input': 'data' holds 2048 elements but shape [1, 1, 32, 32] has 1024",
        ),
        (
            document(data=[0.0], shape=[8_000_000, 1, 32, 32]),
            "input 'input': 'data' holds 1 elements but shape [8000000, 1, 32, 32] has 8192000000",
        ),
        (
            document(data=[0.0], shape=[2**40, 2**40]),
            f"'data' holds 1 elements but shape [1099511627776, 1099511627776] has more than {MAX_ELEMENTS}",
        ),
        (
            document(data=[[0.0] * 512, 0.0], shape=ROW),
            "input 'input': 'data' must be a flat list of elements, or lists nested evenly",
        ),
    ],
    ids=["too few", "too many nested", "8M rows", "past the bound", "mixed nesting"],
)
def test_json_data_is_counted_against_the_shape_before_conversion(repo, doc, message):
    async def main():
        async with serving(repo) as s:
            return await s.http.post(INFER, json=doc)

    answer = run(main())
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_a_body_past_the_message_limit_is_refused_as_such_first(repo):
    async def main():
        async with serving(repo, "--max-json-bytes", str(LIMIT), "--max-message-bytes", "65536") as s:
            return await s.http.post(INFER, content=b" " * 70_000)

    answer = run(main())
    assert answer.status_code == 413
    assert "exceeds the server's limit of 65536 bytes (--max-message-bytes)" in answer.json()["error"]
