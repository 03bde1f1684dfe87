"""The load-time numerics check (service/serving/numerics.py), in-process: every artifact the export checked
passes on this host; a probe whose expected outputs disagree makes the model unavailable with the reason
in the index, a metric, and readiness as for any model that fails to load."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from harness.repository import copy_entry, rewrite_probe
from modelrepo.manifest import Manifest
from modelrepo.probe import (
    PROBE_NAME,
    Expectation,
    ProbeError,
    Tolerance,
    read_probe,
)
from service.errors import ModelLoadError
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics


def tamper_expected(version_dir, artifact_file: str, shift: float) -> None:
    """probe.npz with one expected logit of ``artifact_file`` moved by ``shift`` and its new sha256
    recorded, as a probe written on a host whose int8 kernels computed otherwise would be."""
    manifest = Manifest.read(version_dir)
    (artifact,) = [a for a in manifest.artifacts if a.file == artifact_file]
    _, expected = read_probe(version_dir, Expectation.from_validation(artifact.validation))
    expected = expected.copy()
    expected[0, 0] += shift
    rewrite_probe(version_dir, {artifact_file: expected})


async def load(repo, name, metrics=None):
    manager = ModelManager(
        Settings(repo=repo, model_control_mode="explicit"), metrics or ServerMetrics(gpu=False)
    )
    try:
        with contextlib.suppress(ModelLoadError):
            await manager.load(name)
        return manager.ready, {e.name: (e.state, e.reason) for e in manager.index()}
    finally:
        await manager.close(timeout=5)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_exported_artifact_passes_its_probe_here(lenet5_export, tmp_path, precision):
    entry = lenet5_export[precision]
    copy_entry(entry.model_dir, tmp_path)
    ready, index = asyncio.run(load(tmp_path, entry.name))
    assert ready and index[entry.name] == ("READY", "")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_probe_the_outputs_disagree_with_makes_the_model_unavailable(lenet5_export, tmp_path, precision):
    entry = lenet5_export[precision]
    folder = copy_entry(entry.model_dir, tmp_path)
    expectation = Expectation.from_validation(entry.manifest.validation)
    tamper_expected(folder / "1", "model.onnx", shift=10 * expectation.tolerance.atol + 1.0)
    metrics = ServerMetrics(gpu=False)
    ready, index = asyncio.run(load(tmp_path, entry.name, metrics))
    state, reason = index[entry.name]
    assert not ready and state == "UNAVAILABLE"
    assert "numerics check failed: model.onnx on onnxruntime" in reason
    assert expectation.reference in reason and "this host computes the artifact differently" in reason
    assert metrics.numerics_failures == {(entry.name, "1"): 1}
    text = metrics_text(metrics)
    assert f'cnnserve_model_numerics_check_failures_total{{model="{entry.name}",version="1"}} 1.0' in text


def test_a_shift_within_the_tolerance_loads(lenet5_export, tmp_path):
    entry = lenet5_export["int8"]
    folder = copy_entry(entry.model_dir, tmp_path)
    expectation = Expectation.from_validation(entry.manifest.validation)
    tamper_expected(folder / "1", "model.onnx", shift=expectation.tolerance.atol / 4)
    ready, index = asyncio.run(load(tmp_path, entry.name))
    assert ready and index[entry.name][0] == "READY"


def test_a_broken_or_replaced_probe_is_a_load_error_with_the_reason(lenet5_export, tmp_path):
    entry = lenet5_export["fp32"]
    folder = copy_entry(entry.model_dir, tmp_path)
    probe = folder / "1" / PROBE_NAME
    probe.write_bytes(probe.read_bytes()[:100])
    _, index = asyncio.run(load(tmp_path, entry.name))
    assert "numerics probe of model.onnx: sha256 of probe.npz is" in index[entry.name][1]
    probe.unlink()
    _, index = asyncio.run(load(tmp_path, entry.name))
    assert "probe.npz does not exist" in index[entry.name][1]


def test_a_manifest_without_probe_loads_as_before(lenet5_export, tmp_path):
    """Entries exported before probes existed keep loading."""
    entry = lenet5_export["fp32"]
    folder = copy_entry(entry.model_dir, tmp_path)
    data = json.loads((folder / "1" / "manifest.json").read_text())
    del data["validation"]["probe"]
    (folder / "1" / "manifest.json").write_text(json.dumps(data))
    (folder / "1" / PROBE_NAME).unlink()
    ready, index = asyncio.run(load(tmp_path, entry.name))
    assert ready and index[entry.name] == ("READY", "")


def test_a_model_whose_batches_are_smaller_than_the_probe_runs_it_in_chunks(lenet5_export, tmp_path):
    entry = lenet5_export["int8"]
    copy_entry(entry.model_dir, tmp_path, max_batch_size=1, preferred_batch_sizes=())
    ready, index = asyncio.run(load(tmp_path, entry.name))
    assert ready and index[entry.name] == ("READY", "")


def probe_file(folder, arrays: dict, compress: bool = False) -> Expectation:
    """A probe.npz of ``arrays`` as np.savez writes them (or savez_compressed), with a matching sha256."""
    (np.savez_compressed if compress else np.savez)(folder / PROBE_NAME, **arrays)
    sha = hashlib.sha256((folder / PROBE_NAME).read_bytes()).hexdigest()
    return Expectation("expected_model.onnx", sha, Tolerance(0.1, 0.0), "x", "y")


def test_probe_reader_refuses_what_is_not_a_probe(tmp_path):
    inputs, outputs = np.zeros((2, 1, 4, 4), np.float16), np.zeros((2, 3), np.float32)
    good = probe_file(tmp_path, {"inputs": inputs, "expected_model.onnx": outputs})
    assert read_probe(tmp_path, good, (1, 4, 4), 3)[0].dtype == np.float32
    with pytest.raises(ProbeError, match="the model takes"):
        read_probe(tmp_path, good, (3, 4, 4), 3)
    with pytest.raises(ProbeError, match="outputs have 3 classes, the model 10"):
        read_probe(tmp_path, good, (1, 4, 4), 10)
    with pytest.raises(ProbeError, match=r"no array 'expected_model\.pt2'"):
        read_probe(tmp_path, Expectation("expected_model.pt2", good.sha256, Tolerance(0.1, 0.0), "x", "y"))
    bad = probe_file(tmp_path, {"inputs": inputs[0], "expected_model.onnx": outputs})
    with pytest.raises(ProbeError, match="must be 4-D"):
        read_probe(tmp_path, bad)
    with pytest.raises(ProbeError, match="tolerance must be finite"):
        Expectation.from_validation({"probe": {"expected": "e", "sha256": "s", "atol": "nan", "rtol": 0}})
    with pytest.raises(ProbeError, match="malformed"):
        Expectation.from_validation({"probe": {"expected": "e"}})


def test_probe_reader_refuses_hostile_files_before_allocating(tmp_path):
    """A repository writer controls probe.npz and its sha256: compressed members (a zip bomb), shapes the
    bytes do not hold, many members, many rows are refused without making their arrays."""
    outputs = np.zeros((2, 3), np.float32)
    inputs = np.zeros((2, 1, 512, 512), np.float32)
    bomb = probe_file(tmp_path, {"inputs": inputs, "expected_model.onnx": outputs}, compress=True)
    with pytest.raises(ProbeError, match="is compressed"):
        read_probe(tmp_path, bomb)
    many = probe_file(tmp_path, {f"a{i}": outputs for i in range(9)})
    with pytest.raises(ProbeError, match="9 members, at most 8"):
        read_probe(tmp_path, many)
    seventeen = {"inputs": np.zeros((17, 1, 2, 2), np.float16), "expected_model.onnx": np.zeros((17, 3))}
    rows = probe_file(
        tmp_path, {k: v.astype(np.float16 if k == "inputs" else np.float32) for k, v in seventeen.items()}
    )
    with pytest.raises(ProbeError, match=r"1 <= N <= 16"):
        read_probe(tmp_path, rows)
    header = io.BytesIO()  # a .npy header that declares far more than the 16 bytes after it
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f2", "fortran_order": False, "shape": (2, 1, 9999999, 2)}
    )
    with zipfile.ZipFile(tmp_path / PROBE_NAME, "w") as archive:
        archive.writestr("inputs.npy", header.getvalue() + bytes(16))
        archive.writestr("expected_model.onnx.npy", b"")
    sha = hashlib.sha256((tmp_path / PROBE_NAME).read_bytes()).hexdigest()
    lying = Expectation("expected_model.onnx", sha, Tolerance(0.1, 0.0), "x", "y")
    with pytest.raises(ProbeError, match=r"declares shape \[2, 1, 9999999, 2\] but holds 16 bytes"):
        read_probe(tmp_path, lying)


def metrics_text(metrics: ServerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
