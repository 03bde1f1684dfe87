"""The int8 check that does not depend on the host's instruction set: onnxruntime's outputs against the
exact evaluation of the same Q/DQ graph (export/int8_reference.py)."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from export import int8_reference
from export.calibration import calibration_inputs, evaluation_inputs
from export.errors import ValidationError
from export.int8 import quantize_int8
from export.onnx_export import export_onnx
from export.validate import ort_session, run_session
from models import load_model


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()[2:]}


@pytest.fixture(scope="module")
def trained(lenet_checkpoint, tmp_path_factory):
    """The trained LeNet-5 as FP32 ONNX, with calibration and held-out digits."""
    folder = tmp_path_factory.mktemp("int8_reference")
    loaded = load_model("lenet5", weights=str(lenet_checkpoint))
    export_onnx(loaded.model, loaded.input_spec, folder / "fp32.onnx")
    calib, _ = calibration_inputs("digits", loaded.input_spec, 256)
    heldout = evaluation_inputs("digits", loaded.input_spec, loaded.labels, None)
    return folder, calib, heldout.inputs[:4]


def quantize(trained, activations="uint8") -> Path:
    folder, calib, _ = trained
    out = folder / f"{activations}.onnx"
    if not out.exists():
        quantize_int8(folder / "fp32.onnx", out, calib, activations=activations, work_dir=folder)
    return out


def test_served_int8_passes_on_this_host(trained):
    """7-bit weights: onnxruntime's int8 kernels compute the graph's meaning on this CPU, whatever it is."""
    path, inputs = quantize(trained), trained[2]
    check, exact = int8_reference.check_against_reference(
        path, inputs, run_session(ort_session(path), inputs, 4)
    )
    assert check.passed and check.evaluator == int8_reference.EVALUATOR and check.samples == 4
    assert check.max_abs_error <= 2 * check.output_step and exact.shape == (4, 10)
    assert check.record()["passed"] is True and check.record()["tolerance_steps"] == 2.0


def test_outputs_off_as_a_saturating_cpus_are_fail_the_check(trained):
    """An AVX2 CPU without VNNI put LeNet-5's 8-bit-weight logits ~30 output steps off; one step of
    requantization rounding passes."""
    path, inputs = quantize(trained), trained[2]
    _, exact = int8_reference.check_against_reference(path, inputs, run_session(ort_session(path), inputs, 4))
    step = int8_reference.output_step(onnx.load(str(path)))
    one_step = exact.copy()
    one_step[1, 2] += step
    assert int8_reference.check_against_reference(path, inputs, one_step)[0].passed
    saturated = exact.copy()
    saturated[0, 3] -= 30 * step
    with pytest.raises(ValidationError, match=r"30\.0 output steps .* allowed 2\) .*saturation"):
        int8_reference.check_against_reference(path, inputs, saturated)
    broken = exact.copy()
    broken[2, 0] = np.nan
    with pytest.raises(ValidationError, match="disagrees"):
        int8_reference.check_against_reference(path, inputs, broken)


def test_eight_bit_weights_are_caught_exactly_where_the_cpu_saturates(trained):
    """The format this project shipped before: S8 weights in full range. On a CPU without VNNI (or AMX)
    onnxruntime's U8S8 kernels saturate and the check fails; with VNNI it passes. Either way the check
    tells the truth about this host."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from export.int8 import ArrayCalibrationReader

    folder, calib, inputs = trained
    path = folder / "u8s8_8bit.onnx"
    quantize_static(
        str(folder / "fp32.onnx"),
        str(path),
        ArrayCalibrationReader(calib, 64),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"WeightSymmetric": True},
    )
    runtime = run_session(ort_session(path), inputs, 4)
    flags = cpu_flags()
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags or "avx2" not in flags:
        assert int8_reference.check_against_reference(path, inputs, runtime)[0].passed
    else:
        with pytest.raises(ValidationError, match="saturation"):
            int8_reference.check_against_reference(path, inputs, runtime)


def test_graphs_the_reference_evaluator_cannot_run_fall_back_to_unfused_onnxruntime(trained, monkeypatch):
    path, inputs = quantize(trained), trained[2]
    exact = int8_reference.check_against_reference(path, inputs, run_session(ort_session(path), inputs, 4))[1]

    def broken(_path):
        raise ValueError("all the input array dimensions except for the concatenation axis must match")

    monkeypatch.setattr(int8_reference, "reference_evaluator", broken)
    runtime = run_session(ort_session(path), inputs, 4)
    check, unfused = int8_reference.check_against_reference(path, inputs, runtime)
    assert check.passed and check.evaluator == int8_reference.UNFUSED
    assert "ValueError" in check.record()["evaluator_note"]
    assert np.abs(unfused - exact).max() <= check.output_step  # the same semantics, float rounding apart


def test_the_symmetric_tensorrt_source_is_full_range(trained):
    """TensorRT accumulates in 32 bits: its source keeps 8-bit weights and symmetric activations."""

    from onnx import numpy_helper

    model = onnx.load(str(quantize(trained, "int8")))
    weights = [
        numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("weight_quantized")
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) == 127


def test_output_step_needs_a_dequantized_output(trained):

    model = onnx.load(str(trained[0] / "fp32.onnx"))
    with pytest.raises(ValidationError, match="not a DequantizeLinear"):
        int8_reference.output_step(model)
