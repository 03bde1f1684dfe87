"""The model manager in-process: broken entries refused with a reason, backend choice, versions, instances."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil

import numpy as np
import onnx
import pytest

from modelrepo.config import read_config, write_config
from modelrepo.manifest import Artifact, Manifest, sha256_file
from modelrepo.reader import select_versions
from protos import model_config_pb2 as mc
from service.errors import InvalidInput, ModelLoadError, ModelNotFound
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics


def manager(repo, **settings) -> ModelManager:
    return ModelManager(Settings(repo=repo, **settings), ServerMetrics(gpu=False))


async def load(repo, name, **settings):
    m = manager(repo, **settings)
    try:
        await m.load(name)
        return m.resolve(name)
    finally:
        await m.close(timeout=5)


def load_error(repo, name, **settings) -> str:
    with pytest.raises((ModelLoadError, ModelNotFound)) as info:
        asyncio.run(load(repo, name, **settings))
    return str(info.value)


@pytest.fixture
def repo(tmp_path, lenet_copy):
    repo = tmp_path / "repo"
    lenet_copy(repo, "lenet5", max_batch_size=8, preferred_batch_sizes=())
    return repo


def serve_all_versions(model_dir) -> None:
    config = read_config(model_dir)
    config.version_policy.all.SetInParent()
    write_config(model_dir, config)


def edit_manifest(version_dir, **changes):
    path = version_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_loads_and_decides_inline_execution(repo):
    served = asyncio.run(load(repo, "lenet5"))
    assert (served.name, served.version, served.backend_kind, served.precision) == (
        "lenet5",
        1,
        "onnxruntime",
        "fp32",
    )
    assert served.io.input_shape == (1, 32, 32) and served.io.num_classes == 10
    assert served.io.labels == tuple(str(i) for i in range(10))
    assert served.batcher.inline  # LeNet-5 takes microseconds: no thread hop per batch...
    assert served.backends[0].threads == 1  # ...and no intra-op thread pool


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("sha", "sha256 of model.onnx is"),
        ("manifest", "manifest.json does not exist"),
        ("manifest_field", "manifest lacks required field(s): sha256"),
        ("artifact", "artifact"),
        ("name", "names model 'other'; it must match its folder 'lenet5'"),
        ("dims", "manifest preprocessing gives [1, 32, 32], config input dims are [3, 32, 32]"),
        ("labels", "9 labels (labels.txt or manifest) for 10 classes"),
        ("batch", "max_batch_size must be >= 1"),
        ("preferred", "preferred_batch_size [16] must lie in 1..max_batch_size (8)"),
        ("no_version", "no version folder matches the version policy"),
        ("garbage_config", "is not a valid ModelConfig"),
        ("fixed_batch", "warm-up with batch 2 on onnxruntime"),
        ("outputs", "warm-up with batch 1 returned shape [1, 10], the config says [1, 12]"),
        ("spinning", "parameter allow_spinning must be 0/1/true/false, got 'maybe'"),
        ("threads", "parameter intra_op_thread_count must be an integer, got 'many'"),
    ],
)
def test_broken_entries_are_refused_with_the_reason(repo, breakage, message):
    model_dir, version_dir = repo / "lenet5", repo / "lenet5" / "1"
    config = read_config(model_dir)
    if breakage == "sha":
        edit_manifest(version_dir, sha256="0" * 64)
    elif breakage == "manifest":
        (version_dir / "manifest.json").unlink()
    elif breakage == "manifest_field":
        data = json.loads((version_dir / "manifest.json").read_text())
        del data["sha256"]
        (version_dir / "manifest.json").write_text(json.dumps(data))
    elif breakage == "artifact":
        (version_dir / "model.onnx").unlink()
    elif breakage == "name":
        config.name = "other"
    elif breakage == "dims":
        config.input[0].dims[0] = 3
    elif breakage == "labels":
        (model_dir / "labels.txt").write_text("\n".join("abcdefghi") + "\n")
    elif breakage == "batch":
        config.max_batch_size = 0
    elif breakage == "preferred":
        config.dynamic_batching.preferred_batch_size.append(16)
    elif breakage == "no_version":
        shutil.rmtree(version_dir)
    elif breakage == "garbage_config":
        (model_dir / "config.pbtxt").write_text("max_batch_size: many")
    elif breakage == "fixed_batch":
        model = onnx.load(version_dir / "model.onnx")
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        onnx.save(model, version_dir / "model.onnx")
        edit_manifest(version_dir, sha256=sha256_file(version_dir / "model.onnx"))
    elif breakage == "outputs":
        config.output[0].dims[0] = 12
        (model_dir / "labels.txt").write_text("".join(f"{i}\n" for i in range(12)))
    elif breakage == "spinning":
        config.parameters["allow_spinning"].string_value = "maybe"
    elif breakage == "threads":
        config.parameters["intra_op_thread_count"].string_value = "many"
    if breakage in ("name", "dims", "batch", "preferred", "outputs", "spinning", "threads"):
        write_config(model_dir, config)
    assert message in load_error(repo, "lenet5")


def test_failed_startup_model_makes_the_server_not_ready(repo, lenet_copy):
    lenet_copy(repo, "broken")
    edit_manifest(repo / "broken" / "1", sha256="f" * 64)

    async def main():
        m = manager(repo)
        await m.start()
        try:
            return (
                m.ready,
                m.failed(),
                {e.name: (e.state, e.reason) for e in m.index()},
                m.resolve("lenet5"),
            )
        finally:
            await m.close(timeout=5)

    ready, failures, index, served = asyncio.run(main())
    assert not ready and failures == ["broken"]
    assert index["broken"][0] == "UNAVAILABLE" and "sha256" in index["broken"][1]
    assert served.name == "lenet5"  # the others serve


def test_tensorrt_plan_falls_back_to_the_onnx_artifact(repo, caplog):
    version_dir = repo / "lenet5" / "1"
    (version_dir / "model.plan").write_bytes(b"not a real plan")
    fallback = Artifact(
        file="model.onnx", format="onnx", sha256=sha256_file(version_dir / "model.onnx"), precision="fp32"
    )
    manifest = Manifest.read(version_dir)
    manifest.artifact, manifest.format, manifest.sha256 = "model.plan", "tensorrt_plan", "e" * 64
    manifest.fallback = fallback
    manifest.versions = {"tensorrt": "10.0.1"}
    manifest.gpu = {"name": "NVIDIA A10", "compute_capability": "8.6"}
    manifest.write(version_dir)
    config = read_config(repo / "lenet5")
    config.platform = "tensorrt_plan"
    write_config(repo / "lenet5", config)
    with caplog.at_level(logging.WARNING):
        served = asyncio.run(load(repo, "lenet5"))
    assert served.backend_kind == "onnxruntime"
    assert served.choice.fallback_reason
    assert (
        "cannot run the TensorRT plan" in caplog.text
        and "serving the ONNX fallback model.onnx" in caplog.text
    )
    manifest.fallback = None
    manifest.write(version_dir)
    assert "cannot run the TensorRT plan" in load_error(repo, "lenet5")
    assert "no ONNX fallback artifact" in load_error(repo, "lenet5")


def test_device_cuda_without_cuda_is_refused(repo):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    assert "device is cuda, but onnxruntime has no CUDA provider" in load_error(repo, "lenet5", device="cuda")


def test_instance_group_count_gives_parallel_instances(repo):
    config = read_config(repo / "lenet5")
    config.instance_group[0].count = 2
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    write_config(repo / "lenet5", config)
    served = asyncio.run(load(repo, "lenet5"))
    assert len(served.backends) == 2
    assert not served.batcher.inline  # instances run side by side in their threads


def test_version_policy():
    policy = mc.ModelVersionPolicy()
    assert select_versions(policy, [1, 2, 5]) == [5]  # Triton's default: the latest
    policy.latest.num_versions = 2
    assert select_versions(policy, [1, 2, 5]) == [2, 5]
    policy.all.SetInParent()
    assert select_versions(policy, [1, 2, 5]) == [1, 2, 5]
    policy.specific.versions.extend([2, 7])
    assert select_versions(policy, [1, 2, 5]) == [2]


def test_reload_keeps_unchanged_versions_and_serves_new_ones(repo, artifacts):
    serve_all_versions(repo / "lenet5")

    async def main():
        m = manager(repo)
        await m.load("lenet5")
        v1 = m.resolve("lenet5", "1")
        staging = repo.parent / "staging"
        shutil.copytree(artifacts.lenet5_v2, staging)
        shutil.move(staging, repo / "lenet5" / "2")
        await m.poll_once()  # seen changed: settles until the next poll sees the same files
        assert [v.version for v in m.versions_of("lenet5")] == [1]
        await m.poll_once()
        try:
            x = np.zeros((1, 1, 32, 32), np.float32)
            return (
                v1,
                m.resolve("lenet5", "1"),
                m.resolve("lenet5").version,
                await m.resolve("lenet5", "1").batcher.submit(x),
                await m.resolve("lenet5", "2").batcher.submit(x),
            )
        finally:
            await m.close(timeout=5)

    old_v1, new_v1, latest, out1, out2 = asyncio.run(main())
    assert new_v1 is old_v1  # untouched version reused, not reloaded
    assert latest == 2
    assert not np.allclose(out1, out2)  # different weights


def test_poll_loads_a_folder_only_once_two_polls_see_the_same_files(repo, artifacts):
    """A version copied in file by file (no atomic move) is not loaded half-written: each poll that sees
    it changed since the last one waits, and the model serves its old version meanwhile."""
    serve_all_versions(repo / "lenet5")

    async def main():
        m = manager(repo)
        await m.load("lenet5")
        seen = []
        try:
            target = repo / "lenet5" / "2"
            target.mkdir()
            files = sorted(p for p in artifacts.lenet5_v2.iterdir() if p.is_file())
            for f in files:  # one file per poll: the folder is still being written
                shutil.copy2(f, target / f.name)
                await m.poll_once()
                seen.append([v.version for v in m.versions_of("lenet5")])
            await m.poll_once()  # unchanged since the last poll: loaded now
            seen.append([v.version for v in m.versions_of("lenet5")])
            return seen, m.ready
        finally:
            await m.close(timeout=5)

    seen, ready = asyncio.run(main())
    assert len(seen) >= 3, "the version folder should hold several files"
    assert seen[:-1] == [[1]] * (len(seen) - 1), seen
    assert seen[-1] == [1, 2]
    assert ready


def test_unloaded_versions_leave_the_metrics(repo, artifacts):
    """Rolling versions through must not grow the scrape: a version nothing serves any more has no series."""
    config = read_config(repo / "lenet5")
    config.version_policy.latest.num_versions = 1
    write_config(repo / "lenet5", config)

    async def main():
        m = manager(repo)
        labels = lambda: sorted(t.labels[:2] for t in m.metrics.versions())  # noqa: E731
        seen = []
        try:
            await m.load("lenet5")
            seen.append(labels())
            shutil.copytree(artifacts.lenet5_v2, repo / "lenet5" / "2")
            await m.load("lenet5")  # version 2 replaces version 1
            seen.append(labels())
            await m.unload("lenet5")
            seen.append(labels())
            await m.load("lenet5")
            seen.append(labels())
        finally:
            await m.close(timeout=5)
        return seen

    assert asyncio.run(main()) == [[("lenet5", "1")], [("lenet5", "2")], [], [("lenet5", "2")]]


def test_unknown_and_unsafe_names(repo):
    assert "no model 'nope'" in load_error(repo, "nope")
    with pytest.raises(InvalidInput, match="not a model folder's name"):
        asyncio.run(load(repo, "../repo"))
