"""The real MLServer (1.7.1, an onnxruntime custom runtime) serving the session's LeNet-5: Triton's client
gets onnxruntime's logits; ModelMetadata lists the tensors only where model-settings.json declares them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from harness.peers import PeerUnavailable, mlserver
from harness.peers.common import http_ok
from harness.server import ROOT
from service.client import InferenceClient
from tests.interop.support import assert_logits_match, reference_logits, run_probe, unavailable

pytestmark = pytest.mark.peers

BARE = "lenet5_bare"  # the same file, no tensors in model-settings.json


@pytest.fixture(scope="module")
def mlserver_lenet(mlserver_install, lenet5_onnx, tmp_path_factory):
    """One MLServer, two models on the same ONNX file: ``lenet5`` declares its tensors, ``lenet5_bare``
    does not."""
    work = tmp_path_factory.mktemp("mlserver_peer")
    root = work / "models"
    mlserver.write_model(lenet5_onnx, root, declare_inputs=True)
    mlserver.write_model(dataclasses.replace(lenet5_onnx, name=BARE), root, declare_inputs=False)
    try:
        server = mlserver.start(mlserver_install, root, log_path=work / "mlserver.log")
    except PeerUnavailable as e:
        unavailable("mlserver", e)
    yield server
    server.stop()


def batch(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 32, 32), dtype=np.float32)


def tensors(metadata: dict, kind: str) -> list[tuple]:
    return [(t["name"], t["datatype"], t["shape"]) for t in metadata.get(kind, [])]


def test_tritonclient_logits_match_onnxruntime(mlserver_lenet, lenet5_onnx, tmp_path):
    x = batch(6, seed=3)
    out = run_probe(mlserver_lenet.grpc_address, tmp_path, x, ["lenet5", BARE])
    want = reference_logits(lenet5_onnx, x)
    assert out["live"] and out["ready"]
    for model in ("lenet5", BARE):
        assert out["models"][model]["ready"], model
        assert_logits_match(np.load(tmp_path / f"{model}.npy"), want)  # one request, six rows
        assert_logits_match(np.load(tmp_path / f"{model}.rows.npy"), want)  # six requests at once


def test_metadata_with_and_without_declared_inputs(mlserver_lenet, tmp_path):
    out = run_probe(mlserver_lenet.grpc_address, tmp_path, batch(1, seed=4), ["lenet5", BARE])
    declared, bare = out["models"]["lenet5"]["metadata"], out["models"][BARE]["metadata"]
    assert (declared["name"], declared["platform"]) == ("lenet5", "onnxruntime")
    assert tensors(declared, "inputs") == [("input", "FP32", ["-1", "1", "32", "32"])]
    assert tensors(declared, "outputs") == [("logits", "FP32", ["-1", "10"])]
    assert (bare["name"], bare["platform"]) == (BARE, "onnxruntime")
    assert tensors(bare, "inputs") == [] and tensors(bare, "outputs") == []
    assert mlserver_lenet.options["declared_inputs"] == {"lenet5": True, BARE: False}


def test_our_client_infers(mlserver_lenet, lenet5_onnx):
    x = batch(3, seed=5)
    with InferenceClient(mlserver_lenet.grpc_address, timeout=30) as client:
        assert client.ready() and client.model_ready("lenet5")
        assert_logits_match(client.infer("lenet5", x), reference_logits(lenet5_onnx, x))
        assert [(t.name, list(t.shape)) for t in client.model_metadata(BARE).inputs] == []


def test_metrics_endpoint(mlserver_lenet):
    assert mlserver_lenet.metrics_url is not None and http_ok(mlserver_lenet.metrics_url)


def test_adaptive_batching_keeps_rows_apart(mlserver_install, lenet5_onnx, tmp_path):
    """Adaptive batching on (up to 8 requests, 50 ms) and metrics off: eight one-row requests in flight
    are merged by MLServer and each still gets its own row's logits."""
    try:
        server = mlserver.serve_onnx(
            [lenet5_onnx],
            tmp_path,
            install=mlserver_install,
            adaptive_batch_size=8,
            adaptive_batch_time_s=0.05,
            metrics=False,
        )
    except PeerUnavailable as e:
        unavailable("mlserver", e)
    with server:
        assert server.metrics_url is None
        assert server.options["adaptive_batching"] == {"lenet5": (8, 0.05)}
        settings = json.loads((tmp_path / "mlserver_models" / "lenet5" / "model-settings.json").read_text())
        assert (settings["max_batch_size"], settings["max_batch_time"]) == (8, 0.05)
        x = batch(8, seed=6)
        run_probe(server.grpc_address, tmp_path / "probe", x, ["lenet5"])
    assert_logits_match(np.load(tmp_path / "probe" / "lenet5.rows.npy"), reference_logits(lenet5_onnx, x))


def test_loadtest_reads_declared_inputs(mlserver_lenet, tmp_path):
    """The load tester shapes its random input from ModelMetadata, so it runs against the model that
    declares its inputs (the bare one needs a shape given on the command line)."""
    report = tmp_path / "loadtest.json"
    cmd = [sys.executable, "-m", "loadtest", "--url", mlserver_lenet.grpc_address, "--model", "lenet5"]
    cmd += ["--concurrency", "1", "--warmup", "0.2", "--window", "0.5", "--windows", "2", "--duration", "2"]
    cmd += ["--stability", "0.5", "--quiet", "--json", str(report)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (step,) = json.loads(report.read_text())["steps"]
    assert step["totals"]["sent"] == step["totals"]["ok"] > 0 and step["totals"]["errors"] == {}


def test_parallel_workers_only_when_asked(mlserver_lenet, mlserver_install, lenet5_onnx, tmp_path):
    """The fixture's server (parallel_workers 0) runs the model in the server process; asked for one
    worker, MLServer starts its inference pool and still answers with onnxruntime's logits."""
    assert mlserver_lenet.processes() == [mlserver_lenet.proc.pid]
    try:
        server = mlserver.serve_onnx([lenet5_onnx], tmp_path, install=mlserver_install, parallel_workers=1)
    except PeerUnavailable as e:
        unavailable("mlserver", e)
    x = batch(2, seed=7)
    with server, InferenceClient(server.grpc_address, timeout=30) as client:
        assert_logits_match(client.infer("lenet5", x), reference_logits(lenet5_onnx, x))
        assert len(server.processes()) > 1  # the server and its worker(s)
