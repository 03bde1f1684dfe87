"""The real server locked down and bounded: health apart from inference, TLS, restricted protocols,
admission limits, image caps, repository faults kept local, model names and messages."""

from __future__ import annotations

import io
import threading
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from harness.tls import SERVER_NAME
from harness.waiting import wait_for
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import health_pb2, health_pb2_grpc
from service.client import InferenceClient, InferenceServerError, channel_credentials
from service.healthcheck import check


def x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 1, 32, 32)).astype(np.float32)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_health_port_and_http_probes_answer_from_their_own_threads(server):
    assert check(server.health_address, "")[0] and check(server.health_address, "liveness")[0]
    assert check(server.health_address, "lenet5")[0]
    assert check(server.health_address, "nope") == (False, "NOT_FOUND: unknown service 'nope'")
    with grpc.insecure_channel(server.health_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="lenet5", version="1"), timeout=5).ready
        with pytest.raises(grpc.RpcError) as info:  # the health port serves health only
            stub.ModelInfer(pb.ModelInferRequest(model_name="lenet5"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    base = server.metrics_url.removesuffix("/metrics")
    assert http_status(f"{base}/v2/health/live") == 200 and http_status(f"{base}/v2/health/ready") == 200
    assert http_status(f"{base}/v2/models/lenet5/ready") == 200
    assert http_status(f"{base}/v2/models/nope/ready") == 400


def test_tls_and_mutual_tls(lenet_copy, server_factory, tmp_path, tls_files):
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5")
    tls = ["--tls-cert", str(tls_files.server_cert), "--tls-key", str(tls_files.server_key)]
    server = server_factory(repo, *tls, "--tls-client-ca", str(tls_files.ca))
    identity = channel_credentials(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    with InferenceClient(server.address, credentials=identity, server_name=SERVER_NAME, timeout=10) as client:
        assert client.infer("lenet5", x()).shape == (1, 10)
    anonymous = channel_credentials(tls_files.ca)  # no client certificate: the handshake fails
    with InferenceClient(server.address, credentials=anonymous, server_name=SERVER_NAME, timeout=5) as client:
        with pytest.raises(InferenceServerError) as info:
            client.live()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with InferenceClient(server.address, timeout=5) as plaintext, pytest.raises(InferenceServerError):
        plaintext.live()
    assert check(server.health_address, "")[0]  # the health port stays plaintext for kubelet probes


def test_restricted_protocols(lenet_copy, server_factory, tmp_path):
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5")
    server = server_factory(repo, "--restricted-protocol", "model-repository,statistics:admin-key=s3cret")
    with InferenceClient(server.address, timeout=10) as anonymous:
        assert anonymous.infer("lenet5", x()).shape == (1, 10)  # inference is not restricted
        with pytest.raises(InferenceServerError) as info:
            anonymous.repository_index()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "admin-key" in info.value.details
    with InferenceClient(server.address, timeout=10, headers={"admin-key": "guess"}) as wrong:
        with pytest.raises(InferenceServerError) as info:
            wrong.statistics("lenet5")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED and "s3cret" not in info.value.details
    with InferenceClient(server.address, timeout=10, headers={"Admin-Key": "s3cret"}) as admin:
        assert [m.name for m in admin.repository_index()] == ["lenet5"]
        assert admin.statistics("lenet5").model_stats[0].inference_stats.success.count == 1


def test_admission_limits_answer_at_once(lenet_copy, server_factory, tmp_path):
    repo = tmp_path / "repo"
    lenet_copy(
        repo, "slow", max_batch_size=8, max_queue_delay_microseconds=500_000, preferred_batch_sizes=(8,)
    )
    server = server_factory(repo, "--max-inflight", "2", "--max-inflight-bytes", "10000")
    client = server.client(timeout=10)
    with pytest.raises(InferenceServerError) as info:  # 3 rows of 4 KiB: past the byte bound
        client.infer("slow", x(3))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "10000 bytes" in info.value.details
    waiting = [threading.Thread(target=client.infer, args=("slow", x())) for _ in range(2)]
    for t in waiting:
        t.start()
    try:
        gauge = 'cnnserve_inflight_requests{model="slow",version="1"} 2.0'
        wait_for(lambda: gauge in _metrics(server), 10, "two requests in flight")
        with pytest.raises(InferenceServerError) as info:
            client.infer("slow", x())
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in info.value.details
    finally:
        for t in waiting:
            t.join(10)


def _metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return response.read().decode()


def test_image_pixel_cap_and_formats(lenet_copy, server_factory, tmp_path):
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5")
    server = server_factory(repo, "--max-image-pixels", "10000")
    client = server.client(timeout=10)

    def encoded(size: int, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (size, size)).save(buf, format=fmt)
        return buf.getvalue()

    assert client.classify("lenet5", [encoded(90, "PNG")])[0][0].index >= 0
    for data, message in [
        (encoded(200, "PNG"), "PNG image of 200x200 = 40000 pixels exceeds the limit of 10000 pixels"),
        (encoded(20, "GIF"), "are not one of JPEG, PNG"),
    ]:
        with pytest.raises(InferenceServerError) as info:
            client.classify("lenet5", [data])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details


def test_a_cancelled_load_still_completes(lenet_copy, server_factory, tmp_path):
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5")
    server = server_factory(repo, "--model-control-mode", "explicit")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="lenet5"), timeout=0.01)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    client = server.client(timeout=10)
    wait_for(lambda: client.model_ready("lenet5"), 10, "the cancelled load to complete")
    assert [(m.name, m.state) for m in client.repository_index()] == [("lenet5", "READY")]
    health = health_pb2_grpc.HealthStub(client.channel)
    serving = health.Check(health_pb2.HealthCheckRequest(service="lenet5"), timeout=5).status
    assert serving == health_pb2.HealthCheckResponse.SERVING
