"""The HTTP port over a server's life, with servers of their own: explicit model control over HTTP with
/metrics on the same port, and a busy port as a clear error (the drain over HTTP: tests/reliability/
test_fault_lifecycle.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from harness.server import ROOT, free_port

pytestmark = pytest.mark.process

ROW = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}


def test_explicit_model_control_over_http_with_metrics_on_the_http_port(model_repo, server_factory):
    port = str(free_port())
    server = server_factory(
        model_repo, "--model-control-mode", "explicit", "--http-port", port, "--metrics-port", port
    )
    assert server.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert "HTTP/REST (KServe v2) on http://127.0.0.1:" in server.log() and "with /metrics" in server.log()
    assert "metrics and HTTP health on" not in server.log()  # no metrics port of its own

    def index() -> dict:
        return {m["name"]: m["state"] for m in server.http("POST", "/v2/repository/index").json()}

    assert index()["lenet5"] == "UNAVAILABLE"
    assert server.http("GET", "/v2/models/lenet5/ready").status == 400
    loaded = server.http("POST", "/v2/repository/models/lenet5/load", {})
    assert (loaded.status, loaded.body) == (200, b"")
    assert index()["lenet5"] == "READY"
    assert server.http("GET", "/v2/models/lenet5/ready").status == 200
    before = server.metric("cnnserve_requests_total", model="lenet5", protocol="http", outcome="success")
    assert server.http("POST", "/v2/models/lenet5/infer", {"inputs": [ROW]}).status == 200
    after = server.metric("cnnserve_requests_total", model="lenet5", protocol="http", outcome="success")
    assert after - before == 1
    metrics = server.http("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert (
        b'cnnserve_model_ready{backend="onnxruntime",model="lenet5",precision="fp32",version="1"} 1.0'
        in metrics.body
    )

    unsupported = server.http("POST", "/v2/repository/models/lenet5/load", {"parameters": {"config": "{}"}})
    assert unsupported.status == 400
    assert "RepositoryModelLoad parameters ['config'] are not supported" in unsupported.json()["error"]
    malformed = server.http("POST", "/v2/repository/models/lenet5/load", b"{")
    assert malformed.status == 400 and malformed.json()["error"].startswith(
        "model load request: malformed JSON"
    )
    # Triton's client sends unload_dependents; nothing depends on a model here
    unloaded = server.http(
        "POST", "/v2/repository/models/lenet5/unload", {"parameters": {"unload_dependents": False}}
    )
    assert unloaded.status == 200
    assert index()["lenet5"] == "UNAVAILABLE"
    gone = server.http("POST", "/v2/models/lenet5/infer", {"inputs": [ROW]})
    assert gone.status == 404


def test_a_busy_http_port_is_a_clear_error(model_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["--repo", str(model_repo), "--host", "127.0.0.1", "--http-port", str(port)]
        ports = ["--grpc-port", str(free_port()), "--metrics-port", "0", "--health-port", "0"]
        done = subprocess.run(
            [sys.executable, "-m", "service", *args, *ports, "--model-control-mode", "explicit"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"cannot bind HTTP to 127.0.0.1:{port} (port in use?)" in done.stderr
    assert "Traceback" not in done.stderr
