"""The family exports to ONNX FP32 and a torch.export program with random weights, and both match PyTorch.

Every kind of layer the family uses is exported by the smallest member that has that set of layers (VGG-11
for the VGGs without batch norm, ResNet-50 for the bottleneck ResNets, ...): nine members cover the family's
twenty-one. The other twelve differ from theirs in depth and width only and cost eight minutes of the
suite on two cores; they skip with the member that stands for them, and ``CNNSERVE_WHOLE_FAMILY=1`` exports
them too. Models of over 25 million parameters (100 MiB of FP32 weights) are marked ``slow``."""

import os
from functools import cache

import pytest
import torch

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


@cache
def standing_for() -> dict[str, str]:
    """Each member -> the member exported in its place: the smallest one built of the same layer types."""
    kinds: dict[frozenset[str], list[tuple[int, str]]] = {}
    for name in list_models():
        entry = get_model_entry(name)
        with torch.device("meta"):  # the modules only: no weights allocated or initialised
            model = entry.builder(num_classes=entry.num_classes)
        layers = frozenset(type(m).__name__ for m in model.modules())
        kinds.setdefault(layers, []).append((sum(p.numel() for p in model.parameters()), name))
    return {name: min(members)[1] for members in kinds.values() for _, name in members}


def test_the_members_exported_cover_every_layer_type_once():
    exported = set(standing_for().values())
    assert {"lenet5", "alexnet", "zfnet", "googlenet", "vgg11", "vgg11_bn"} <= exported
    assert {"resnet18", "resnet50", "densenet121"} <= exported  # basic and bottleneck blocks, dense blocks
    assert standing_for()["vgg19"] == "vgg11" and standing_for()["resnet152"] == "resnet50"


@pytest.mark.parametrize("name", list(_family()))
def test_exports_with_parity(name, tmp_path):
    stand_in = standing_for()[name]
    if stand_in != name and os.environ.get("CNNSERVE_WHOLE_FAMILY") != "1":
        pytest.skip(f"same layer types as {stand_in}, which is exported (CNNSERVE_WHOLE_FAMILY=1: this too)")
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
