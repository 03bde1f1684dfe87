"""Triton's own client (``tritonclient.grpc``) against our server, unchanged: the wire-compatibility claim.

tritonclient's generated modules define the same ``inference.*`` protobuf symbols as ours, so the two
cannot be imported in one process: the client runs in a subprocess that imports only tritonclient, and
its answers come back as JSON and .npy files, compared here with onnxruntime on the same data.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnxruntime as ort
import pytest

from modelrepo.preprocess import preprocess_bytes
from models.lenet import DIGITS_INPUT
from tests.service.client_script import run_client_script

TRITON_CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, folder = sys.argv[1], sys.argv[2]
x = np.load(f"{folder}/x.npy")
pngs = [open(f"{folder}/{i}.png", "rb").read() for i in range(2)]
client = grpcclient.InferenceServerClient(url)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("lenet5"),
    "server_metadata": client.get_server_metadata(as_json=True),
    "model_metadata": client.get_model_metadata("lenet5", as_json=True),
    "model_config": client.get_model_config("lenet5", as_json=True),
    "statistics_before": client.get_inference_statistics("lenet5", as_json=True),
}

tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
result = client.infer("lenet5", [tensor], outputs=[grpcclient.InferRequestedOutput("logits")])
np.save(f"{folder}/logits.npy", result.as_numpy("logits"))
result = client.infer("lenet5", [tensor], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
out["top3"] = [[entry.decode() for entry in row] for row in result.as_numpy("logits")]
out["top3_response"] = result.get_response(as_json=True)

image = grpcclient.InferInput("image", [len(pngs)], "BYTES")
image.set_data_from_numpy(np.array(pngs, dtype=np.object_))
np.save(f"{folder}/image_logits.npy", client.infer("lenet5", [image]).as_numpy("logits"))

try:
    client.infer("no_such_model", [tensor])
    out["error"] = None
except InferenceServerException as e:
    out["error"] = {"status": e.status(), "message": e.message()}

out["statistics_after"] = client.get_inference_statistics("lenet5", as_json=True)
out["index"] = client.get_model_repository_index(as_json=True)
out["protos_imported"] = "protos" in sys.modules
client.close()
print(json.dumps(out))
"""


def tritonclient_installed() -> bool:
    # find_spec of the top-level package only: importing tritonclient.grpc here would clash with ours
    spec = importlib.util.find_spec("tritonclient")
    return spec is not None and any(
        os.path.isfile(os.path.join(p, "grpc", "service_pb2.py")) for p in spec.submodule_search_locations
    )


pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        not tritonclient_installed(), reason="tritonclient[grpc] is not installed (the dev extra installs it)"
    ),
]


@pytest.fixture(scope="module")
def triton_session(server, artifacts, digit_png, tmp_path_factory):
    """Run the tritonclient script once; returns (its JSON, the folder with its inputs and outputs)."""
    folder = tmp_path_factory.mktemp("tritonclient")
    script = TRITON_CLIENT_SCRIPT
    out = run_client_script(script, server.address, folder, digit_png, rows=5, x_seed=7, png_seed=30)
    return out, folder


def reference(artifacts, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(artifacts.lenet5_onnx), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_health_and_metadata(triton_session):
    out, _ = triton_session
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server_metadata"]["name"] == "cnnserve"
    assert {"classification", "model_repository", "statistics"} <= set(out["server_metadata"]["extensions"])
    meta = out["model_metadata"]
    assert meta["name"] == "lenet5" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert inputs == {
        "input": ("FP32", ["-1", "1", "32", "32"]),
        "pixels": ("UINT8", ["-1", "32", "32", "1"]),
        "image": ("BYTES", ["-1"]),
    }
    config = out["model_config"]["config"]
    assert config["name"] == "lenet5" and config["max_batch_size"] == 32  # as python -m export wrote it
    assert [i["name"] for i in config["input"]] == ["input", "pixels", "image"]
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_infer_fp32_input_equals_onnxruntime(triton_session, artifacts):
    _, folder = triton_session
    x = np.load(folder / "x.npy")
    np.testing.assert_allclose(np.load(folder / "logits.npy"), reference(artifacts, x), rtol=1e-5, atol=1e-6)


def test_classification_extension(triton_session, artifacts):
    out, folder = triton_session
    logits = reference(artifacts, np.load(folder / "x.npy"))
    assert len(out["top3"]) == 5
    for row, entries in zip(logits, out["top3"], strict=True):
        top = np.argsort(-row)[:3]
        parsed = [entry.split(":") for entry in entries]
        assert [int(index) for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [str(i) for i in top]  # labels.txt: digits
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], row[top], atol=1e-5)
    output = out["top3_response"]["outputs"][0]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "BYTES", ["5", "3"])


def test_image_bytes_input(triton_session, artifacts):
    _, folder = triton_session
    x = np.stack([preprocess_bytes((folder / f"{i}.png").read_bytes(), DIGITS_INPUT) for i in range(2)])
    np.testing.assert_allclose(
        np.load(folder / "image_logits.npy"), reference(artifacts, x), rtol=1e-5, atol=1e-6
    )


def test_error_carries_our_status_and_message(triton_session):
    out, _ = triton_session
    assert out["error"]["status"] == "StatusCode.NOT_FOUND"
    assert "unknown model 'no_such_model'; loaded models: faulty, lenet5" in out["error"]["message"]


def test_statistics_and_repository_index(triton_session):
    out, _ = triton_session
    (before,) = out["statistics_before"]["model_stats"]
    (after,) = out["statistics_after"]["model_stats"]
    assert after["name"] == "lenet5" and after["version"] == "1"
    # the script's three requests: 5 + 5 + 2 rows (int64 fields arrive as JSON strings)
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 12
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"].get("success", {}).get("count", 0)) == 3
    index = {(m["name"], m.get("version", "")): m.get("state") for m in out["index"]["models"]}
    assert index[("lenet5", "1")] == "READY" and index[("lenet5_int8", "1")] == "READY"
    assert not out["protos_imported"]
