"""Every registered model exports to ONNX FP32 with random weights and matches PyTorch."""

import pytest

from export import export_model
from export.onnx_export import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME
from modelrepo.config import read_config
from modelrepo.manifest import Manifest, sha256_file
from models import get_model_entry, list_models


@pytest.mark.parametrize("name", list_models())
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
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert list(config.input[0].dims) == list(spec.shape)
    assert config.output[0].name == OUTPUT_NAME and config.output[0].dims[0] == len(manifest.labels)
    assert BATCH_AXIS == "batch"
    assert INPUT_NAME in entry.artifact.read_bytes().decode("latin-1")
