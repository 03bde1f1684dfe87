"""Train LeNet-5 on digits, export fp32 + fp16 + int8 (ONNX, and torch.export programs for fp32 and fp16),
read everything back and serve it by hand."""

import numpy as np
import pytest

from export import export_model
from export.pipeline import FP16_PROGRAM_UNCHECKED
from export.torch_program import NO_INT8_PROGRAM, ProgramRunner, validation_device
from export.validate import ort_session, run_session
from modelrepo.config import read_config
from modelrepo.layout import model_names, read_labels, versions
from modelrepo.manifest import Manifest, sha256_file
from models import get_model_entry
from models.datasets import digits_split


@pytest.fixture(scope="module")
def exported(lenet5_export):
    """The session's export (tests/conftest.py): fp32 + fp16 + int8 of the trained checkpoint."""
    return lenet5_export


def test_repository_layout(exported):
    repo = exported.repo
    assert model_names(repo) == ["lenet5", "lenet5_fp16", "lenet5_int8"]
    assert [p.name for p in repo.iterdir() if p.name.startswith(".")] == []  # staging cleaned up
    files = {"lenet5": "model.pt2", "lenet5_fp16": "model.pt2", "lenet5_int8": None}
    for name, program in files.items():
        assert versions(repo / name) == [1]
        expected = sorted(["manifest.json", "model.onnx", "probe.npz", *([program] if program else [])])
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == expected
        assert read_labels(repo / name) == [str(i) for i in range(10)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_manifest_and_config_read_back(exported, lenet_checkpoint, precision):
    entry = exported[precision]
    manifest = Manifest.read(entry.version_dir)
    name = "lenet5" if precision == "fp32" else f"lenet5_{precision}"
    assert (manifest.model, manifest.source_model, manifest.precision) == (name, "lenet5", precision)
    assert manifest.format == "onnx" and manifest.artifact == "model.onnx"
    assert manifest.sha256 == sha256_file(entry.version_dir / "model.onnx")
    assert manifest.input_spec == get_model_entry("lenet5").input_spec
    assert manifest.preprocessing["color"] == "L" and manifest.preprocessing["height"] == 32
    assert manifest.weights["source"] == "checkpoint"
    assert manifest.weights["sha256"] == sha256_file(lenet_checkpoint)
    assert manifest.weights["trained"]["metrics"]["heldout_accuracy"] > 0.97
    assert manifest.versions["torch"] and manifest.versions["onnxruntime"] and manifest.versions["onnx"]
    v = manifest.validation
    assert v["eval_data"] == {"source": "digits:heldout", "samples": 360, "labelled": True}
    assert v["reference_accuracy"] > 0.97
    config = read_config(entry.model_dir)
    assert config.name == name and config.platform == "onnxruntime_onnx"
    # batching fitted to latencies measured here: LeNet-5 computes in microseconds, so the whole batch
    # fits any budget and waiting for company never pays
    assert config.max_batch_size == 32 and list(config.input[0].dims) == [1, 32, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 8 * 32
    fitted = manifest.batching
    assert [b for b, _ in fitted["curve"]] == [1, 2, 4, 8, 16, 32] and fitted["latency_budget_ms"] == 100
    assert fitted["chosen"]["max_batch_size"] == 32 and "no queue delay" in fitted["reason"]
    assert config.parameters["precision"].string_value == precision
    assert config.parameters["source_model"].string_value == "lenet5"
    assert config.output[0].label_filename == "labels.txt"
    assert manifest.schema == 2


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_programs_are_alternatives_checked_where_they_run(exported, precision):
    """The fp32 program is checked on any host; the fp16 one only where CUDA runs it (torch's fp16 on a
    CPU is not served, and took VGG-19 over 16 minutes): elsewhere it says so, and carries its probe."""
    manifest = exported[precision].manifest
    (program,) = manifest.alternatives
    assert (program.file, program.format, program.precision) == ("model.pt2", "torch_export", precision)
    assert program.sha256 == sha256_file(exported[precision].version_dir / "model.pt2")
    assert program.extra["dtype"] == {"fp32": "float32", "fp16": "float16"}[precision]
    v = program.validation
    assert v["probe"]["expected"] == "expected_model.pt2" and v["probe"]["reference"] == "pytorch fp32"
    if precision == "fp16" and validation_device() == "cpu":
        assert v["checked"] is False and v["reason"] == FP16_PROGRAM_UNCHECKED
        assert "parity" not in v
    else:
        assert v["parity"]["passed"] and v["runtime"].startswith("torch ")
        assert v["top1_agreement"] >= 0.99 and abs(v["accuracy"] - v["reference_accuracy"]) <= 0.01
        assert v["probe_check"]["max_abs_error"] <= v["probe_check"]["allowed"]
    assert manifest.notes == []


def test_int8_has_no_torch_program_and_says_why(exported):
    manifest = exported["int8"].manifest
    assert manifest.alternatives == [] and manifest.notes == [NO_INT8_PROGRAM]
    assert "TensorRT" in NO_INT8_PROGRAM and "CUDA" in NO_INT8_PROGRAM


def test_accuracies_recorded_and_int8_within_half_a_point(exported):
    fp32, fp16, int8 = (Manifest.read(exported[p].version_dir).validation for p in ("fp32", "fp16", "int8"))
    assert fp32["parity"]["passed"] and fp32["parity"]["max_rel_error"] < 1e-5
    assert fp32["top1_agreement"] == 1.0 and fp32["accuracy"] == fp32["reference_accuracy"] > 0.97
    assert fp16["parity"]["passed"] and fp16["top1_agreement"] >= 0.99
    assert abs(fp16["accuracy"] - fp32["accuracy"]) <= 0.01
    assert int8["parity"]["passed"] is None  # recorded, not a gate: quantization error is expected
    # 7-bit weights: the same on every x86 CPU (8-bit ones lost 1.67 points on AVX2 without VNNI)
    assert int8["accuracy_drop_points"] <= 0.5
    assert int8["accuracy"] >= fp32["accuracy"] - 0.005
    assert int8["top1_agreement"] >= 0.97
    q = Manifest.read(exported["int8"].version_dir).quantization
    assert q["format"] == "QDQ" and q["calibration"]["method"] == "entropy"
    assert q["calibration"]["source"] == "digits:train" and q["calibration"]["samples"] == 256
    assert q["quantize_nodes"] > 0 and q["dequantize_nodes"] > q["quantize_nodes"]
    assert q["reduce_range"] is True and "[-64, 64]" in q["weights"] and "VNNI" in q["why"]


def test_int8_weights_are_seven_bit(exported):
    """What reduce_range promises, read from the model itself: every quantized weight in [-64, 64]."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported["int8"].artifact))
    weights = [
        numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)


def test_int8_export_checked_against_the_exact_qdq_evaluation(exported):
    check = exported["int8"].manifest.validation["reference_check"]
    assert check["evaluator"] == "onnx.reference.ReferenceEvaluator" and check["passed"] is True
    assert check["samples"] == 4 and check["tolerance_steps"] == 2.0
    assert check["max_abs_error"] <= 2 * check["output_step"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_artifact_carries_a_probe_it_passes_here(exported, precision):
    """probe.npz: the inputs and each artifact's expected outputs; what the server checks at load."""
    from modelrepo.probe import Expectation, agreement, output_key, read_probe

    entry = exported[precision]
    for artifact in entry.manifest.artifacts:
        expectation = Expectation.from_validation(artifact.validation)
        assert expectation.key == output_key(artifact.file)  # each artifact its own expected outputs
        inputs, expected = read_probe(entry.version_dir, expectation, (1, 32, 32), 10)
        assert inputs.shape == (4, 1, 32, 32) and expected.shape == (4, 10)
        if artifact.format == "onnx":
            outputs = run_session(ort_session(entry.version_dir / artifact.file), inputs, 4)
        else:
            outputs = ProgramRunner(entry.version_dir / artifact.file, "cpu")(inputs)
        assert agreement(outputs, expected, expectation.tolerance).passed, artifact.file


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_served_artifact_reproduces_recorded_accuracy(exported, precision):
    """What a server does: preprocess with the manifest's spec, run the artifact, compare."""
    entry = exported[precision]
    manifest = Manifest.read(entry.version_dir)
    x, y = digits_split(manifest.input_spec).heldout.arrays()
    logits = run_session(ort_session(entry.artifact), x, 32)
    assert logits.dtype == np.float32 and logits.shape == (360, 10)
    assert (logits.argmax(1) == y).mean() == pytest.approx(manifest.validation["accuracy"])
    for program in manifest.alternatives:  # the torch program, loaded as the server loads it
        if program.validation.get("checked") is False:  # fp16 without CUDA: its probe is its check
            continue
        runner = ProgramRunner(entry.version_dir / program.file, "cpu")
        accuracy = (runner.run(x, 32).argmax(1) == y).mean()
        assert accuracy == pytest.approx(program.validation["accuracy"])


def test_other_calibration_methods(lenet_checkpoint, tmp_path):
    for version, method in ((1, "percentile"), (2, "minmax")):
        result = export_model(
            "lenet5",
            weights=str(lenet_checkpoint),
            int8=True,
            calib_method=method,
            calib_samples=64,
            repo=tmp_path,
            version=version,
            tensorrt="off",
        )
        v = result["int8"].manifest.validation
        assert result["int8"].manifest.quantization["calibration"]["method"] == method
        assert v["accuracy_drop_points"] <= 0.5, method
    assert versions(tmp_path / "lenet5_int8") == [1, 2]
