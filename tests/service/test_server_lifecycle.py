"""Servers of their own: explicit load/unload (configured through
SERVE_* variables), message size limits, and the healthcheck CLI."""

from __future__ import annotations

import http.client
import subprocess
import sys
import urllib.parse

import grpc
import numpy as np
import pytest

from harness.ports import TCP_TABLE, in_time_wait
from harness.server import ROOT, http_request
from protos import grpc_service_pb2 as pb
from protos import health_pb2, health_pb2_grpc
from protos.wire import add_input
from service.client import InferenceServerError

pytestmark = pytest.mark.process

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel, service: str) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (rows, 1, 32, 32)).astype(np.float32)


def test_explicit_model_control_configured_by_environment(model_repo, server_factory, digit_png):
    env = {"SERVE_MODEL_CONTROL_MODE": "explicit", "SERVE_MAX_MESSAGE_BYTES": "200000"}
    server = server_factory(model_repo, env=env)
    client = server.client()
    index = {m.name: (m.state, m.version) for m in client.repository_index()}
    assert index["lenet5"] == ("UNAVAILABLE", "")
    with pytest.raises(InferenceServerError) as info:
        client.infer("lenet5", x())
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    client.load("lenet5")
    assert client.model_ready("lenet5")
    assert health(client.channel, "lenet5") == SERVING
    assert client.infer("lenet5", x()).shape == (1, 10)
    assert ("lenet5", "1", "READY") in [(m.name, m.version, m.state) for m in client.repository_index()]

    with pytest.raises(InferenceServerError) as info:
        client.load("no_such_model")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "no model 'no_such_model'" in info.value.details
    request = pb.RepositoryModelLoadRequest(model_name="lenet5")
    request.parameters["config"].string_param = "{}"
    with pytest.raises(grpc.RpcError) as rpc:
        client.stub.RepositoryModelLoad(request, timeout=10)
    assert (
        rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "['config'] are not supported" in rpc.value.details()
    )

    # SERVE_MAX_MESSAGE_BYTES: a 300 kB request is refused by gRPC itself
    big = pb.ModelInferRequest(model_name="lenet5")
    add_input(big, "image", [digit_png(0, size=600)])
    assert big.ByteSize() > 200_000
    with pytest.raises(grpc.RpcError) as rpc:
        client.stub.ModelInfer(big, timeout=10)
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    unload = pb.RepositoryModelUnloadRequest(model_name="lenet5")
    unload.parameters["unload_dependents"].bool_param = True
    client.stub.RepositoryModelUnload(unload, timeout=30)
    assert not client.model_ready("lenet5")
    assert health(client.channel, "lenet5") == NOT_SERVING
    with pytest.raises(InferenceServerError) as info:
        client.infer("lenet5", x())
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "unloaded" in info.value.details
    assert ("lenet5", "", "UNAVAILABLE", "unloaded") in [
        (m.name, m.version, m.state, m.reason) for m in client.repository_index()
    ]
    assert server.terminate() == 0


def test_healthcheck_cli(server):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "service.healthcheck", "--address", server.address, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = run()
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    assert run("--service", "liveness").returncode == 0
    assert run("--service", "lenet5").returncode == 0
    missing = run("--service", "no_such_model")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    with_socket_closed = subprocess.run(
        [sys.executable, "-m", "service.healthcheck", "--address", "127.0.0.1:1", "--timeout", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert with_socket_closed.returncode == 1 and "UNAVAILABLE" in with_socket_closed.stderr


def test_a_busy_port_is_a_clear_error(server, model_repo):
    port = server.address.rsplit(":", 1)[1]
    args = ["--repo", str(model_repo), "--host", "127.0.0.1", "--grpc-port", port, "--metrics-port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "service", *args, "--model-control-mode", "explicit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"cannot bind gRPC to 127.0.0.1:{port} (port in use?)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not TCP_TABLE.exists(), reason="TIME_WAIT is read from Linux's /proc/net/tcp")
def test_a_restart_right_after_traffic_binds_every_port(tmp_path, server_factory, lenet_copy):
    """A container restarted in its pod (same network namespace, same ports) binds every port at once,
    though connections of the process before it still wait out TIME_WAIT: a scrape, and keep-alive HTTP
    and gRPC connections that the stopping server closed."""
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5")
    first = server_factory(repo)
    ports = {
        "--grpc-port": first.address,
        "--health-port": first.health_address,
        "--http-port": first.http_url,
        "--metrics-port": first.metrics_url,
    }
    ports = {flag: urllib.parse.urlsplit("//" + a.split("//")[-1]).port for flag, a in ports.items()}
    assert first.metric("cnnserve_model_ready", model="lenet5") == 1  # a scrape: the server closes it
    keep_alive = http.client.HTTPConnection("127.0.0.1", ports["--http-port"], timeout=10)
    keep_alive.request("GET", "/v2/health/ready")
    answer = keep_alive.getresponse()
    answer.read()  # the connection stays open, idle
    assert answer.status == 200
    client = first.client()
    assert client.infer("lenet5", x()).shape == (1, 10)
    with grpc.insecure_channel(first.health_address) as channel:
        assert health(channel, "") == SERVING
        assert first.terminate() == 0  # with the HTTP and gRPC connections still open
    keep_alive.close()
    client.close()
    waiting = [flag for flag, port in ports.items() if in_time_wait(port)]
    assert waiting, "the connections the server closed should wait out TIME_WAIT on its side"

    args = [str(a) for flag, port in ports.items() for a in (flag, port)]
    second = server_factory(repo, *args)  # ready means: every port bound
    assert second.client().infer("lenet5", x()).shape == (1, 10)
    assert http_request(second.http_url, "GET", "/v2/health/ready").status == 200
    assert second.metric("cnnserve_model_ready", model="lenet5") == 1
