"""TensorRT plans (FP16, INT8 from the Q/DQ model) where TensorRT and a CUDA GPU exist.

All imports are lazy: this machine may have neither. TensorRT 10 builds a weakly typed network with
``BuilderFlag.FP16`` (and ``INT8`` for Q/DQ models, explicit quantization: the scales come from the Q/DQ
nodes, no calibrator). TensorRT 11 removed those flags and the INT8 calibrators; there the network is
strongly typed and every tensor's type comes from the ONNX model itself: the FP16 model for FP16 plans,
and for INT8 the symmetric Q/DQ model with its float parts in FP16 (:func:`export.fp16.convert_qdq_fp16`),
so that the layers left unquantized run in FP16, not FP32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError, TensorRTUnavailableError
from modelrepo.names import INPUT_NAME, OUTPUT_NAME
from modelrepo.preprocess import InputSpec

TENSORRT_MODES = ("auto", "on", "off")
WORKSPACE_BYTES = 2 << 30


@dataclass(frozen=True)
class TensorRTStatus:
    available: bool
    reason: str  # why not, or what was found
    version: str | None = None


def tensorrt_status() -> TensorRTStatus:
    """Whether plans can be built here: the ``tensorrt`` package and a visible CUDA GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        return TensorRTStatus(False, "TensorRT is not installed (pip install 'cnnserve[gpu]')")
    except Exception as e:  # a broken install (missing CUDA libraries) raises OSError and friends
        return TensorRTStatus(False, f"TensorRT cannot be imported: {e}")
    import torch

    if not torch.cuda.is_available():
        return TensorRTStatus(
            False, f"no CUDA GPU is visible (TensorRT {trt.__version__} is installed)", trt.__version__
        )
    return TensorRTStatus(
        True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}", trt.__version__
    )


def resolve_mode(mode: str, wants_plans: bool) -> TensorRTStatus | None:
    """None when no plans are to be built; raises where ``on`` cannot be honoured."""
    if mode not in TENSORRT_MODES:
        raise ExportError(
            f"{{option}} must be one of {', '.join(TENSORRT_MODES)}, got {mode!r}", option="tensorrt"
        )
    if mode == "off":
        return None
    if mode == "on" and not wants_plans:
        raise ExportError(
            "{option} on builds FP16/INT8 plans: ask for fp16 and/or int8 too", option="tensorrt"
        )
    status = tensorrt_status()
    if not status.available and mode == "on":
        raise TensorRTUnavailableError(
            f"{{option}} on, but TensorRT plans cannot be built here: {status.reason}", option="tensorrt"
        )
    return status


def strongly_typed() -> bool:
    """Whether this TensorRT builds strongly typed networks only (TensorRT 11: no precision flags)."""
    import tensorrt as trt

    return not hasattr(trt.BuilderFlag, "FP16")


def gpu_info() -> dict:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def build_plan(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    precision: str,
    spec: InputSpec,
    max_batch_size: int,
    fp32_onnx: str | os.PathLike | None = None,
) -> dict:
    """Serialize a plan with one optimization profile over batch 1..max_batch_size.

    ``onnx_path`` is the FP16 or the Q/DQ model. TensorRT 10 builds FP16 plans from ``fp32_onnx`` with
    the FP16 flag (its kernels choose per layer); strongly typed builds take the precision from the
    model. Returns what the manifest records under ``gpu``.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_flags = hasattr(trt.BuilderFlag, "FP16")
    if weak_flags and precision == "fp16" and fp32_onnx is not None:
        onnx_path = fp32_onnx
    flags = 0 if weak_flags else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if weak_flags:
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    opt = max(1, max_batch_size // 2)
    profile.set_shape(INPUT_NAME, (1, *spec.shape), (opt, *spec.shape), (max_batch_size, *spec.shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT failed to build the {precision} plan from {onnx_path} (see its log above)"
        )
    Path(plan_path).write_bytes(bytes(serialized))
    return {
        "tensorrt": trt.__version__,
        "typing": "weak (builder precision flags)" if weak_flags else "strong",
        "profile": {"min": 1, "opt": opt, "max": max_batch_size},
        "source_onnx": Path(onnx_path).name,
        **gpu_info(),
    }


class PlanRunner:
    """Runs a serialized plan on the GPU with torch CUDA tensors as I/O buffers (validation only)."""

    def __init__(self, plan_path: str | os.PathLike) -> None:
        import tensorrt as trt

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT cannot deserialize {plan_path}")
        self.context = self.engine.create_execution_context()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(inp.shape))
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT_NAME, inp.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()

    def run(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
