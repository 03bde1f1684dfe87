"""Checks of an artifact against the PyTorch FP32 reference: parity, top-1 agreement, accuracy.

Relative error is ``max|out - ref| / max|ref|``: normalized by the largest reference logit, so it does
not explode on logits near zero.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.errors import ValidationError
from modelrepo.names import INPUT_NAME

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float  # of max|ref|

    def allows(self, max_abs: float, ref_scale: float) -> bool:
        return bool(np.isfinite(max_abs)) and max_abs <= self.atol + self.rtol * ref_scale


FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)
FP16_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2)  # the family measured <= 1e-3 relative


def ort_session(
    path: str | os.PathLike, providers: Sequence[str] = (CPU_PROVIDER,), threads: int = 0
) -> ort.InferenceSession:
    """A session as the server runs one on the CPU with ``threads`` intra-op threads (0: onnxruntime's
    default)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16/QDQ models log harmless layout warnings
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), as the server sizes onnxruntime's threads."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_session(session: ort.InferenceSession, x: np.ndarray, batch_size: int) -> np.ndarray:
    outs = [session.run(None, {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32, copy=False)


@torch.inference_mode()
def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    outs = [
        model(torch.from_numpy(x[i : i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


def parity_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2 and an odd size that fits, so the dynamic axis is exercised at more than one size."""
    return sorted({min(b, max_batch_size) for b in (1, 2, 5)})


def parity_inputs(shape: Sequence[int], batch_sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, *shape), dtype=np.float32) for b in batch_sizes]


@dataclass
class Parity:
    batch_sizes: list[int]
    max_abs_error: float
    max_rel_error: float
    atol: float | None
    rtol: float | None
    passed: bool | None  # None: recorded, not checked (INT8)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], tolerance: Tolerance | None
) -> Parity:
    max_abs = max(
        float(np.max(np.abs(o - r))) if o.size else 0.0 for o, r in zip(outputs, references, strict=True)
    )
    scale = max(float(np.max(np.abs(r))) if r.size else 0.0 for r in references)
    rel = max_abs / scale if scale > 0 else max_abs
    return Parity(
        batch_sizes=[len(r) for r in references],
        max_abs_error=max_abs,
        max_rel_error=rel,
        atol=tolerance.atol if tolerance else None,
        rtol=tolerance.rtol if tolerance else None,
        passed=tolerance.allows(max_abs, scale) if tolerance else None,
    )


def require(parity: Parity, what: str) -> None:
    if parity.passed is False:
        raise ValidationError(
            f"{what} disagrees with PyTorch: max abs error {parity.max_abs_error:.3g}, relative "
            f"{parity.max_rel_error:.3g} (allowed {parity.atol:g} + {parity.rtol:g} x max|logit|) "
            f"at batch sizes {parity.batch_sizes}"
        )


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    if not len(reference):
        return float("nan")
    return float(np.mean(logits.argmax(1) == reference.argmax(1)))


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or not len(labels):
        return None
    return float(np.mean(logits.argmax(1) == labels))
