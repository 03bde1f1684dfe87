"""The real Triton (2.51, Python backend running the ONNX file on onnxruntime) serving the session's LeNet-5:
Triton's own client, our client and our load tester against it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harness.peers import PeerUnavailable, triton
from harness.server import ROOT
from service.client import InferenceClient
from tests.interop.support import assert_logits_match, reference_logits, run_probe, unavailable

pytestmark = pytest.mark.peers

# one closed-loop step at concurrency 1, about two seconds measured
SHORT_RUN = ["--concurrency", "1", "--warmup", "0.2", "--window", "0.5", "--windows", "2", "--duration", "2"]
SHORT_RUN += ["--stability", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def triton_lenet(triton_install, lenet5_onnx, tmp_path_factory):
    """``triton.serve_onnx`` with its defaults (dynamic batching, delay 0)."""
    try:
        server = triton.serve_onnx(
            [lenet5_onnx], tmp_path_factory.mktemp("triton_peer"), install=triton_install
        )
    except PeerUnavailable as e:
        unavailable("triton", e)
    yield server
    server.stop()


def batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 32, 32), dtype=np.float32)


def stats(entry: dict, when: str) -> dict:
    (model_stats,) = entry[f"statistics_{when}"]["model_stats"]
    return {key: int(model_stats.get(key, 0)) for key in ("inference_count", "execution_count")}


def test_tritonclient_logits_match_onnxruntime(triton_lenet, lenet5_onnx, tmp_path):
    x = batch(6)
    out = run_probe(triton_lenet.grpc_address, tmp_path, x, ["lenet5"])
    want = reference_logits(lenet5_onnx, x)
    assert_logits_match(np.load(tmp_path / "lenet5.npy"), want)  # one request, six rows
    assert_logits_match(np.load(tmp_path / "lenet5.rows.npy"), want)  # six requests at once
    assert out["live"] and out["ready"]
    entry = out["models"]["lenet5"]
    assert entry["ready"]
    meta = entry["metadata"]
    assert (meta["name"], meta["platform"], meta["versions"]) == ("lenet5", "python", ["1"])
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input", "FP32", ["-1", "1", "32", "32"])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("logits", "FP32", ["-1", "10"])
    ]
    before, after = stats(entry, "before"), stats(entry, "after")
    assert after["inference_count"] - before["inference_count"] == 12  # rows, as Triton counts them
    assert 2 <= after["execution_count"] - before["execution_count"] <= 7


def test_our_client_works_unchanged(triton_lenet, lenet5_onnx):
    x = batch(5, seed=1)
    with InferenceClient(triton_lenet.grpc_address, timeout=30) as client:
        assert client.live() and client.ready() and client.model_ready("lenet5")
        assert_logits_match(client.infer("lenet5", x), reference_logits(lenet5_onnx, x))
        meta = client.model_metadata("lenet5")
        assert meta.name == "lenet5" and list(meta.versions) == ["1"]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("input", "FP32", [-1, 1, 32, 32])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 10])]
        index = client.repository_index()
        assert [(m.name, m.version, m.state) for m in index] == [("lenet5", "1", "READY")]
        config = client.model_config("lenet5")
        assert (config.name, config.backend, config.max_batch_size) == ("lenet5", "python", 32)
        assert client.server_metadata().name == "triton"
    assert len(triton_lenet.processes()) == 2  # tritonserver and the model instance's Python stub


def test_dynamic_batcher_merges_concurrent_requests(triton_install, lenet5_onnx, tmp_path):
    """Preferred size 8 and a long queue delay: eight one-row requests in flight share executions, and
    each gets its own row's logits back from the batched onnxruntime call."""
    repo = tmp_path / "repo"
    triton.write_python_model(
        lenet5_onnx, repo, triton_install, preferred_batch_sizes=(8,), max_queue_delay_us=500_000
    )
    try:
        server = triton.start(triton_install, repo, log_path=tmp_path / "triton.log")
    except PeerUnavailable as e:
        unavailable("triton", e)
    with server:
        x = batch(8, seed=2)
        out = run_probe(server.grpc_address, tmp_path / "probe", x, ["lenet5"])
    assert_logits_match(np.load(tmp_path / "probe" / "lenet5.rows.npy"), reference_logits(lenet5_onnx, x))
    before, after = stats(out["models"]["lenet5"], "before"), stats(out["models"]["lenet5"], "after")
    assert after["inference_count"] - before["inference_count"] == 16
    # one execution for the 8-row request, and fewer than 8 for the eight one-row requests
    assert after["execution_count"] - before["execution_count"] <= 8


def test_loadtest_reports_success(triton_lenet, tmp_path):
    report = tmp_path / "loadtest.json"
    cmd = [sys.executable, "-m", "loadtest", "--url", triton_lenet.grpc_address, "--model", "lenet5"]
    cmd += SHORT_RUN
    done = subprocess.run(
        [*cmd, "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["model"]["name"] == "lenet5" and result["model"]["max_batch_size"] == 32
    (step,) = result["steps"]
    assert step["totals"]["sent"] == step["totals"]["ok"] > 0
    assert step["totals"]["errors"] == {} and step["errors"] == {}
    assert step["requests_per_s"] > 0
