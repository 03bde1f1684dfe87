"""TensorRT code paths: around the missing library here, for real where TensorRT and a GPU exist."""

import sys
from pathlib import Path

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


def test_int8_source_for_strongly_typed_tensorrt_has_fp16_float_layers(tmp_path):
    """The symmetric Q/DQ model with its float parts in FP16: opset 19 Q/DQ with FP16 scales, every float
    weight FP16, FP32 at the edges, biases unquantized, and onnxruntime still agrees with the FP32 Q/DQ
    model it came from."""
    import numpy as np
    import onnx

    from export.calibration import calibration_inputs
    from export.fp16 import FP16_QDQ_OPSET, convert_qdq_fp16
    from export.int8 import quantize_int8
    from export.int8_reference import reference_evaluator
    from export.onnx_export import export_onnx
    from models import get_model, get_model_entry

    spec = get_model_entry("lenet5").input_spec
    export_onnx(get_model("lenet5"), spec, tmp_path / "fp32.onnx")
    calib, _ = calibration_inputs("digits", spec, 32)
    record = quantize_int8(
        tmp_path / "fp32.onnx",
        tmp_path / "s8.onnx",
        calib,
        method="minmax",
        activations="int8",
        work_dir=tmp_path,
    )
    assert record["biases"] == "float"
    conversion = convert_qdq_fp16(tmp_path / "s8.onnx", tmp_path / "s8_fp16.onnx")
    assert conversion["opset"] == FP16_QDQ_OPSET and conversion["keep_io_types"]
    model = onnx.load(str(tmp_path / "s8_fp16.onnx"))
    initializers = {i.name: i.data_type for i in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and {initializers[n.input[1]] for n in dequantize} == {onnx.TensorProto.FLOAT16}
    assert {initializers[n.input[0]] for n in dequantize if n.input[0] in initializers} == {
        onnx.TensorProto.INT8
    }
    assert onnx.TensorProto.FLOAT not in initializers.values()
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # What the graphs mean, evaluated exactly: onnxruntime's int8 kernels saturate on CPUs without VNNI,
    # and TensorRT, which runs this model, does not.
    x = np.random.default_rng(0).standard_normal((4, *spec.shape), dtype=np.float32)
    s8 = reference_evaluator(tmp_path / "s8.onnx")(x)
    fp16 = reference_evaluator(tmp_path / "s8_fp16.onnx")(x)
    assert np.abs(fp16 - s8).max() <= 0.05 * np.abs(s8).max()


class FakeTensorRT:
    """Just enough of the ``tensorrt`` module for build_plan to run: records what it was asked."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 3

    class MemoryPoolType:
        WORKSPACE = 0

    def __init__(self, version: str):
        self.__version__ = version
        flags = ("FP16", "INT8") if version.startswith("10.") else ()
        self.BuilderFlag = type("BuilderFlag", (), {f: f for f in flags})
        self.calls = []
        fake = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network flags", flags))
                return object()

            def create_builder_config(self):
                return type(
                    "Config",
                    (),
                    {
                        "set_memory_pool_limit": lambda self, pool, size: None,
                        "set_flag": lambda self, flag: fake.calls.append(("flag", flag)),
                        "add_optimization_profile": lambda self, profile: None,
                    },
                )()

            def create_optimization_profile(self):
                return type("Profile", (), {"set_shape": lambda self, name, *shapes: None})()

            def build_serialized_network(self, network, config):
                return b"plan"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.calls.append(("parsed", Path(path).name))
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize(
    ("version", "precision", "expected"),
    [
        ("10.9.0", "fp16", [("network flags", 0), ("parsed", "fp32.onnx"), ("flag", "FP16")]),
        (
            "10.9.0",
            "int8",
            [("network flags", 0), ("parsed", "src.onnx"), ("flag", "FP16"), ("flag", "INT8")],
        ),
        ("11.0.0", "fp16", [("network flags", 1 << 3), ("parsed", "src.onnx")]),
        ("11.0.0", "int8", [("network flags", 1 << 3), ("parsed", "src.onnx")]),
    ],
)
def test_build_plan_uses_flags_on_tensorrt_10_and_strong_typing_on_11(
    monkeypatch, tmp_path, version, precision, expected
):
    import export.tensorrt as tensorrt_module
    from models import get_model_entry

    fake = FakeTensorRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_module, "gpu_info", lambda: {"name": "fake", "compute_capability": "9.0"})
    info = tensorrt_module.build_plan(
        tmp_path / "src.onnx",
        tmp_path / "model.plan",
        precision=precision,
        spec=get_model_entry("lenet5").input_spec,
        max_batch_size=8,
        fp32_onnx=tmp_path / "fp32.onnx",
    )
    assert fake.calls == expected
    assert info["typing"] == ("strong" if version.startswith("11.") else "weak (builder precision flags)")
    assert tensorrt_module.strongly_typed() is version.startswith("11.")
    assert (tmp_path / "model.plan").read_bytes() == b"plan"


def test_export_builds_strongly_typed_int8_plans_from_the_fp16_qdq_model(monkeypatch, tmp_path):
    """The whole pipeline as on TensorRT 11, TensorRT itself replaced: the int8 plan is built from the Q/DQ
    model with FP16 float layers (checked on onnxruntime first), the fp16 plan from the FP16 model; each
    plan is the primary, the ONNX model and the torch program its alternatives."""
    import export.pipeline as pipeline
    from export.tensorrt import TensorRTStatus
    from export.validate import ort_session, run_session

    sources = {}

    def build_plan(source, plan_path, *, precision, spec, max_batch_size, fp32_onnx=None):
        sources[precision] = Path(source).name
        Path(plan_path).write_bytes(Path(source).read_bytes())  # this "plan" is the ONNX model it came from
        return {
            "tensorrt": "11.0.0",
            "typing": "strong",
            "source_onnx": Path(source).name,
            "compute_capability": "9.0",
        }

    class PlanRunner:
        def __init__(self, path):
            self.session = ort_session(path)

        def __call__(self, x):
            return self.session.run(None, {"input": x})[0]

        def run(self, x, batch_size):
            return run_session(self.session, x, batch_size)

    monkeypatch.setattr(pipeline, "resolve_mode", lambda mode, wants: TensorRTStatus(True, "fake", "11.0.0"))
    monkeypatch.setattr(pipeline, "strongly_typed", lambda: True)
    monkeypatch.setattr(pipeline, "build_plan", build_plan)
    monkeypatch.setattr(pipeline, "PlanRunner", PlanRunner)
    result = export_model("lenet5", fp16=True, int8=True, repo=tmp_path, eval_samples=8, calib_samples=32)
    assert sources == {"fp16": "model.onnx", "int8": "int8_symmetric_qdq_fp16.onnx"}
    for precision, alternatives in (("fp16", ["model.onnx", "model.pt2"]), ("int8", ["model.onnx"])):
        manifest = result[precision].manifest
        assert (manifest.artifact, manifest.format) == ("model.plan", "tensorrt_plan")
        assert [a.file for a in manifest.alternatives] == alternatives
    plan = result["int8"].manifest.gpu
    assert (
        plan["source_conversion"]["scales"] == "float16" and plan["source_quantization"]["biases"] == "float"
    )
    assert plan["source_validation"]["top1_agreement"] >= 0.9
    assert read_config(result["int8"].model_dir).platform == "tensorrt_plan"
