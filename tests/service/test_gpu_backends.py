"""GPU backends: the choice among a version's artifacts per host (tested everywhere, with the GPU libraries
simulated), and for real where they exist: torch on CUDA (graphs per bucket, pinned staging, pixels and
JPEGs on the device, memory released on unload), onnxruntime on CUDA, TensorRT plans (and their fallback),
NVML metrics.

The real ones are marked ``gpu`` / ``tensorrt`` and skip with the reason where CUDA, onnxruntime-gpu or
TensorRT is absent.
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
from service.backends import choice
from service.errors import ModelLoadError
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible to torch")
NO_ORT_CUDA = "onnxruntime has no CUDA provider (install onnxruntime-gpu)"

# ------------------------------------------------------------------------------ the choice, simulated


@pytest.fixture
def host(monkeypatch):
    """``host(plan=None, onnxruntime_cuda=False, torch_cuda=False)``: what this host can run, as the choice
    sees it (``plan``: why a plan cannot run, None where it can)."""

    def simulate(plan="TensorRT is not installed", onnxruntime_cuda=False, torch_cuda=False):
        monkeypatch.setattr(choice, "_onnxruntime_cuda", lambda: None if onnxruntime_cuda else NO_ORT_CUDA)
        monkeypatch.setattr(
            choice, "_torch_cuda", lambda setting: None if torch_cuda else "torch sees no CUDA GPU"
        )
        monkeypatch.setitem(choice.PROBES, "tensorrt_plan", lambda manifest, artifact, device, setting: plan)

    return simulate


@pytest.fixture(scope="module")
def exported(lenet5_export):
    """fp32 (model.onnx + model.pt2) and int8 (model.onnx only) as the export wrote them."""
    return {p: (lenet5_export[p].manifest, lenet5_export[p].version_dir) for p in ("fp32", "int8")}


def with_plan(manifest: Manifest) -> Manifest:
    """The same version with a TensorRT plan as its primary, the ONNX model and the program beside it."""
    plan = Manifest.from_dict({**manifest.to_dict(), "artifact": "model.plan", "format": "tensorrt_plan"})
    plan.alternatives = [Artifact("model.onnx", "onnx", manifest.sha256, "fp32"), *manifest.alternatives]
    return plan


def picked(manifest, version_dir, device="auto"):
    found = choice.choose_artifact(manifest, version_dir, device)
    return found.path.name, found.device, found.primary


@pytest.mark.parametrize(
    ("simulated", "device", "expected"),
    [
        ({}, "auto", ("model.onnx", "cpu", True)),
        ({"torch_cuda": True}, "auto", ("model.pt2", "cuda", False)),
        ({"torch_cuda": True, "onnxruntime_cuda": True}, "auto", ("model.onnx", "cuda", True)),
        ({"torch_cuda": True}, "cuda", ("model.pt2", "cuda", False)),
        ({"torch_cuda": True, "onnxruntime_cuda": True}, "cpu", ("model.onnx", "cpu", True)),
    ],
)
def test_the_best_artifact_that_runs_here_is_picked(exported, host, simulated, device, expected):
    host(**simulated)
    assert picked(*exported["fp32"], device) == expected


@pytest.mark.parametrize(
    ("backend", "simulated", "device", "expected"),
    [
        ("torch", {}, "auto", ("model.pt2", "cpu", False)),
        ("torch", {}, "cpu", ("model.pt2", "cpu", False)),
        ("torch", {"torch_cuda": True, "onnxruntime_cuda": True}, "auto", ("model.pt2", "cuda", False)),
        ("onnxruntime", {"torch_cuda": True}, "auto", ("model.onnx", "cpu", True)),
        ("tensorrt", {"torch_cuda": True}, "auto", ("model.pt2", "cuda", False)),  # no plan: the ranking
    ],
)
def test_a_backend_preference_is_tried_first(exported, host, backend, simulated, device, expected):
    host(**simulated)
    manifest, version_dir = exported["fp32"]
    found = choice.choose_artifact(manifest, version_dir, device, backend)
    assert (found.path.name, found.device, found.primary) == expected


def test_a_preferred_backend_without_its_artifact_goes_down_the_ranking(exported, host):
    host()
    found = choice.choose_artifact(*exported["int8"], "cpu", "torch")  # int8 has no torch program
    assert (found.path.name, found.device, found.skipped) == ("model.onnx", "cpu", ())


def test_a_plan_comes_first_and_its_skip_is_explained(exported, host):
    manifest, version_dir = exported["fp32"]
    host(plan=None)
    assert picked(with_plan(manifest), version_dir) == ("model.plan", "cuda", True)
    host(plan="the plan was built with TensorRT 10.3.0, this is TensorRT 11.0.0", torch_cuda=True)
    found = choice.choose_artifact(with_plan(manifest), version_dir, "auto")
    assert (found.path.name, found.device) == ("model.pt2", "cuda")
    assert found.skipped == (
        "cannot run the TensorRT plan model.plan: the plan was built with TensorRT 10.3.0, this is "
        "TensorRT 11.0.0",
        f"cannot run the ONNX model.onnx on CUDA: {NO_ORT_CUDA}",
    )
    assert found.fallback_reason == "; ".join(found.skipped)


def test_a_plan_that_cannot_run_is_a_warning_skipped_gpu_ways_are_information(exported, host, caplog):
    manifest, version_dir = exported["fp32"]
    host()
    with caplog.at_level(logging.INFO, logger="service.backends.choice"):
        choice.choose_artifact(manifest, version_dir, "auto")
        choice.choose_artifact(with_plan(manifest), version_dir, "auto")
    levels = [(r.levelname, "TensorRT plan" in r.message) for r in caplog.records]
    assert levels == [("INFO", False), ("WARNING", True)]
    assert "serving the ONNX fallback model.onnx on cpu instead" in caplog.records[1].message


def test_device_cuda_fails_only_where_no_gpu_path_exists_with_every_reason(exported, host):
    host(torch_cuda=True)
    manifest, version_dir = exported["int8"]  # int8: no torch program
    with pytest.raises(ModelLoadError) as refused:
        choice.choose_artifact(manifest, version_dir, "cuda")
    assert f"the server's device is cuda, but {NO_ORT_CUDA} (ONNX model.onnx)" in str(refused.value)
    host()
    with pytest.raises(ModelLoadError) as refused:
        choice.choose_artifact(*exported["fp32"], "cuda")
    assert str(refused.value).endswith(
        f"the server's device is cuda, but {NO_ORT_CUDA} (ONNX model.onnx); torch sees no CUDA GPU "
        "(torch.export program model.pt2)"
    )


@pytest.mark.skipif(cuda_available(), reason="a CUDA GPU is present")
def test_without_a_gpu_torch_is_asked_only_under_device_cuda(exported):
    """auto: no NVIDIA device node is reason enough (torch is not imported for it); --device cuda asks
    torch."""
    if choice._gpu_device_absent() is None:
        pytest.skip("this host has NVIDIA device nodes")
    found = choice.choose_artifact(*exported["fp32"], "auto")
    assert found.skipped[-1].endswith("model.pt2 on CUDA: no NVIDIA GPU device on this host")
    with pytest.raises(
        ModelLoadError, match=r"torch sees no CUDA GPU \(torch [^)]*\) \(torch.export program"
    ):
        choice.choose_artifact(*exported["fp32"], "cuda")


def test_a_program_written_by_a_newer_torch_is_skipped(exported, host):
    host(torch_cuda=True)
    manifest, version_dir = exported["fp32"]
    newer = Manifest.from_dict(manifest.to_dict())
    newer.alternatives[0].extra["torch"] = "99.0.0"
    found = choice.choose_artifact(newer, version_dir, "auto")
    assert (found.path.name, found.device) == ("model.onnx", "cpu")
    assert "written by torch 99.0.0" in found.skipped[-1]


def test_what_was_picked_is_in_the_served_config_and_the_metrics(exported, tmp_path):
    """On this host for real: the session's lenet5 (ONNX + program) serves its ONNX model on the CPU; the
    served ModelConfig says so and why the GPU ways were skipped, and the metric label is the backend."""
    from prometheus_client import generate_latest

    _, version_dir = exported["fp32"]
    copy_entry(version_dir.parent, tmp_path)
    metrics = ServerMetrics(gpu=False)

    async def load():
        manager = ModelManager(Settings(repo=tmp_path), metrics)
        try:
            await manager.load("lenet5")
            return manager.resolve("lenet5"), generate_latest(metrics.registry).decode()
        finally:
            await manager.close(timeout=5)

    served, exposition = asyncio.run(load())
    parameters = {k: v.string_value for k, v in served.config.parameters.items()}
    if cuda_available():
        pytest.skip("this host has a GPU path: test_served_on_cuda covers it")
    assert parameters["served_artifact"] == "model.onnx" and parameters["served_device"] == "cpu"
    assert parameters["served_backend"] == "onnxruntime"
    assert "cannot run the torch.export program model.pt2 on CUDA" in parameters["skipped_artifacts"]
    assert 'cnnserve_model_ready{backend="onnxruntime",model="lenet5",precision="fp32",version="1"} 1.0' in (
        exposition
    )


# ----------------------------------------------------------------------------------- on a real GPU


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


def cuda_backend(version_dir, **options):
    from service.backends.torch_backend import TorchBackend

    spec = Manifest.read(version_dir).input_spec
    data = (version_dir / "model.pt2").read_bytes()
    return TorchBackend(
        version_dir / "model.pt2", data, device="cuda:0", spec=spec, max_batch_size=16, **options
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("fp16", 1e-2)])
def test_torch_cuda_graphs_per_bucket_match_the_reference(exported, lenet5_export, precision, tolerance):
    import torch

    version_dir = lenet5_export[precision].version_dir
    instance = cuda_backend(version_dir)
    try:
        assert "CUDA graphs for batch 1,2,4,8,16" in instance.describe()
        assert instance.dtype == (torch.float16 if precision == "fp16" else torch.float32)
        assert instance.staging.pinned and instance.staging.inputs["pixels"].is_pinned()
        assert instance.label == "torch_cuda" and instance.stream is not None
        onnx = exported["fp32"][1] / "model.onnx"
        for rows in (1, 3, 8, 16, 5):  # 3 and 5 run padded
            x = np.random.default_rng(rows).standard_normal((rows, 1, 32, 32), dtype=np.float32)
            ref = reference(onnx, x)
            assert np.abs(instance.run(x) - ref).max() <= tolerance * max(1.0, np.abs(ref).max())
        pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
        from modelrepo.preprocess import normalize_pixels

        on_cpu = instance.run(normalize_pixels(pixels, instance.spec))
        np.testing.assert_allclose(instance.run(pixels), on_cpu, rtol=1e-3, atol=1e-3)
    finally:
        instance.close()


@pytest.mark.gpu
@needs_cuda
def test_unloading_hands_gpu_memory_back(lenet5_export):
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved(0)
    instance = cuda_backend(lenet5_export["fp32"].version_dir)
    instance.run(np.zeros((16, 1, 32, 32), np.float32))
    assert torch.cuda.memory_reserved(0) > before
    instance.close()
    assert torch.cuda.memory_reserved(0) <= before


@pytest.mark.gpu
@needs_cuda
def test_jpegs_decode_on_the_gpu_as_on_the_cpu():
    from service.backends.gpu_images import _probe, decode_to_pixels, device_decoder
    from tests.service.test_torch_backend_images import encode, photo

    if (reason := _probe("cuda:0")) is not None:
        pytest.skip(reason)
    from modelrepo.preprocess import IMAGENET_INPUT

    images = [encode(photo(320 + 40 * i, 240, seed=i)) for i in range(4)]
    on_gpu = device_decoder("cuda:0")(images, IMAGENET_INPUT, 25_000_000)
    on_cpu = decode_to_pixels(images, IMAGENET_INPUT, 25_000_000, device="cpu")
    assert np.abs(on_gpu.astype(int) - on_cpu).mean() <= 1.0


@pytest.mark.gpu
@needs_cuda
def test_decoding_streams_are_never_an_instances_stream():
    """Forty instances' streams (more than a pool holds) and the decoding streams: no stream in both."""
    import torch

    from service.backends.gpu_images import decoder_streams
    from service.backends.torch_cuda import instance_stream

    decoding = {s.cuda_stream for s in decoder_streams(torch, "cuda:0")}
    instances = {instance_stream(torch, "cuda:0").cuda_stream for _ in range(40)}
    assert decoding and decoding.isdisjoint(instances)


@pytest.mark.gpu
@needs_cuda
def test_served_on_cuda(exported, tmp_path):
    """--device cuda on the session's lenet5: onnxruntime's CUDA provider where installed, else torch CUDA;
    the served config names it."""
    copy_entry(exported["fp32"][1].parent, tmp_path)

    async def load():
        manager = ModelManager(Settings(repo=tmp_path, device="cuda"), ServerMetrics(gpu=False))
        try:
            await manager.load("lenet5")
            served = manager.resolve("lenet5")
            return served, await served.batcher.submit(X)
        finally:
            await manager.close(timeout=5)

    served, out = asyncio.run(load())
    parameters = {k: v.string_value for k, v in served.config.parameters.items()}
    expected = (
        "onnxruntime_cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "torch_cuda"
    )
    assert parameters["served_backend"] == expected and parameters["served_device"] == "cuda:0"
    assert not served.batcher.inline  # the wait for the GPU stays off the event loop
    np.testing.assert_allclose(out, reference(exported["fp32"][1] / "model.onnx", X), rtol=1e-3, atol=1e-4)


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
