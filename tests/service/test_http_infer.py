"""HTTP/REST inference against the shared server: JSON tensors and Triton's binary tensor data extension,
every input kind (`input`, `pixels`, `image`), the classification extension, and outputs as asked: each
answer equals onnxruntime run in-process on the same data."""

from __future__ import annotations

import gzip
import json
import urllib.request
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelrepo.preprocess import normalize_pixels, preprocess_bytes
from models.lenet import DIGITS_INPUT
from protos.wire import deserialize_bytes, serialize_bytes

INFER = "/v2/models/lenet5/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def reference(artifacts):
    session = ort.InferenceSession(str(artifacts.lenet5_onnx), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})[0]


def x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (rows, 1, 32, 32)).astype(np.float32)


def binary_request(tensors, outputs=None, parameters=None, **extra) -> tuple[bytes, dict[str, str]]:
    """A request whose inputs travel as binary data: ``tensors`` are (name, datatype, shape, raw bytes)."""
    header = {
        "inputs": [
            {"name": n, "datatype": t, "shape": list(s), "parameters": {"binary_data_size": len(raw)}}
            for n, t, s, raw in tensors
        ],
        **extra,
    }
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    return head + b"".join(raw for *_, raw in tensors), {HEADER: str(len(head))}


def split(answer) -> tuple[dict, bytes]:
    """A response's JSON header and the binary data after it."""
    length = answer.headers.get(HEADER.lower())
    if length is None:
        return answer.json(), b""
    return json.loads(answer.body[: int(length)]), answer.body[int(length) :]


def binary_outputs(answer) -> dict[str, np.ndarray | list[bytes]]:
    header, data = split(answer)
    out, offset = {}, 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw, offset = data[offset : offset + size], offset + size
        if output["datatype"] == "BYTES":
            out[output["name"]] = deserialize_bytes(raw)
        else:
            out[output["name"]] = np.frombuffer(raw, "<f4").reshape(output["shape"])
    assert offset == len(data)
    return out


def test_json_tensor_equals_onnxruntime(server, reference):
    batch = x(3)
    answer = server.http(
        "POST",
        INFER,
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 1, 32, 32], "data": batch.tolist()}]},
    )
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json" and HEADER.lower() not in answer.headers
    document = answer.json()
    assert (document["model_name"], document["model_version"]) == ("lenet5", "1")
    assert "id" not in document
    (output,) = document["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [3, 10])
    got = np.asarray(output["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, reference(batch), rtol=1e-5, atol=1e-6)


def test_flat_and_nested_json_data_are_the_same_tensor(server):
    batch = x(2, seed=4)
    answers = [
        server.http(
            "POST",
            "/v2/models/lenet5/versions/1/infer",
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32], "data": data}]},
        ).json()["outputs"][0]["data"]
        for data in (batch.ravel().tolist(), batch.tolist(), batch.reshape(2, -1).tolist())
    ]
    assert answers[0] == answers[1] == answers[2]


def test_binary_tensor_and_binary_output_equal_onnxruntime(server, reference):
    batch = x(4, seed=1)
    body, headers = binary_request(
        [("input", "FP32", batch.shape, batch.tobytes())],
        outputs=[{"name": "logits", "parameters": {"binary_data": True}}],
        id="req-7",
    )
    answer = server.http("POST", INFER, body, headers)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/octet-stream"
    header, data = split(answer)
    assert header["id"] == "req-7"
    assert (
        header["outputs"][0]["parameters"]
        == {"binary_data_size": 4 * 4 * 10}
        == {"binary_data_size": len(data)}
    )
    np.testing.assert_allclose(binary_outputs(answer)["logits"], reference(batch), rtol=1e-5, atol=1e-6)


def test_output_format_follows_binary_data_output_and_binary_data(server, reference):
    batch = x(1, seed=2)
    raw = [("input", "FP32", batch.shape, batch.tobytes())]
    # binary_data_output: the outputs the request does not list come back binary
    answer = server.http("POST", INFER, *binary_request(raw, parameters={"binary_data_output": True}))
    np.testing.assert_allclose(binary_outputs(answer)["logits"], reference(batch), rtol=1e-5, atol=1e-6)
    # a listed output follows its own binary_data (default false: JSON), as Triton's
    for parameters in ({}, {"binary_data": False}):
        body, headers = binary_request(
            raw,
            outputs=[{"name": "logits", "parameters": parameters}],
            parameters={"binary_data_output": True},
        )
        answer = server.http("POST", INFER, body, headers)
        assert HEADER.lower() not in answer.headers
        data = answer.json()["outputs"][0]["data"]
        np.testing.assert_allclose(np.reshape(data, (1, 10)), reference(batch), rtol=1e-5, atol=1e-6)


def top_k(logits: np.ndarray, k: int) -> list[list[tuple[float, int, str]]]:
    return [[(float(row[i]), int(i), str(i)) for i in np.argsort(-row, kind="stable")[:k]] for row in logits]


def parse_classes(entries: list[str]) -> list[tuple[float, int, str]]:
    return [(float(s), int(i), label) for s, i, label in (e.split(":") for e in entries)]


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension(server, reference, binary):
    batch = x(2, seed=3)
    outputs = [{"name": "logits", "parameters": {"classification": 3, "binary_data": binary}}]
    answer = server.http(
        "POST", INFER, *binary_request([("input", "FP32", batch.shape, batch.tobytes())], outputs)
    )
    assert answer.status == 200, answer.body
    header, _ = split(answer)
    (output,) = header["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 3])
    entries = [e.decode() for e in binary_outputs(answer)["logits"]] if binary else output["data"]
    expected = top_k(reference(batch), 3)
    got = parse_classes(entries)
    assert [(i, label) for _, i, label in got] == [(i, label) for row in expected for _, i, label in row]
    np.testing.assert_allclose([s for s, _, _ in got], [s for row in expected for s, _, _ in row], atol=1e-5)


def test_image_input_as_binary_bytes(server, reference, digit_png):
    pngs = [digit_png(40), digit_png(41, size=48)]
    raw = serialize_bytes(pngs)
    answer = server.http("POST", INFER, *binary_request([("image", "BYTES", [2], raw)]))
    assert answer.status == 200, answer.body
    expected = reference(np.stack([preprocess_bytes(p, DIGITS_INPUT) for p in pngs]))
    np.testing.assert_allclose(
        np.reshape(answer.json()["outputs"][0]["data"], (2, 10)), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("binary", [False, True])
def test_pixels_input_json_and_binary(server, reference, binary):
    pixels = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    if binary:
        body, headers = binary_request([("pixels", "UINT8", pixels.shape, pixels.tobytes())])
        answer = server.http("POST", INFER, body, headers)
    else:
        tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.tolist()}
        answer = server.http("POST", INFER, {"inputs": [tensor]})
    assert answer.status == 200, answer.body
    expected = reference(normalize_pixels(pixels, DIGITS_INPUT))
    np.testing.assert_allclose(
        np.reshape(answer.json()["outputs"][0]["data"], (2, 10)), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies(server, reference, encoding):
    batch = x(2, seed=6)
    body, headers = binary_request([("input", "FP32", batch.shape, batch.tobytes())])
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    # the header gives the JSON header's length in the decompressed body, as Triton reads it
    answer = server.http("POST", INFER, compressed, {**headers, "Content-Encoding": encoding})
    assert answer.status == 200, answer.body
    np.testing.assert_allclose(
        np.reshape(answer.json()["outputs"][0]["data"], (2, 10)), reference(batch), rtol=1e-5, atol=1e-6
    )


def test_large_json_request_is_parsed_off_the_event_loop_and_answered(server, reference):
    """32 rows as JSON (about 700 kB, past the inline threshold): parsed in a worker thread."""
    batch = x(32, seed=8)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    assert len(body) > 1 << 18
    answer = server.http("POST", INFER, body)
    assert answer.status == 200, answer.body
    np.testing.assert_allclose(
        np.reshape(answer.json()["outputs"][0]["data"], (32, 10)), reference(batch), rtol=1e-5, atol=1e-6
    )


def test_requests_count_as_http_in_the_metrics_and_statistics(server):
    def counts():
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("model") == "lenet5_int8" and s.name in (
                    "cnnserve_requests_total",
                    "cnnserve_request_duration_seconds_count",
                ):
                    out[(s.name, s.labels["protocol"], s.labels.get("outcome"))] = s.value
        return out

    before = counts()
    stats_before = server.http("GET", "/v2/models/lenet5_int8/stats").json()["model_stats"][0]
    batch = x(2, seed=9)
    body, headers = binary_request([("input", "FP32", batch.shape, batch.tobytes())])
    assert server.http("POST", "/v2/models/lenet5_int8/infer", body, headers).status == 200
    assert server.http("POST", "/v2/models/lenet5_int8/infer", {"inputs": []}).status == 400
    after = counts()
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert delta == {
        ("cnnserve_requests_total", "http", "success"): 1,
        ("cnnserve_requests_total", "http", "invalid_argument"): 1,
        ("cnnserve_request_duration_seconds_count", "http", None): 1,
    }
    stats_after = server.http("GET", "/v2/models/lenet5_int8/versions/1/stats").json()["model_stats"][0]
    assert stats_after["inference_count"] - stats_before["inference_count"] == 2
    success = (
        stats_after["inference_stats"]["success"]["count"]
        - stats_before["inference_stats"]["success"]["count"]
    )
    assert success == 1
