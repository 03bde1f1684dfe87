"""The host-independent check of an int8 model: onnxruntime's outputs against an exact evaluation of the
same Q/DQ graph.

onnxruntime runs a Q/DQ model with fused integer kernels whose arithmetic depends on the CPU: on x86 CPUs
without VNNI, U8S8 products are summed in pairs into saturating 16-bit lanes (``VPMADDUBSW``), and with
8-bit weights those sums overflow; VNNI and AMX accumulate in 32 bits and do not. Accuracy measured on
one host therefore says nothing of another. ``onnx.reference.ReferenceEvaluator`` computes what the graph
means (dequantize, float operator, quantize) in numpy, the same on every host. Where onnxruntime and it
disagree by more than :data:`TOLERANCE_STEPS` output quantization steps, the export fails.

Where the reference evaluator cannot run a graph (onnx 1.23's reference operators fail on GoogLeNet's
ceil-mode pooling), the same semantics come from onnxruntime with every graph optimization off: it then
runs each DequantizeLinear, float operator and QuantizeLinear as written, with no fused integer kernel,
so the CPU's int8 instructions play no part. The record names the evaluator used and why.

Why two steps: the two compute every requantization with float rounding of their own, so a value on a
rounding boundary may land one step apart, and such a step can move the next layer's output by one more
(measured: ResNet-18 and ResNet-50 reach exactly one step on some logits, LeNet-5 none). A saturating
kernel is off by tens of steps (LeNet-5 on an AVX2 CPU: ~30).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from export.errors import ValidationError
from modelrepo.names import INPUT_NAME

TOLERANCE_STEPS = 2.0
# onnx's reference Q/DQ operators start at opset 19 (the exporter writes 18; nothing else changes for
# the operators the family uses).
REFERENCE_OPSET = 21
EVALUATOR = "onnx.reference.ReferenceEvaluator"
UNFUSED = "onnxruntime, graph optimizations off (Q/DQ run unfused, in float)"


@dataclass(frozen=True)
class ReferenceCheck:
    """onnxruntime against the exact evaluation, on the probe inputs."""

    samples: int
    output_step: float
    max_abs_error: float
    seconds: float
    evaluator: str = EVALUATOR
    evaluator_note: str = ""  # why the reference evaluator was not used

    @property
    def tolerance(self) -> float:
        return TOLERANCE_STEPS * self.output_step

    @property
    def max_steps(self) -> float:
        return self.max_abs_error / self.output_step

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.tolerance

    def record(self) -> dict[str, Any]:
        return {
            "evaluator": self.evaluator,
            **({"evaluator_note": self.evaluator_note} if self.evaluator_note else {}),
            "samples": self.samples,
            "output_step": self.output_step,
            "tolerance_steps": TOLERANCE_STEPS,
            "max_abs_error": self.max_abs_error,
            "max_error_steps": round(self.max_steps, 3),
            "seconds": round(self.seconds, 2),
            "passed": self.passed,
        }


def output_step(model: onnx.ModelProto) -> float:
    """The quantization step of the model's output: the scale of the DequantizeLinear that produces it."""
    output = model.graph.output[0].name
    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        kind = producer.op_type if producer is not None else "nothing"
        raise ValidationError(f"int8 model output {output!r} comes from {kind}, not a DequantizeLinear")
    scale = _constant(model, producer.input[1])
    if scale.size != 1 or not np.isfinite(scale).all() or float(scale.reshape(())) <= 0:
        raise ValidationError(f"int8 model output scale must be one positive number, got {scale!r:.80}")
    return float(scale.reshape(()))


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(node.attribute[0].t)
    raise ValidationError(f"int8 model scale {name!r} is not a constant")


def reference_evaluator(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The exact evaluator of the Q/DQ model at ``path`` (converted to an opset it implements)."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), REFERENCE_OPSET)
    if opset < REFERENCE_OPSET:
        model = version_converter.convert_version(model, REFERENCE_OPSET)
    evaluator = ReferenceEvaluator(model)
    return lambda x: np.asarray(evaluator.run(None, {INPUT_NAME: x})[0], dtype=np.float32)


def unfused_evaluator(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """onnxruntime running the Q/DQ graph node by node: no fusion into integer kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda x: np.asarray(session.run(None, {INPUT_NAME: x})[0], dtype=np.float32)


def _exact_outputs(
    path: Path, inputs: np.ndarray, on_sample: Callable[[int], None] | None
) -> tuple[np.ndarray, str, str]:
    """The exact outputs, one input at a time; (outputs, evaluator, why not the reference evaluator)."""
    note = ""
    try:
        evaluate, name = reference_evaluator(path), EVALUATOR
        first = evaluate(inputs[:1])
    except Exception as e:  # its operators raise whatever numpy raises on a case they do not cover
        note = f"{EVALUATOR} failed on this graph ({type(e).__name__}: {str(e)[:200]})"
        evaluate, name = unfused_evaluator(path), UNFUSED
        first = evaluate(inputs[:1])
    exact = [first]
    if on_sample:
        on_sample(1)
    for row in inputs[1:]:
        exact.append(evaluate(row[None]))
        if on_sample:
            on_sample(1)
    return np.concatenate(exact), name, note


def check_against_reference(
    path: Path,
    inputs: np.ndarray,
    runtime_outputs: np.ndarray,
    on_sample: Callable[[int], None] | None = None,
) -> tuple[ReferenceCheck, np.ndarray]:
    """Evaluate ``inputs`` exactly, one at a time, and compare with ``runtime_outputs`` (onnxruntime's on
    the same inputs). Returns the check and the exact outputs; raises :class:`ValidationError` past the
    tolerance, naming the likely cause."""
    started = time.perf_counter()
    step = output_step(onnx.load(str(path), load_external_data=False))
    expected, evaluator, note = _exact_outputs(path, inputs, on_sample)
    error = float(np.max(np.abs(runtime_outputs.astype(np.float64) - expected)))
    if not np.all(np.isfinite(runtime_outputs)):
        error = float("inf")
    seconds = time.perf_counter() - started
    check = ReferenceCheck(len(inputs), step, error, seconds, evaluator, note)
    if not check.passed:
        raise ValidationError(
            f"int8 model ({path.name}) on onnxruntime disagrees with the exact Q/DQ evaluation by "
            f"{check.max_abs_error:.4g} ({check.max_steps:.1f} output steps of {step:.4g}; allowed "
            f"{TOLERANCE_STEPS:g}) on {len(inputs)} evaluation inputs: this CPU's int8 kernels do not "
            "compute what the model means (saturation on CPUs without VNNI, see export/int8.py)"
        )
    return check, expected
