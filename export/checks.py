"""The checks every artifact of an export passes: its outputs against the PyTorch FP32 reference (parity at
several batch sizes, top-1 agreement and accuracy on an evaluation set), and int8's accuracy drop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import calibration as cal
from export.errors import ValidationError
from export.options import ExportOptions
from export.validate import Tolerance, accuracy, compare, require, top1_agreement

EVAL_BATCH_SIZE = 32


@dataclass
class Reference:
    """PyTorch FP32 outputs every artifact is checked against."""

    parity_inputs: list[np.ndarray]
    parity_outputs: list[np.ndarray]
    eval: cal.EvalInputs
    eval_outputs: np.ndarray


def eval_source(options: ExportOptions, weights: dict[str, Any]) -> str:
    if options.eval_data != "auto":
        return options.eval_data
    trained = (weights.get("trained") or {}).get("dataset", {}).get("name", "")
    if trained == cal.DIGITS:
        return cal.DIGITS
    if trained.startswith("folder:") and Path(trained.removeprefix("folder:")).is_dir():
        return trained.removeprefix("folder:")
    return options.calib if options.int8 else cal.RANDOM


def check_outputs(
    ref: Reference,
    outputs: list[np.ndarray],
    eval_outputs: np.ndarray,
    tolerance: Tolerance | None,
    what: str,
) -> dict[str, Any]:
    """Validation record of one runtime's outputs; raises past tolerance."""
    parity = compare(outputs, ref.parity_outputs, tolerance)
    require(parity, what)
    if not np.all(np.isfinite(eval_outputs)):
        raise ValidationError(f"{what} produced non-finite logits on {ref.eval.source}")
    return {
        "reference": "pytorch fp32",
        "parity": parity.to_dict(),
        "eval_data": ref.eval.describe(),
        "top1_agreement": top1_agreement(eval_outputs, ref.eval_outputs),
        "accuracy": accuracy(eval_outputs, ref.eval.labels),
        "reference_accuracy": accuracy(ref.eval_outputs, ref.eval.labels),
    }


def check_int8_drop(validation: dict[str, Any], max_drop: float | None) -> None:
    acc, ref = validation["accuracy"], validation["reference_accuracy"]
    if acc is None or ref is None:
        return
    drop = round((ref - acc) * 100, 4)
    validation["accuracy_drop_points"] = drop
    validation["max_accuracy_drop_points"] = max_drop
    if max_drop is not None and drop > max_drop:
        raise ValidationError(
            f"int8 accuracy {acc:.2%} is {drop:.2f} points below fp32's {ref:.2%} on "
            f"{validation['eval_data']['source']} (allowed {max_drop:g}); try the percentile calibration "
            "method, more calibration samples, or a larger {option}",
            option="max_int8_drop",
        )
