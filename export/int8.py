"""Explicit INT8 quantization: a Q/DQ ONNX model calibrated with onnxruntime.quantization.

Weights are per-channel symmetric INT8. Two models come out of it:

- ``uint8`` (asymmetric activations, U8S8, weights in 7 bits): the served ONNX model, run by onnxruntime
  on any x86 CPU. onnxruntime's U8S8 kernels on CPUs without VNNI (AVX2 and AVX-512 alone) sum pairs of
  u8 x s8 products into saturating 16-bit lanes; with 8-bit weights those sums overflow (LeNet-5 on
  digits lost 1.67 points on an AVX2 CPU, none on a VNNI one). onnxruntime's quantization guide names the
  remedy, ``reduce_range``: weights in [-64, 64] keep every pair sum (at most 2 x 255 x 64) below
  2^15, so the kernels are exact on every host (VNNI and AMX accumulate in 32 bits anyway). S8S8 is no
  way out: onnxruntime shifts s8 activations to u8 on x86 and runs the same kernels. U8S8 ran ResNet-50
  3.6x faster than S8S8 on a VNNI CPU (BENCHMARKS.md). :mod:`export.int8_reference` proves the result
  on the exporting host, the server's load-time probe on the serving host.
- ``int8`` (symmetric, S8S8, zero points 0, biases left in float, full 8-bit weights): what TensorRT's
  explicit quantization requires, run by TensorRT with 32-bit accumulation on the GPU; the source of
  TensorRT INT8 plans (for strongly typed TensorRT, with its float parts converted to FP16 by
  :func:`export.fp16.convert_qdq_fp16`). Never served by onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError
from export.onnx_export import check_onnx
from modelrepo.names import INPUT_NAME

CALIBRATION_METHODS = {
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "minmax": CalibrationMethod.MinMax,
}
# About this many input values per calibration batch: the calibrator holds every activation of a batch.
CALIBRATION_BATCH_VALUES = 1 << 20
# activations -> (onnxruntime type, symmetric, 7-bit weights (reduce_range), description)
ACTIVATIONS = {
    "uint8": (QuantType.QUInt8, False, True, "uint8, asymmetric, per-tensor"),
    "int8": (QuantType.QInt8, True, False, "int8, symmetric, per-tensor"),
}
WHY_REDUCE_RANGE = (
    "7-bit weights (onnxruntime reduce_range): exact U8S8 on every x86 CPU; 8-bit weights saturate "
    "onnxruntime's 16-bit pair sums on CPUs without VNNI"
)
log = logging.getLogger(__name__)


def calibration_batch_size(inputs: np.ndarray) -> int:
    per_image = int(np.prod(inputs.shape[1:]))
    return max(1, min(64, CALIBRATION_BATCH_VALUES // per_image))


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed inputs in batches; ranges let the calibrator collect a few batches at a time."""

    def __init__(
        self, inputs: np.ndarray, batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        self.on_batch = on_batch
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        batch = self.batches[self._next]
        self._next += 1
        if self.on_batch:
            self.on_batch(len(batch))
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    *,
    method: str = "entropy",
    activations: str = "uint8",
    work_dir: str | os.PathLike,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Write the QDQ model to ``dst``; returns what the manifest records under ``quantization``."""
    if method not in CALIBRATION_METHODS:
        raise ExportError(
            f"{{option}} must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}",
            option="calib_method",
        )
    if activations not in ACTIVATIONS:
        raise ExportError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    activation_type, symmetric, reduce_range, described = ACTIVATIONS[activations]
    work = Path(work_dir)
    prepared = work / f"int8_preprocessed_{activations}.onnx"
    # Symbolic shape inference plus onnxruntime's graph optimizations (Conv+BatchNorm folding, ...)
    # before calibration, as onnxruntime recommends; quantize the raw export where it cannot run.
    try:
        quant_pre_process(str(src), str(prepared))
        preprocess = "quant_pre_process"
    except Exception as e:  # a failed optional optimization must not block quantization
        log.warning("quant_pre_process failed (%s); quantizing the unoptimized model", e)
        prepared, preprocess = Path(src), f"skipped: {type(e).__name__}"
    batch = calibration_batch_size(calibration)
    reader = ArrayCalibrationReader(calibration, batch, on_batch)
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # TensorRT fuses float biases into its INT8 kernels; an INT32 bias with an FP16 scale (their
        # product of two small scales) would underflow. onnxruntime's CPU kernels want them quantized.
        "QuantizeBias": not symmetric,
        # Collect one batch at a time (ranges merge), so memory stays at one batch of activations.
        "CalibStridedMinMax": 1,
    }
    try:
        # The calibrator print()s its phases; the stage's progress bar already says what runs.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options=extra,
            )
    finally:
        if prepared != Path(src):
            prepared.unlink(missing_ok=True)
    proto = check_onnx(dst)
    ops = [n.op_type for n in proto.graph.node]
    return {
        "format": "QDQ",
        "tool": "onnxruntime.quantization.quantize_static",
        "activations": described,
        "weights": (
            "int8 in [-64, 64] (reduce_range), symmetric, per-channel"
            if reduce_range
            else "int8, symmetric, per-channel"
        ),
        "reduce_range": reduce_range,
        "why": WHY_REDUCE_RANGE if reduce_range else "TensorRT's explicit quantization: S8S8, full range",
        "biases": "float" if symmetric else "int32",
        "preprocess": preprocess,
        "calibration": {"method": method, "samples": len(calibration), "batch_size": batch},
        "quantize_nodes": ops.count("QuantizeLinear"),
        "dequantize_nodes": ops.count("DequantizeLinear"),
    }
