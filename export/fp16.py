"""ONNX FP32 -> ONNX FP16 with FP32 inputs and outputs (onnxruntime's float16 converter)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from export.onnx_export import EXTERNAL_DATA_BYTES, check_onnx


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the FP16 model; ``keep_io_types`` leaves Cast nodes at the edges so clients still send FP32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input Casts at the end of the node list; the checker (rightly) wants
    # a topologically sorted graph.
    OnnxModel(fp16).topological_sort()
    external = fp16.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(fp16, str(dst), save_as_external_data=external, location=Path(dst).name + ".data")
    check_onnx(dst)
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "external_data": external}
