"""GPU backends: torch and onnxruntime on CUDA, TensorRT plans (and their fallback), NVML metrics.

Marked ``gpu`` / ``tensorrt``; each skips with the reason where CUDA, onnxruntime-gpu or TensorRT is absent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

import numpy as np
import onnxruntime as ort
import pytest

from harness.repository import add_model, copy_entry
from modelrepo.manifest import Artifact, Manifest, sha256_file
from models.lenet import DIGIT_LABELS, DIGITS_INPUT
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible to torch")


async def _serve_once(repo, name, x, **settings):
    manager = ModelManager(Settings(repo=repo, **settings), ServerMetrics(gpu=False))
    try:
        await manager.load(name)
        served = manager.resolve(name)
        return served.backend_kind, served.backends[0].device, await served.batcher.submit(x)
    finally:
        await manager.close(timeout=5)


def serve_once(repo, name, x, **settings):
    return asyncio.run(_serve_once(repo, name, x, **settings))


def reference(onnx_path, x):
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


X = np.random.default_rng(0).uniform(-1, 1, (4, 1, 32, 32)).astype(np.float32)


@pytest.mark.gpu
@needs_cuda
def test_torch_backend_on_cuda(tmp_path, artifacts):
    add_model(
        tmp_path,
        "lenet5_torch",
        artifacts.lenet5_pt2,
        fmt="torch_export",
        spec=DIGITS_INPUT,
        labels=DIGIT_LABELS,
    )
    kind, device, out = serve_once(tmp_path, "lenet5_torch", X, device="cuda")
    assert (kind, device) == ("torch", "cuda:0")
    np.testing.assert_allclose(out, reference(artifacts.lenet5_onnx, X), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="onnxruntime has no CUDA provider"
)
def test_onnxruntime_on_cuda(tmp_path, artifacts):
    copy_entry(artifacts.lenet5, tmp_path)
    kind, device, out = serve_once(tmp_path, "lenet5", X, device="cuda")
    assert (kind, device) == ("onnxruntime", "cuda:0")
    np.testing.assert_allclose(out, reference(artifacts.lenet5_onnx, X), rtol=1e-3, atol=1e-4)


def build_plan(onnx_path, plan_path, max_batch: int = 8) -> str:
    """A TensorRT 10 FP32 plan with a dynamic batch profile 1..max_batch; returns TensorRT's version."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 32, 32), (4, 1, 32, 32), (max_batch, 1, 32, 32))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    plan_path.write_bytes(bytes(plan))
    return trt.__version__


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_plan_and_its_fallback(tmp_path, artifacts, lenet_copy, caplog):
    import torch

    from modelrepo.config import read_config, write_config

    version_dir = lenet_copy(tmp_path, "lenet5_trt", max_batch_size=8, preferred_batch_sizes=()) / "1"
    version = build_plan(artifacts.lenet5_onnx, version_dir / "model.plan")
    major, minor = torch.cuda.get_device_capability(0)
    manifest = Manifest.read(version_dir)
    manifest.fallback = Artifact("model.onnx", "onnx", manifest.sha256, "fp32")
    manifest.artifact, manifest.format = "model.plan", "tensorrt_plan"
    manifest.sha256 = sha256_file(version_dir / "model.plan")
    manifest.versions = {**manifest.versions, "tensorrt": version}
    manifest.gpu = {"compute_capability": f"{major}.{minor}"}
    manifest.write(version_dir)
    config = read_config(tmp_path / "lenet5_trt")
    config.platform = "tensorrt_plan"
    write_config(tmp_path / "lenet5_trt", config)
    kind, device, out = serve_once(tmp_path, "lenet5_trt", X)
    assert (kind, device) == ("tensorrt", "cuda:0")
    np.testing.assert_allclose(out, reference(artifacts.lenet5_onnx, X), rtol=1e-3, atol=1e-3)

    manifest.gpu = {"compute_capability": "1.0"}  # a GPU this plan was not built for: serve the ONNX fallback
    manifest.write(version_dir)
    with caplog.at_level(logging.WARNING):
        kind, _, out = serve_once(tmp_path, "lenet5_trt", X)
    assert kind == "onnxruntime"
    assert "built for compute capability 1.0" in caplog.text
    np.testing.assert_allclose(out, reference(artifacts.lenet5_onnx, X), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_nvml_gpu_metrics():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from prometheus_client import generate_latest

    text = generate_latest(ServerMetrics().registry).decode()
    assert 'cnnserve_gpu_utilization_ratio{gpu="0"}' in text
    assert 'cnnserve_gpu_memory_total_bytes{gpu="0"}' in text
