"""PyTorch -> ``torch.export`` program (``model.pt2``): the GPU path that needs only CUDA torch.

One program per precision: FP32, and FP16 (weights, activations and input in half precision; the server
casts its input on the device). Each is checked like the ONNX models, against the PyTorch FP32 reference,
on the GPU where torch sees one (where the server will run it) and on the CPU otherwise.

No INT8 program: PyTorch's PT2E quantization yields a program whose quantize/dequantize pairs run as
real INT8 only when lowered by Inductor on x86 CPUs or by TensorRT (Torch-TensorRT); on CUDA without
TensorRT they execute as FP32 arithmetic plus the extra Q/DQ kernels, slower than the FP32 entry. INT8
on the GPU is the TensorRT plan built from the Q/DQ ONNX model; on the CPU, onnxruntime's QDQ kernels.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from modelrepo.names import BATCH_AXIS
from modelrepo.preprocess import InputSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
NO_INT8_PROGRAM = (
    "int8 has no torch.export program: PyTorch's PT2E int8 runs as real int8 only through Inductor on x86 "
    "CPUs or through TensorRT; on CUDA without TensorRT its quantize/dequantize pairs run as fp32 "
    "arithmetic, slower than the fp32 entry. int8 runs as the Q/DQ ONNX model (onnxruntime) or as a "
    "TensorRT plan built from it."
)


def validation_device() -> str:
    """Where exported programs are checked: the GPU the server would run them on, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def export_program(
    model: nn.Module, spec: InputSpec, path: str | os.PathLike, *, precision: str, seed: int = 0
) -> dict:
    """Write ``model`` in ``precision`` as a program with a dynamic batch axis; returns what the manifest
    records under the artifact's ``extra``."""
    if precision not in DTYPES:
        raise ExportError(f"no torch.export program for precision {precision!r} ({NO_INT8_PROGRAM})")
    dtype = DTYPES[precision]
    module = model.eval() if dtype == torch.float32 else copy.deepcopy(model).eval().to(dtype)
    # A batch of 2: torch.export specializes sizes 0 and 1, so an example batch of 1 would pin the axis.
    example = torch.randn(2, *spec.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as e:  # torch.export raises many types; keep the cause's first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.export failed for {type(model).__name__} ({precision}): {first}") from e
    Path(path).write_bytes(buffer.getvalue())
    dtype_name = str(dtype).removeprefix("torch.")
    return {"exporter": "torch.export", "dtype": dtype_name, "torch": torch.__version__}


class ProgramRunner:
    """A saved program loaded back (as the server loads it) and run in batches on ``device``, with the
    CUDA numerics the server sets for it."""

    def __init__(self, path: str | os.PathLike, device: str) -> None:
        program = torch.export.load(io.BytesIO(Path(path).read_bytes()))
        self.module = program.module().to(device)
        floats = [p.dtype for p in self.module.parameters() if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        self.device = device

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        from modelrepo.torch_numerics import numerics

        with numerics(torch, self.dtype):  # the server's: no TF32 for fp32 (cuDNN's default is TF32)
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype))
            return y.float().cpu().numpy()

    def run(self, x: np.ndarray, batch_size: int, advance: Callable[[int], None] | None = None) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch_size):
            outs.append(self(x[i : i + batch_size]))
            if advance:
                advance(1)
        return np.concatenate(outs)

    def close(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
