"""What the reliability tests share: requests, the reference answer, raw calls, the server's memory and
metrics, bounded waits, and servers started without the root's right to read every file.

Every wait here is bounded in time, every loop in count; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from harness.server import ServerProcess, start_server
from harness.waiting import wait_for  # noqa: F401 (the fault tests import it from here)
from modelrepo.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from protos import grpc_service_pb2 as pb
from protos import health_pb2, health_pb2_grpc
from protos.wire import add_input, output_array
from service.healthcheck import check

MODEL = "lenet5"  # the exported LeNet-5 (FP32 [N, 1, 32, 32] -> [N, 10]), max_batch_size 32
RGB_MODEL = "rgb"  # a linear classifier of RGB 32x32 images with ImageNet's mean and std (RGB_SPEC)
RGB_SPEC = InputSpec(3, 32, 32, IMAGENET_MEAN, IMAGENET_STD, "RGB")
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_DETAILS = 2048  # no status message should be longer: trailers past ~8 KiB are refused by clients
# Our own code logs this (with a traceback) for any exception that is not one of the server's errors.
UNEXPECTED = "unexpected error"


def x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 1, 32, 32)).astype(np.float32)


def infer_request(
    model: str = MODEL, data: np.ndarray | None = None, version: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    add_input(request, "input", x() if data is None else data)
    return request


class Reference:
    """LeNet-5's answers computed here with onnxruntime, from the very file the server loads."""

    def __init__(self, onnx_path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": data})[0]


def assert_alive_and_correct(server: ServerProcess, reference: Reference, seed: int = 7) -> None:
    """The server is up on all three ports and still computes the right answer."""
    assert server.proc.poll() is None, (
        f"the server exited with {server.proc.returncode}:\n{server.log()[-3000:]}"
    )
    serving, status = check(server.health_address, "liveness", timeout=10)
    assert serving, f"health port: liveness is {status}"
    assert http_status(health_url(server, "/v2/health/live")) == 200
    client = server.clients[0] if server.clients else server.client(timeout=30)
    data = x(3, seed)
    got = client.infer(MODEL, data)
    np.testing.assert_allclose(got, reference(data), rtol=1e-4, atol=1e-5)


def health_url(server: ServerProcess, path: str) -> str:
    return server.metrics_url.removesuffix("/metrics") + path


def http_status(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def health_status(address: str, service: str = "", timeout: float = 10) -> str:
    """grpc.health.v1 Check of ``service``: SERVING, NOT_SERVING, or the error's code name."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class RawInfer:
    """ModelInfer with the request as bytes, as a client with its own serializer would send it."""

    def __init__(self, address: str, max_message_bytes: int = 256 * 1024 * 1024) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self.channel = grpc.insecure_channel(address, options=options)
        self.call = self.channel.unary_unary(
            INFER_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

    def __call__(self, data: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, str, bytes | None]:
        """(status code, details, the response's bytes when OK)."""
        try:
            return grpc.StatusCode.OK, "", self.call(data, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", None

    def close(self) -> None:
        self.channel.close()


def logits_of(response_bytes: bytes) -> np.ndarray:
    return output_array(pb.ModelInferResponse.FromString(response_bytes), "logits")


def linear_onnx(path: Path, channels: int, classes: int = 10, size: int = 32) -> None:
    """A linear classifier of [N, channels, size, size] images (Flatten, MatMul): a model of any colour
    mode in a second, for the image paths LeNet-5's greyscale does not take."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(channels).normal(0, 0.05, (channels * size * size, classes))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------------ the server process


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (Linux /proc)."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory since it started or since :func:`reset_peak_rss`."""
    return _status_kb(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start the peak resident memory over from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def requests_total(server: ServerProcess, outcome: str, model: str | None = None) -> float:
    """cnnserve_requests_total for ``outcome``, summed over versions (and models, without ``model``)."""
    total = 0.0
    for line in metrics_text(server).splitlines():
        if not line.startswith("cnnserve_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("outcome") == outcome and (model is None or labels.get("model") == model):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------------------- servers without root's reach

DROPPED_CAPS = "-dac_override,-dac_read_search"


def without_file_override() -> list[str] | None:
    """A command prefix under which file permissions bind the server: nothing for a user that is not root;
    for root, ``setpriv`` dropping the capabilities that let root read any file. None: not possible here."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", f"--inh-caps={DROPPED_CAPS}", f"--bounding-set={DROPPED_CAPS}"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"], timeout=30).returncode != 0:
        return None  # no setpriv, or not allowed to drop capabilities here
    return prefix


def start_bound_server(
    repo: Path, log_dir: Path, prefix: list[str], *args: str, ready_service: str = ""
) -> ServerProcess:
    """``python -m service`` over ``repo`` on free ports, behind ``prefix``
    (:func:`without_file_override`)."""
    return start_server(repo, log_dir, *args, prefix=prefix, ready_service=ready_service)


def chmod_tree(path: Path, mode: int) -> None:
    subprocess.run(["chmod", "-R", oct(mode)[2:], str(path)], check=True, timeout=30)
