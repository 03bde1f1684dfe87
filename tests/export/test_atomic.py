"""A failure never leaves a half-written entry; --force and new versions replace whole folders."""

import os

import pytest

import export.pipeline as pipeline
import modelrepo.writer as writer_module
from export import ValidationError, export_model
from export.validate import Tolerance
from modelrepo.config import make_config, read_config
from modelrepo.layout import model_names
from modelrepo.manifest import Manifest
from modelrepo.writer import RepositoryWriter


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_failure_in_a_late_stage_writes_nothing(tmp_path, monkeypatch):
    def broken_quantizer(*args, **kwargs):
        raise RuntimeError("injected calibration failure")

    monkeypatch.setattr(pipeline, "quantize_int8", broken_quantizer)
    with pytest.raises(RuntimeError, match="injected"):
        export_model("lenet5", fp16=True, int8=True, repo=tmp_path, eval_samples=4, tensorrt="off")
    assert _listing(tmp_path) == []  # neither the fp32/fp16 entries built before it, nor staging


def test_parity_failure_is_loud_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "FP32_TOLERANCE", Tolerance(atol=0.0, rtol=0.0))
    with pytest.raises(ValidationError, match=r"fp32 ONNX \(model.onnx\) disagrees with PyTorch"):
        export_model("lenet5", repo=tmp_path, eval_samples=4, tensorrt="off", seed=1)
    assert _listing(tmp_path) == []


def _stage(writer, name, marker):
    vdir = writer.version_dir(name)
    (vdir / "model.onnx").write_text(marker)
    config = make_config(
        name, platform="onnxruntime_onnx", max_batch_size=4, input_shape=[1, 8, 8], num_classes=2
    )
    manifest = Manifest(
        model=name,
        source_model="m",
        precision="fp32",
        artifact="model.onnx",
        format="onnx",
        sha256="0" * 64,
        preprocessing={},
        inputs=[],
        outputs=[],
    )
    writer.finish(name, config, ["a", "b"], manifest)


def test_failed_commit_leaves_no_half_entry(tmp_path, monkeypatch):
    real_rename = os.rename
    calls = []

    def rename_failing_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("injected: disk full")
        real_rename(src, dst)

    monkeypatch.setattr(writer_module.os, "rename", rename_failing_second)
    with pytest.raises(OSError, match="injected"), RepositoryWriter(tmp_path, 1) as w:
        _stage(w, "a", "A")
        _stage(w, "b", "B")
        w.commit()
    assert model_names(tmp_path) == ["a"]  # the first entry is whole, the second absent
    assert _listing(tmp_path / "a") == ["1", "1/manifest.json", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # staging removed


def test_force_replaces_a_version_whole_and_keeps_others(tmp_path, monkeypatch):
    with RepositoryWriter(tmp_path, 1) as w:
        _stage(w, "m", "v1-old")
        w.commit()
    with RepositoryWriter(tmp_path, 2) as w:
        _stage(w, "m", "v2")
        w.commit()
    with RepositoryWriter(tmp_path, 1, replace=True) as w:
        _stage(w, "m", "v1-new")
        w.commit()
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "v1-new"
    assert (tmp_path / "m" / "2" / "model.onnx").read_text() == "v2"
    assert _listing(tmp_path / "m") == [
        "1",
        "1/manifest.json",
        "1/model.onnx",
        "2",
        "2/manifest.json",
        "2/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert read_config(tmp_path / "m").name == "m"

    # a failing swap puts the old version back
    real_rename = os.rename

    def fail_on_swap_in(src, dst):
        if str(dst).endswith("/m/1") and ".staging-" in str(src):
            raise OSError("injected swap failure")
        real_rename(src, dst)

    monkeypatch.setattr(writer_module.os, "rename", fail_on_swap_in)
    with pytest.raises(OSError, match="injected"), RepositoryWriter(tmp_path, 1, replace=True) as w:
        _stage(w, "m", "v1-newest")
        w.commit()
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "v1-new"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
