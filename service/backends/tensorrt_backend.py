"""TensorRT plans (TensorRT 10 Python API) on a CUDA GPU; device buffers and the stream come from torch.

A plan only runs on the TensorRT version and GPU architecture it was built for; :func:`unusable_reason`
says why a plan cannot run here, so the caller can fall back to the model's ONNX artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import Backend
from service.errors import ModelLoadError


def _version_triplet(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def _capability(value: Any) -> tuple[int, int] | None:
    """Compute capability from a manifest value: "8.6", [8, 6] or 86."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value)
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:
        return int(text[:-1]), int(text[-1])
    return None


def unusable_reason(built_version: str | None, built_capability: Any, device_index: int = 0) -> str | None:
    """None when a plan built with this TensorRT version and compute capability can run here."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed"
    try:
        import torch
    except ImportError:
        return "the TensorRT backend needs torch for CUDA memory, and torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    if built_version and _version_triplet(built_version) != _version_triplet(trt.__version__):
        return f"the plan was built with TensorRT {built_version}, this is TensorRT {trt.__version__}"
    here = torch.cuda.get_device_capability(device_index)
    wanted = _capability(built_capability)
    if wanted is not None and wanted != tuple(here):
        return (
            f"the plan was built for compute capability {wanted[0]}.{wanted[1]}, "
            f"GPU {device_index} has {here[0]}.{here[1]}"
        )
    return None


class TensorRTBackend(Backend):
    kind = "tensorrt"

    def __init__(
        self, path: Path, data: bytes, *, input_name: str, output_name: str, device: str = "cuda:0"
    ) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise ModelLoadError(f"TensorRT cannot deserialize {path} (see the TensorRT log above)")
            self.engine = engine
            self.context = engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name, mode in ((input_name, trt.TensorIOMode.INPUT), (output_name, trt.TensorIOMode.OUTPUT)):
            if name not in names or engine.get_tensor_mode(name) != mode:
                raise ModelLoadError(f"{path} has I/O tensors {names}; expected {mode.name.lower()} {name!r}")
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        try:
            self.input_dtype = dtypes[engine.get_tensor_dtype(input_name)]
            self.output_dtype = dtypes[engine.get_tensor_dtype(output_name)]
        except KeyError as e:
            raise ModelLoadError(f"{path}: unsupported I/O tensor type {e}") from None
        self.input_name, self.output_name = input_name, output_name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if not batch.flags.writeable:
            batch = batch.copy()
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            x = torch.from_numpy(batch).to(self.device).to(self.input_dtype).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise RuntimeError(
                    f"TensorRT rejects input shape {tuple(x.shape)} (outside the plan's profile)"
                )
            y = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)),
                dtype=self.output_dtype,
                device=self.device,
            )
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            out = y.to(torch.float32).cpu()  # a blocking copy: waits for the stream
        return out.numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
