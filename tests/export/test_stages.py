"""The single stages: ONNX export, fp16 conversion, int8 quantization, validation helpers."""

import numpy as np
import onnx
import pytest
import torch

from export import ExportError, ValidationError
from export.calibration import calibration_inputs, evaluation_inputs, match_labels
from export.fp16 import convert_fp16
from export.int8 import ArrayCalibrationReader, calibration_batch_size, quantize_int8
from export.onnx_export import BATCH_AXIS, export_onnx
from export.validate import FP32_TOLERANCE, compare, ort_session, parity_batch_sizes, require, top1_agreement
from models import get_model, get_model_entry

SPEC = get_model_entry("lenet5").input_spec


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(get_model("lenet5"), SPEC, path)
    return path


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_onnx_has_a_dynamic_batch_axis(lenet_onnx):
    proto = onnx.load(str(lenet_onnx))
    assert _dims(proto.graph.input[0]) == [BATCH_AXIS, 1, 32, 32]
    assert _dims(proto.graph.output[0]) == [BATCH_AXIS, 10]
    session = ort_session(lenet_onnx)
    x = np.random.default_rng(0).standard_normal((7, 1, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        ref = get_model("lenet5")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], ref, atol=1e-5)


def test_opset_below_the_exporters_minimum(tmp_path):
    with pytest.raises(ExportError, match="opset must be >= 18"):
        export_onnx(get_model("lenet5"), SPEC, tmp_path / "m.onnx", opset=13)


def test_fp16_keeps_fp32_io(lenet_onnx, tmp_path):
    out = tmp_path / "fp16.onnx"
    convert_fp16(lenet_onnx, out)
    proto = onnx.load(str(out))
    fp32 = onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == fp32
    assert proto.graph.output[0].type.tensor_type.elem_type == fp32
    floats = {t.data_type for t in proto.graph.initializer} & {fp32, onnx.TensorProto.FLOAT16}
    assert floats == {onnx.TensorProto.FLOAT16}  # every weight in fp16 (int64 shape constants aside)
    x = np.zeros((3, 1, 32, 32), np.float32)
    assert ort_session(out).run(None, {"input": x})[0].dtype == np.float32


def test_calibration_reader_batches_and_ranges():
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    seen = []
    reader = ArrayCalibrationReader(x, 4, seen.append)
    assert len(reader) == 3
    assert [len(reader.get_next()["input"]) for _ in range(3)] == [4, 4, 2] and reader.get_next() is None
    reader.set_range(1, 2)
    np.testing.assert_array_equal(reader.get_next()["input"], x[4:8])
    assert reader.get_next() is None
    assert seen == [4, 4, 2, 4]
    assert calibration_batch_size(np.zeros((1, 3, 224, 224), np.float32)) == 6
    assert calibration_batch_size(np.zeros((1, 1, 32, 32), np.float32)) == 64


def _initializers(path, suffix):
    proto = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith(suffix)}


def test_int8_is_qdq_with_per_channel_symmetric_weights(lenet_onnx, tmp_path):
    calib, source = calibration_inputs("digits", SPEC, 32)
    assert calib.shape == (32, 1, 32, 32) and source == "digits:train"
    info = quantize_int8(lenet_onnx, tmp_path / "u8.onnx", calib, method="percentile", work_dir=tmp_path)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "u8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    scales = _initializers(tmp_path / "u8.onnx", "_scale")
    assert any(s.ndim == 1 and s.size == 6 for s in scales.values())  # conv1: one scale per channel
    zero_points = _initializers(tmp_path / "u8.onnx", "_zero_point")
    weights = [z for z in zero_points.values() if z.dtype == np.int8]
    activations = [z for z in zero_points.values() if z.dtype == np.uint8]
    assert weights and not any(z.any() for z in weights)  # symmetric weights
    assert activations and any(z.any() for z in activations)  # asymmetric uint8 activations
    assert info["activations"].startswith("uint8") and info["weights"].endswith("per-channel")
    assert info["preprocess"] == "quant_pre_process" and info["calibration"]["samples"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u8.onnx"]  # work files removed

    info = quantize_int8(lenet_onnx, tmp_path / "s8.onnx", calib, activations="int8", work_dir=tmp_path)
    zero_points = _initializers(tmp_path / "s8.onnx", "_zero_point")
    assert {z.dtype for z in zero_points.values()} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int32: bias
    assert not any(z.any() for z in zero_points.values())  # all symmetric, as TensorRT requires
    assert info["activations"] == "int8, symmetric, per-tensor"
    with pytest.raises(ExportError, match="calib_method must be one of"):
        quantize_int8(lenet_onnx, tmp_path / "x.onnx", calib, method="kl", work_dir=tmp_path)


def test_evaluation_labels_follow_the_models_classes():
    assert match_labels(["1", "0"], np.array([0, 1, 1]), ["0", "1", "2"]).tolist() == [1, 0, 0]
    assert match_labels(["cat"], np.array([0]), ["0", "1"]) is None
    ev = evaluation_inputs("digits", SPEC, [str(i) for i in range(10)])
    assert ev.describe() == {"source": "digits:heldout", "samples": 360, "labelled": True}
    assert evaluation_inputs("digits", SPEC, ["tench"] * 1000).labels is None
    rnd = evaluation_inputs("random", SPEC, ["0"], samples=5)
    assert rnd.inputs.shape == (5, 1, 32, 32) and rnd.labels is None


def test_parity_helpers():
    assert parity_batch_sizes(32) == [1, 2, 5] and parity_batch_sizes(4) == [1, 2, 4]
    assert parity_batch_sizes(1) == [1]
    ref = [np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)]
    ok = compare([ref[0] + 1e-5], ref, FP32_TOLERANCE)
    assert ok.passed and ok.max_rel_error == pytest.approx(1e-5 / 4, rel=1e-2)
    bad = compare([ref[0] + np.float32(0.1)], ref, FP32_TOLERANCE)
    assert bad.passed is False
    with pytest.raises(ValidationError, match="disagrees with PyTorch"):
        require(bad, "thing")
    assert compare([ref[0] * np.nan], ref, FP32_TOLERANCE).passed is False
    assert top1_agreement(np.array([[2.0, 1.0], [3.0, -4.0]]), ref[0]) == 0.5


def test_a_long_stage_reports_progress_in_a_log(monkeypatch):
    """Where stderr is a log (no redraws), a stage prints done/total while it runs, then its time."""
    import io
    import threading

    from rich.console import Console

    from export import progress

    monkeypatch.setattr(progress, "LOG_PROGRESS_SECONDS", 0.01)
    out = io.StringIO()
    reporter = progress.RichReporter(Console(file=out, force_terminal=False, width=200))
    seen = threading.Event()
    with reporter.stage("calibrate", total=10) as advance:
        advance(3)
        for _ in range(500):  # bounded: at most 5 s
            if "calibrate 3/10" in out.getvalue():
                seen.set()
                break
            threading.Event().wait(0.01)
    assert seen.is_set(), out.getvalue()
    assert out.getvalue().rstrip().splitlines()[-1].startswith("✓ calibrate (")
