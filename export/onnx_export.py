"""PyTorch -> ONNX FP32 with a dynamic batch axis, checked by ``onnx.checker`` (timm ``utils/onnx.py`` style).

We use the ``torch.export``-based exporter (``dynamo=True``): it is the default since torch 2.9, the
TorchScript exporter is deprecated and slated for removal, and it is the one that exports the whole family
with a dynamic batch axis (the TorchScript exporter fails on ZFNet: ``adaptive_avg_pool2d`` with a symbolic
input size). It emits opset 18 or newer, which onnxruntime >= 1.18 and TensorRT 10 read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from export.errors import ExportError
from modelrepo.names import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME
from modelrepo.preprocess import InputSpec

MIN_OPSET = 18  # the torch.export-based exporter's minimum
DEFAULT_OPSET = 18
# protobuf cannot serialize a message over 2 GiB; past this the weights go to an external-data file.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass
class OnnxExport:
    path: Path
    opset: int
    external_data: bool
    parameter_bytes: int


def parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def export_onnx(
    model: nn.Module, spec: InputSpec, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, seed: int = 0
) -> OnnxExport:
    """Write ``model`` as ONNX: input ``input`` [batch, C, H, W], output ``logits`` [batch, classes]."""
    if opset < MIN_OPSET:
        raise ExportError(
            f"{{option}} must be >= {MIN_OPSET} (the torch.export-based ONNX exporter's minimum)",
            option="opset",
        )
    path = Path(path)
    model.eval()
    # A batch of 2: torch.export specializes sizes 0 and 1, so an example batch of 1 would pin the axis.
    example = torch.randn(2, *spec.shape, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    nbytes = parameter_bytes(model)
    external = nbytes > EXTERNAL_DATA_BYTES
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=external,
            verbose=False,
        )
    except Exception as e:  # the exporter raises many types; keep the cause's first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {first}") from e
    check_onnx(path)
    return OnnxExport(path, opset, external, nbytes)


def check_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """``onnx.checker`` full check (by path, so external data works) plus our I/O contract; the model
    is returned without its weights loaded."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {inputs} -> {outputs}"
        )
    for value in (proto.graph.input[0], proto.graph.output[0]):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_param != BATCH_AXIS:
            raise ExportError(f"{path}: {value.name} has no dynamic {BATCH_AXIS!r} axis (got {first})")
    return proto
