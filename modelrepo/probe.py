"""The numerics probe: a few evaluation inputs with each artifact's exact outputs, kept beside the artifacts.

An artifact's accuracy is checked on the host that exported it; the host that serves it may compute
differently (onnxruntime's U8S8 int8 kernels saturate on x86 CPUs without VNNI, an fp16 program may have
been written on a host that cannot run it). ``probe.npz`` in the version folder holds ``inputs`` (FP32
NCHW, already normalized) and, per artifact file, the outputs that artifact must give on them; each
artifact's validation record says under ``probe`` which array it is checked against and with what
tolerance. The server runs the probe when it loads the artifact on its own CPU or GPU and refuses the
version where the outputs disagree. Triton ignores the file.

The file is read with ``allow_pickle=False`` and its sha256 is checked against the manifest: a broken or
replaced probe fails the load with a reason, like a broken artifact.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBE_NAME = "probe.npz"
INPUTS_KEY = "inputs"
MAX_PROBE_BYTES = 64 << 20  # a few 224x224 images and logits are ~2 MB; anything far larger is not ours


class ProbeError(ValueError):
    """The probe file is missing, unreadable, or not what the manifest says."""


@dataclass(frozen=True)
class Tolerance:
    """``|out - expected| <= atol + rtol * max|expected|`` elementwise maximum."""

    atol: float
    rtol: float

    def allowed(self, expected: np.ndarray) -> float:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        return self.atol + self.rtol * scale


@dataclass(frozen=True)
class Expectation:
    """What an artifact's validation record says of its probe (``validation["probe"]``)."""

    key: str  # the array of probe.npz holding this artifact's outputs
    sha256: str  # of probe.npz
    tolerance: Tolerance
    reference: str  # what computed the expected outputs, e.g. "pytorch fp32"
    why: str  # the tolerance's reason, for the log

    def record(self) -> dict[str, Any]:
        return {
            "file": PROBE_NAME,
            "sha256": self.sha256,
            "expected": self.key,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "reference": self.reference,
            "tolerance_reason": self.why,
        }

    @classmethod
    def from_validation(cls, validation: dict[str, Any]) -> Expectation | None:
        """The artifact's expectation, or None where its manifest predates probes."""
        record = validation.get("probe")
        if record is None:
            return None
        try:
            atol, rtol = float(record["atol"]), float(record["rtol"])
            if not (np.isfinite(atol) and np.isfinite(rtol) and atol >= 0 and rtol >= 0):
                raise ValueError(f"tolerance must be finite and >= 0, got atol={atol} rtol={rtol}")
            if record.get("file", PROBE_NAME) != PROBE_NAME:
                raise ValueError(f"file must be {PROBE_NAME}")
            return cls(
                key=str(record["expected"]),
                sha256=str(record["sha256"]),
                tolerance=Tolerance(atol, rtol),
                reference=str(record.get("reference", "")),
                why=str(record.get("tolerance_reason", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProbeError(f"validation.probe is malformed: {type(e).__name__}: {e}") from None


def output_key(artifact_file: str) -> str:
    return f"expected_{artifact_file}"


def write_probe(path: Path, inputs: np.ndarray, expected: dict[str, np.ndarray]) -> str:
    """Write ``probe.npz``; returns its sha256."""
    arrays = {INPUTS_KEY: np.ascontiguousarray(inputs, dtype=np.float32)}
    for key, out in expected.items():
        if len(out) != len(inputs):
            raise ValueError(f"{key}: {len(out)} output rows for {len(inputs)} probe inputs")
        arrays[key] = np.ascontiguousarray(out, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_probe(version_dir: Path, expectation: Expectation) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, expected outputs) of one artifact, checked against the manifest's sha256."""
    path = version_dir / PROBE_NAME
    try:
        size = path.stat().st_size
        if size > MAX_PROBE_BYTES:
            raise ProbeError(f"{PROBE_NAME} is {size} bytes, more than the {MAX_PROBE_BYTES} a probe may be")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProbeError(f"{PROBE_NAME} does not exist (the manifest names it)") from None
    except OSError as e:
        raise ProbeError(f"cannot read {PROBE_NAME}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expectation.sha256:
        raise ProbeError(
            f"sha256 of {PROBE_NAME} is {digest}, the manifest records {expectation.sha256} "
            "(corrupt or replaced probe)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            inputs, expected = arrays[INPUTS_KEY], arrays[expectation.key]
    except KeyError as e:
        raise ProbeError(f"{PROBE_NAME} has no array {e}") from None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ProbeError(f"{PROBE_NAME} is not a readable .npz file: {e}") from None
    if inputs.dtype != np.float32 or expected.dtype != np.float32:
        raise ProbeError(f"{PROBE_NAME} arrays must be float32, got {inputs.dtype} and {expected.dtype}")
    if inputs.ndim != 4 or expected.ndim != 2 or len(inputs) != len(expected) or not len(inputs):
        raise ProbeError(
            f"{PROBE_NAME} must hold N inputs [N, C, H, W] and N outputs [N, classes], got "
            f"{list(inputs.shape)} and {list(expected.shape)}"
        )
    return inputs, expected


@dataclass(frozen=True)
class Agreement:
    max_abs_error: float
    allowed: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.allowed


def agreement(outputs: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> Agreement:
    if outputs.shape != expected.shape:
        return Agreement(float("inf"), tolerance.allowed(expected))
    diff = np.abs(outputs.astype(np.float64) - expected.astype(np.float64))
    worst = float(np.max(diff)) if diff.size else 0.0
    if not np.all(np.isfinite(outputs)):
        worst = float("inf")
    return Agreement(worst, tolerance.allowed(expected))
