"""Every registered model exports to ONNX FP32 and a torch.export program with random weights, and both
match PyTorch. Models of over 25 million parameters (100 MiB of FP32 weights) are marked ``slow``."""

import pytest

from export import export_model
from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.torch_program import validation_device
from modelrepo.config import read_config
from modelrepo.manifest import Manifest, sha256_file
from models import get_model_entry, list_models

pytestmark = pytest.mark.slow

SLOW_PARAMS = 25_000_000


def _family():
    for name in list_models():
        big = (get_model_entry(name).published_params or 0) > SLOW_PARAMS
        yield pytest.param(name, marks=[pytest.mark.slow] if big else [])


@pytest.mark.parametrize("name", list(_family()))
def test_exports_with_parity(name, tmp_path):
    result = export_model(name, repo=tmp_path, max_batch_size=4, eval_samples=2, tensorrt="off")
    entry = result["fp32"]
    manifest = Manifest.read(entry.version_dir)
    parity = manifest.validation["parity"]
    assert parity["passed"] is True
    assert parity["batch_sizes"] == [1, 2, 4]
    assert parity["max_rel_error"] <= 1e-3
    assert manifest.sha256 == sha256_file(entry.artifact)
    spec = get_model_entry(name).input_spec
    assert manifest.inputs == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *spec.shape]}]
    config = read_config(entry.model_dir)
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert 1 <= config.max_batch_size <= 4
    assert config.max_batch_size == manifest.batching["chosen"]["max_batch_size"]  # fitted, at most the limit
    assert list(config.input[0].dims) == list(spec.shape)
    assert config.output[0].name == OUTPUT_NAME and config.output[0].dims[0] == len(manifest.labels)
    assert manifest.validation["onnx"]["opset"] == 18
    (program,) = manifest.alternatives
    assert program.file == "model.pt2" and program.validation["parity"]["passed"] is True
    assert program.validation["parity"]["max_rel_error"] <= 1e-3


def test_fp16_and_int8_of_an_imagenet_sized_model(tmp_path):
    result = export_model(
        "resnet18",
        fp16=True,
        int8=True,
        calib="random",
        calib_samples=8,
        calib_method="minmax",
        repo=tmp_path,
        max_batch_size=4,
        eval_samples=4,
        tensorrt="off",
    )
    fp16, int8 = result["fp16"].manifest, result["int8"].manifest
    assert fp16.validation["parity"]["passed"] and fp16.validation["parity"]["max_rel_error"] < 1e-2
    program = fp16.alternatives[0].validation  # the fp16 torch program: half precision throughout
    if validation_device() == "cuda":
        assert program["parity"]["passed"] and program["parity"]["max_rel_error"] < 1e-2
    else:  # torch's fp16 on a CPU is not served: its probe is checked at its first load on a GPU
        assert program["checked"] is False and program["probe"]["reference"] == "pytorch fp32"
    assert int8.validation["reference_check"]["passed"] and int8.validation["reference_check"]["samples"] == 2
    assert fp16.validation["top1_agreement"] == 1.0
    assert int8.quantization["calibration"]["source"].startswith("random")
    assert int8.validation["accuracy"] is None  # random inputs carry no labels
    assert int8.validation["parity"]["max_rel_error"] < 0.2
    assert result["int8"].artifact.stat().st_size < result["fp32"].artifact.stat().st_size / 3
