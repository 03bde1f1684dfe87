"""TensorRT code paths: around the missing library here, for real where TensorRT and a GPU exist."""

import sys

import pytest

from export import ExportError, TensorRTUnavailableError, export_model
from export.tensorrt import resolve_mode, tensorrt_status
from modelrepo.config import read_config
from modelrepo.manifest import Manifest, sha256_file


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def test_status_names_what_is_missing(no_tensorrt):
    status = tensorrt_status()
    assert not status.available and "TensorRT is not installed" in status.reason


def test_modes(no_tensorrt):
    assert resolve_mode("off", True) is None
    assert not resolve_mode("auto", True).available
    with pytest.raises(TensorRTUnavailableError, match=r"^tensorrt on, but .* not installed"):
        resolve_mode("on", True)
    with pytest.raises(ExportError, match="ask for fp16 and/or int8"):
        resolve_mode("on", False)
    with pytest.raises(ExportError, match="must be one of auto, on, off"):
        resolve_mode("yes", True)


def test_auto_skips_plans_and_still_writes_onnx(no_tensorrt, tmp_path):
    result = export_model("lenet5", fp16=True, repo=tmp_path, eval_samples=4, tensorrt="auto")
    assert any("TensorRT plans skipped: TensorRT is not installed" in n for n in result.notes)
    manifest = Manifest.read(result["fp16"].version_dir)
    assert manifest.format == "onnx" and manifest.gpu is None
    assert [a.format for a in manifest.alternatives] == ["torch_export"]
    assert not (result["fp16"].version_dir / "model.plan").exists()


@pytest.mark.tensorrt
def test_plans_where_tensorrt_exists(tmp_path, request):
    status = tensorrt_status()
    if not status.available:
        pytest.skip(f"TensorRT plans cannot be built here: {status.reason}")
    lenet_checkpoint = request.getfixturevalue("lenet_checkpoint")
    result = export_model(
        "lenet5",
        weights=str(lenet_checkpoint),
        fp16=True,
        int8=True,
        repo=tmp_path,
        tensorrt="on",
        max_batch_size=16,
    )
    for precision in ("fp16", "int8"):
        entry = result[precision]
        manifest = Manifest.read(entry.version_dir)
        assert manifest.format == "tensorrt_plan" and manifest.artifact == "model.plan"
        assert manifest.sha256 == sha256_file(entry.version_dir / "model.plan")
        onnx = manifest.alternatives[0]
        assert onnx.file == "model.onnx" and onnx.format == "onnx"
        assert onnx.sha256 == sha256_file(entry.version_dir / "model.onnx")
        assert onnx.validation["runtime"].startswith("onnxruntime")
        programs = [a.file for a in manifest.alternatives[1:]]
        assert programs == (["model.pt2"] if precision == "fp16" else [])
        assert manifest.gpu["compute_capability"] and manifest.gpu["tensorrt"] == status.version
        assert manifest.gpu["profile"] == {"min": 1, "opt": 8, "max": 16}
        assert manifest.versions["tensorrt"] == status.version
        v = manifest.validation
        assert v["runtime"] == "tensorrt"
        assert v["top1_agreement"] >= 0.97 and v["accuracy"] >= v["reference_accuracy"] - 0.01
        config = read_config(entry.model_dir)
        assert config.platform == "tensorrt_plan"
