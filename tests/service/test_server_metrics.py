"""The Prometheus endpoint: names, types, labels and units of docs/ARCHITECTURE.md, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb

pytestmark = pytest.mark.process

CONTRACT = {  # name -> (type, labels)
    "cnnserve_request_duration_seconds": ("histogram", {"model", "version", "protocol"}),
    "cnnserve_queue_duration_seconds": ("histogram", {"model", "version"}),
    "cnnserve_compute_duration_seconds": ("histogram", {"model", "version", "backend", "precision"}),
    "cnnserve_batch_size": ("histogram", {"model", "version"}),
    # exposed as cnnserve_requests_total
    "cnnserve_requests": ("counter", {"model", "version", "protocol", "outcome"}),
    "cnnserve_inference_rows": ("counter", {"model", "version"}),
    "cnnserve_queue_depth": ("gauge", {"model", "version"}),
    "cnnserve_inflight_requests": ("gauge", {"model", "version"}),
    "cnnserve_model_load_duration_seconds": ("gauge", {"model", "version", "backend"}),
    "cnnserve_model_ready": ("gauge", {"model", "version", "backend", "precision"}),
}


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, name, sample_name, **labels) -> float:
    for s in fams[name].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_names_types_and_labels(server, client):
    client.infer("lenet5", np.zeros((3, 1, 32, 32), np.float32))
    fams = families(scrape(server))
    for name, (kind, labels) in CONTRACT.items():
        assert name in fams, f"missing {name}"
        assert fams[name].type == kind, name
        samples = [s for s in fams[name].samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    text = scrape(server)
    assert "cnnserve_requests_total{" in text and "cnnserve_inference_rows_total{" in text
    assert (
        'cnnserve_model_ready{backend="onnxruntime",model="lenet5",precision="fp32",version="1"} 1.0' in text
    )
    assert 'backend="torch",model="lenet5_torch"' in text


def test_values_follow_requests(server, client, stub):
    before = families(scrape(server))
    client.infer("lenet5", np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="lenet5"), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="ghost"), timeout=10)
    after = families(scrape(server))
    mv = {"model": "lenet5", "version": "1"}
    grpc_mv = {**mv, "protocol": "grpc"}  # these requests came over gRPC

    def delta(name, sample, **labels):
        return value(after, name, sample, **labels) - value(before, name, sample, **labels)

    assert delta("cnnserve_requests", "cnnserve_requests_total", outcome="success", **grpc_mv) == 1
    assert delta("cnnserve_requests", "cnnserve_requests_total", outcome="invalid_argument", **grpc_mv) == 1
    unknown = {"model": "_unknown", "version": "", "protocol": "grpc"}
    assert delta("cnnserve_requests", "cnnserve_requests_total", outcome="not_found", **unknown) == 1
    assert delta("cnnserve_inference_rows", "cnnserve_inference_rows_total", **mv) == 4
    assert (
        delta("cnnserve_request_duration_seconds", "cnnserve_request_duration_seconds_count", **grpc_mv) == 1
    )
    assert delta("cnnserve_batch_size", "cnnserve_batch_size_sum", **mv) == 4
    assert delta("cnnserve_compute_duration_seconds", "cnnserve_compute_duration_seconds_count", **mv) == 1
    assert delta("cnnserve_queue_duration_seconds", "cnnserve_queue_duration_seconds_count", **mv) == 1
    assert value(after, "cnnserve_inflight_requests", "cnnserve_inflight_requests", **mv) == 0
    assert value(after, "cnnserve_queue_depth", "cnnserve_queue_depth", **mv) == 0
    load = value(after, "cnnserve_model_load_duration_seconds", "cnnserve_model_load_duration_seconds", **mv)
    assert 0 < load < 60
    # the request histogram is in seconds: a LeNet-5 request takes well under a second here
    assert (
        delta("cnnserve_request_duration_seconds", "cnnserve_request_duration_seconds_sum", **grpc_mv) < 1.0
    )
    assert "cnnserve_gpu_utilization_ratio" not in after or after["cnnserve_gpu_utilization_ratio"].samples


def test_promtool_check_metrics(server, client):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (scripts/setup.sh installs Debian's prometheus package)")
    client.infer("lenet5", np.zeros((1, 1, 32, 32), np.float32))
    done = subprocess.run(
        [promtool, "check", "metrics"], input=scrape(server), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
