"""Triton's own HTTP client (``tritonclient.http``) against our HTTP port, unchanged: health, metadata,
config, JSON and binary inference, the classification extension, images, errors, statistics and the
repository index. It runs in a subprocess that imports only tritonclient (its generated protobufs clash
with ours in one process, see test_tritonclient.py); its answers come back as JSON and .npy files and are
compared here with onnxruntime on the same data."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from modelrepo.preprocess import preprocess_bytes
from models.lenet import DIGITS_INPUT
from tests.service.client_script import run_client_script

TRITON_HTTP_CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, folder = sys.argv[1], sys.argv[2]
x = np.load(f"{folder}/x.npy")
pngs = [open(f"{folder}/{i}.png", "rb").read() for i in range(2)]
client = httpclient.InferenceServerClient(url)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("lenet5"),
    "version_ready": client.is_model_ready("lenet5", "1"),
    "ghost_ready": client.is_model_ready("ghost"),
    "server_metadata": client.get_server_metadata(),
    "model_metadata": client.get_model_metadata("lenet5"),
    "model_config": client.get_model_config("lenet5"),
    "statistics_before": client.get_inference_statistics("lenet5"),
}


def infer(binary, **output):
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    requested = [httpclient.InferRequestedOutput("logits", binary_data=binary, **output)]
    return client.infer("lenet5", [tensor], outputs=requested, request_id="r1")


json_result = infer(False)
np.save(f"{folder}/json_logits.npy", json_result.as_numpy("logits"))
out["json_response"] = {k: v for k, v in json_result.get_response().items() if k != "outputs"}
binary_result = infer(True)
np.save(f"{folder}/binary_logits.npy", binary_result.as_numpy("logits"))
out["binary_output"] = binary_result.get_output("logits")
for binary in (False, True):
    top = infer(binary, class_count=3).as_numpy("logits")
    out[f"top3_{binary}"] = [[e.decode() if isinstance(e, bytes) else e for e in row] for row in top]

# no outputs listed: the client asks for binary_data_output
image = httpclient.InferInput("image", [len(pngs)], "BYTES")
image.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
np.save(f"{folder}/image_logits.npy", client.infer("lenet5", [image]).as_numpy("logits"))

errors = {}
bad = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
for key, call in {
    "unknown_model": lambda: client.get_model_metadata("ghost"),
    "bad_shape": lambda: client.infer("lenet5", [bad]),
    "load_outside_explicit": lambda: client.load_model("lenet5"),
}.items():
    try:
        call()
        errors[key] = None
    except InferenceServerException as e:
        errors[key] = {"status": e.status(), "message": e.message()}
out["errors"] = errors
out["statistics_after"] = client.get_inference_statistics("lenet5")
out["all_statistics"] = client.get_inference_statistics()
out["index"] = client.get_model_repository_index()
out["protos_imported"] = "protos" in sys.modules
client.close()
print(json.dumps(out))
"""


def tritonclient_http_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in ("tritonclient", "geventhttpclient", "rapidjson")
    )


pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        not tritonclient_http_installed(),
        reason="tritonclient[http] is not installed (the dev extra installs it)",
    ),
]


@pytest.fixture(scope="module")
def triton_http(server, digit_png, tmp_path_factory):
    """Run the tritonclient.http script once; returns (its JSON, the folder with its inputs and outputs)."""
    folder = tmp_path_factory.mktemp("tritonclient_http")
    url = server.http_url.removeprefix("http://")
    out = run_client_script(TRITON_HTTP_CLIENT_SCRIPT, url, folder, digit_png, rows=4, x_seed=11, png_seed=50)
    return out, folder


@pytest.fixture(scope="module")
def reference(artifacts):
    session = ort.InferenceSession(str(artifacts.lenet5_onnx), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})[0]


def test_health_metadata_and_config(triton_http):
    out, _ = triton_http
    assert out["live"] and out["ready"] and out["model_ready"] and out["version_ready"]
    assert not out["ghost_ready"]
    assert out["server_metadata"]["name"] == "cnnserve"
    assert {"classification", "binary_tensor_data", "statistics"} <= set(out["server_metadata"]["extensions"])
    meta = out["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == ("lenet5", ["1"], "onnxruntime_onnx")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}
    config = out["model_config"]
    assert config["name"] == "lenet5" and config["max_batch_size"] == 32
    assert [i["name"] for i in config["input"]] == ["input", "pixels", "image"]
    assert config["input"][0]["dims"] == [1, 32, 32]


@pytest.mark.parametrize("kind", ["json", "binary"])
def test_infer_equals_onnxruntime(triton_http, reference, kind):
    out, folder = triton_http
    x = np.load(folder / "x.npy")
    np.testing.assert_allclose(np.load(folder / f"{kind}_logits.npy"), reference(x), rtol=1e-5, atol=1e-6)
    assert out["json_response"] == {"id": "r1", "model_name": "lenet5", "model_version": "1"}
    assert out["binary_output"]["parameters"] == {"binary_data_size": 4 * 4 * 10}


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension(triton_http, reference, binary):
    out, folder = triton_http
    logits = reference(np.load(folder / "x.npy"))
    rows = out[f"top3_{binary}"]
    assert len(rows) == 4
    for row, entries in zip(logits, rows, strict=True):
        top = np.argsort(-row)[:3]
        parsed = [entry.split(":") for entry in entries]
        assert [int(index) for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [str(i) for i in top]
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], row[top], atol=1e-5)


def test_image_bytes_input(triton_http, reference):
    _, folder = triton_http
    x = np.stack([preprocess_bytes((folder / f"{i}.png").read_bytes(), DIGITS_INPUT) for i in range(2)])
    np.testing.assert_allclose(np.load(folder / "image_logits.npy"), reference(x), rtol=1e-5, atol=1e-6)


def test_errors_carry_our_status_and_message(triton_http):
    errors = triton_http[0]["errors"]
    assert errors["unknown_model"]["status"] == "404"
    assert "unknown model 'ghost'" in errors["unknown_model"]["message"]
    assert errors["bad_shape"]["status"] == "400"
    assert "input 'input': shape must be [N, 1, 32, 32]" in errors["bad_shape"]["message"]
    assert errors["load_outside_explicit"]["status"] == "400"
    assert "--model-control-mode none" in errors["load_outside_explicit"]["message"]


def test_statistics_and_repository_index(triton_http):
    out, _ = triton_http
    (before,) = out["statistics_before"]["model_stats"]
    (after,) = out["statistics_after"]["model_stats"]
    # two JSON and two binary requests of 4 rows (logits, top-3 each), one of 2 images; the bad shape fails
    assert after["inference_count"] - before["inference_count"] == 4 * 4 + 2
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert success == 5
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert {m["name"] for m in out["all_statistics"]["model_stats"]} >= {"lenet5", "lenet5_int8"}
    index = {(m["name"], m["version"]): m["state"] for m in out["index"]}
    assert index[("lenet5", "1")] == "READY"
    assert not out["protos_imported"]
