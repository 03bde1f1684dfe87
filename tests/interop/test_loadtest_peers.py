"""``python -m loadtest`` against a real Triton (2.51, the ``nvidia-pytriton`` wheel) and a real MLServer
(1.7.1), both serving the session's LeNet-5 ONNX file; our ``InferenceClient`` against both.

Issue, in part: "`python -m loadtest` takes `--shape`, `--datatype`, `--protocol grpc|http` ... Test it
against a real Triton (from the `nvidia-pytriton` wheel) and MLServer, serving the same ONNX file; skip
with the reason where a peer cannot be installed".

Each run is short (concurrency 1 then 4, 0.5 s windows, at most 1.5 s measured per step) and is judged
on its ``--json`` report and on the server's own count: every request the tool sent succeeded, and the
peer's success counter (Triton ``nv_inference_request_success``, MLServer
``model_infer_request_success``) grew by exactly the number the tool reports sending.

- Triton over gRPC, over HTTP with its binary tensor extension, and over HTTP with ``--http-json``.
  Triton's metadata always lists the config's tensors, so it has no undeclared case.
- MLServer over gRPC and over HTTP with ``--http-json`` (it has no binary tensor extension: the binary
  requests fail, which also shows that the binary mode is not JSON in disguise), with the model's tensors
  declared in model-settings.json and not declared. Undeclared, ``--shape input:1,32,32 --datatype
  input:FP32`` makes it work, and without them the tool exits 2 with a message naming ``--shape`` before
  it sends a single inference.

About 60 s with both peers installed (they are cached; the first install takes a minute or two more).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.peers import PeerServer, PeerUnavailable, mlserver, triton
from harness.server import ROOT
from service.client import InferenceClient
from tests.interop.support import assert_logits_match, reference_logits, unavailable

pytestmark = pytest.mark.peers

BARE = "lenet5_bare"  # MLServer: the same file, no tensors in model-settings.json
SHAPE_FLAGS = ("--shape", "input:1,32,32", "--datatype", "input:FP32")
LEVELS = (1, 4)
SHORT_RUN = ["--concurrency", ",".join(map(str, LEVELS)), "--warmup", "0.2", "--window", "0.5"]
SHORT_RUN += ["--windows", "2", "--duration", "1.5", "--stability", "0.5", "--quiet"]
RUN_TIMEOUT_S = 120
COUNT_WAIT_S = 10.0

# The peer's own request counters (names as prometheus_client's parser gives counter samples).
SUCCESS = {"triton": "nv_inference_request_success_total", "mlserver": "model_infer_request_success_total"}
FAILURE = {"triton": "nv_inference_request_failure_total", "mlserver": "model_infer_request_failure_total"}


@pytest.fixture(scope="module")
def triton_peer(triton_install, lenet5_onnx, tmp_path_factory):
    try:
        server = triton.serve_onnx(
            [lenet5_onnx], tmp_path_factory.mktemp("triton_lt"), install=triton_install
        )
    except PeerUnavailable as e:
        unavailable("triton", e)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlserver_peer(mlserver_install, lenet5_onnx, tmp_path_factory):
    """One MLServer: ``lenet5`` declares its tensors, ``lenet5_bare`` (the same file) does not."""
    work = tmp_path_factory.mktemp("mlserver_lt")
    mlserver.write_model(lenet5_onnx, work / "models", declare_inputs=True)
    mlserver.write_model(dataclasses.replace(lenet5_onnx, name=BARE), work / "models", declare_inputs=False)
    try:
        server = mlserver.start(mlserver_install, work / "models", log_path=work / "mlserver.log")
    except PeerUnavailable as e:
        unavailable("mlserver", e)
    yield server
    server.stop()


def peer_server(request, peer: str) -> PeerServer:
    """The peer's module fixture, started only by the tests that use it."""
    return request.getfixturevalue(f"{peer}_peer")


def run_loadtest(server: PeerServer, protocol: str, model: str, flags, report: Path | None):
    url = server.grpc_address if protocol == "grpc" else server.http_url
    cmd = [sys.executable, "-m", "loadtest", "--url", url, "--protocol", protocol, "--model", model]
    cmd += [*SHORT_RUN, *flags]
    if report is not None:
        cmd += ["--json", str(report)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def _metrics_text(server: PeerServer, seconds: float = 20.0) -> str:
    """The peer's metrics page; its metrics port can come up a little after the server reports ready, so
    a refused connection is retried for a bounded while (a dead server still fails the test)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
                return response.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise
            time.sleep(0.2)


def counted(server: PeerServer, model: str) -> tuple[int, int]:
    """(successful, failed) inference requests of ``model`` by the peer's metrics (0 before the first)."""
    text = _metrics_text(server)
    totals = {SUCCESS[server.peer]: 0.0, FAILURE[server.peer]: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] += sample.value
    return round(totals[SUCCESS[server.peer]]), round(totals[FAILURE[server.peer]])


def counted_once(server: PeerServer, model: str, successes: int) -> tuple[int, int]:
    """The peer's counts once its success count has reached ``successes`` (a request is counted as it is
    answered), or after COUNT_WAIT_S s."""
    deadline = time.monotonic() + COUNT_WAIT_S
    while True:
        counts = counted(server, model)
        if counts[0] >= successes or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"


CASES = {
    "triton-grpc": ("triton", "grpc", "lenet5", ()),
    "triton-http-binary": ("triton", "http", "lenet5", ()),
    "triton-http-json": ("triton", "http", "lenet5", ("--http-json",)),
    "mlserver-grpc": ("mlserver", "grpc", "lenet5", ()),
    "mlserver-http-json": ("mlserver", "http", "lenet5", ("--http-json",)),
    "mlserver-grpc-undeclared": ("mlserver", "grpc", BARE, SHAPE_FLAGS),
    "mlserver-http-json-undeclared": ("mlserver", "http", BARE, ("--http-json", *SHAPE_FLAGS)),
}


@pytest.mark.parametrize(("peer", "protocol", "model", "flags"), list(CASES.values()), ids=list(CASES))
def test_loadtest_runs_clean(request, peer, protocol, model, flags, tmp_path):
    server = peer_server(request, peer)
    before = counted(server, model)
    done = run_loadtest(server, protocol, model, flags, tmp_path / "report.json")
    assert done.returncode == 0, output(done)
    report = json.loads((tmp_path / "report.json").read_text())

    assert (report["options"]["protocol"], report["options"]["http_json"]) == (
        protocol,
        "--http-json" in flags,
    )
    described = report["model"]
    assert described["name"] == model
    # Triton answers ModelConfig (over both protocols); MLServer has none
    assert described["max_batch_size"] == (32 if peer == "triton" else None)
    declared = [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    assert described["inputs"] == ([] if model == BARE else declared)
    sent_input = {k: report["input"][k] for k in ("name", "datatype", "shape", "rows_per_request")}
    assert sent_input == {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "rows_per_request": 1}

    assert [step["level"] for step in report["steps"]] == list(LEVELS)
    for step in report["steps"]:
        totals = step["totals"]
        assert step["requests"] > 0 and step["errors"] == {} and totals["errors"] == {}, step["errors"]
        assert totals["sent"] == totals["ok"] >= step["requests"]
        measured = step["window_summaries"][-step["measured_windows"] :]
        assert step["requests"] == sum(w["requests"] for w in measured)
        assert step["requests_per_s"] == pytest.approx(step["requests"] / step["measured_s"])
        assert step["latency"]["p50"] <= step["latency"]["p99"] < RUN_TIMEOUT_S

    sent = sum(step["totals"]["sent"] for step in report["steps"])
    after = counted_once(server, model, before[0] + sent)
    assert (after[0] - before[0], after[1] - before[1]) == (sent, 0), "the peer counted otherwise"


@pytest.mark.parametrize(
    ("protocol", "flags", "missing"),
    [
        ("grpc", (), "--shape"),
        ("http", ("--http-json",), "--shape"),
        ("grpc", ("--shape", "input:1,32,32"), "--datatype input:"),
    ],
    ids=["grpc", "http-json", "grpc-shape-only"],
)
def test_undeclared_input_needs_shape_and_datatype(mlserver_peer, protocol, flags, missing, tmp_path):
    before = counted(mlserver_peer, BARE)
    done = run_loadtest(mlserver_peer, protocol, BARE, flags, tmp_path / "report.json")
    assert done.returncode == 2, output(done)
    assert missing in done.stderr and BARE in done.stderr, done.stderr
    assert not (tmp_path / "report.json").exists()
    assert counted(mlserver_peer, BARE) == before  # refused before any inference was sent


def test_mlserver_refuses_binary_tensors(mlserver_peer, tmp_path):
    """Without ``--http-json`` the tool posts Triton's binary tensor extension, which MLServer cannot
    read: no request succeeds, the tool exits 1 and reports the server's 500s."""
    done = run_loadtest(mlserver_peer, "http", "lenet5", (), tmp_path / "report.json")
    assert done.returncode == 1, output(done)
    assert "no successful request" in done.stderr
    for step in json.loads((tmp_path / "report.json").read_text())["steps"]:
        assert step["totals"]["ok"] == 0 and step["totals"]["sent"] > 0
        assert step["totals"]["errors"].get("INTERNAL", 0) > 0, step["totals"]["errors"]
        assert "HTTP 500" in step["error_samples"]["INTERNAL"]


def test_our_client_gets_onnxruntime_logits_from_both_peers(triton_peer, mlserver_peer, request):
    lenet5_onnx = request.getfixturevalue("lenet5_onnx")  # after the peers: a missing one skips first
    rng = np.random.default_rng(11)
    targets = [(triton_peer, "lenet5"), (mlserver_peer, "lenet5"), (mlserver_peer, BARE)]
    for rows in (1, 7):
        x = rng.standard_normal((rows, *lenet5_onnx.dims), dtype=np.float32)
        want = reference_logits(lenet5_onnx, x)
        for server, model in targets:
            with InferenceClient(server.grpc_address, timeout=30) as client:
                assert client.model_ready(model), (server.peer, model)
                assert_logits_match(client.infer(model, x), want)
