"""ONNX FP32 -> ONNX FP16 with FP32 inputs and outputs (onnxruntime's float16 converter); and a Q/DQ model's
float parts (every layer the INT8 quantization left in float, and the Q/DQ scales) -> FP16, the source of
strongly typed TensorRT INT8 plans."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from export.onnx_export import EXTERNAL_DATA_BYTES, check_onnx

# QuantizeLinear/DequantizeLinear take FP16 inputs and scales from opset 19 (13: FP32 only).
FP16_QDQ_OPSET = 19


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the FP16 model; ``keep_io_types`` leaves Cast nodes at the edges so clients still send FP32."""
    return _to_fp16(onnx.load(str(src)), dst)


def convert_qdq_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the Q/DQ model ``src`` with its float parts in FP16: DequantizeLinear yields FP16 (FP16
    scales), the layers between Q/DQ pairs compute in FP16, inputs and outputs stay FP32. Built from the
    symmetric (S8S8) model, it is what a strongly typed TensorRT network (TensorRT 11: no precision flags)
    reads as "INT8 where quantized, FP16 elsewhere"."""
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < FP16_QDQ_OPSET:
        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
    record = _to_fp16(model, dst)
    return {**record, "opset": max(opset, FP16_QDQ_OPSET), "scales": "float16"}


def _to_fp16(model: onnx.ModelProto, dst: str | os.PathLike) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp16 = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input Casts at the end of the node list; the checker (rightly) wants
    # a topologically sorted graph.
    OnnxModel(fp16).topological_sort()
    external = fp16.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(fp16, str(dst), save_as_external_data=external, location=Path(dst).name + ".data")
    check_onnx(dst)
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "external_data": external}
