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
MAX_PROBE_BYTES = 8 << 20  # 2 FP16 224x224 inputs and their logits take ~0.6 MB
MAX_ROWS = 16  # inputs in a probe
MAX_MEMBERS = 8  # arrays in probe.npz: the inputs and one per artifact of the version


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
    """Write ``probe.npz`` (inputs as FP16: the caller computes every expected output from the FP16-rounded
    inputs, :func:`rounded`); returns its sha256."""
    if len(inputs) > MAX_ROWS:
        raise ValueError(f"a probe holds at most {MAX_ROWS} inputs, got {len(inputs)}")
    arrays = {INPUTS_KEY: np.ascontiguousarray(inputs, dtype=np.float16)}
    for key, out in expected.items():
        if len(out) != len(inputs):
            raise ValueError(f"{key}: {len(out)} output rows for {len(inputs)} probe inputs")
        arrays[key] = np.ascontiguousarray(out, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # stored, not compressed: what read_probe accepts
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def rounded(inputs: np.ndarray) -> np.ndarray:
    """The inputs as probe.npz keeps them (FP16), back in FP32."""
    return inputs.astype(np.float16).astype(np.float32)


def read_probe(
    version_dir: Path,
    expectation: Expectation,
    input_shape: tuple[int, ...] | None = None,
    classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, expected outputs) of one artifact, checked against the manifest's sha256 and, where given,
    the model's input shape (without the batch) and class count.

    The file may come from anyone who can write the repository, and so may the sha256 beside it: it is
    parsed without ``np.load``: few members, stored uncompressed (a member's size is what it occupies on
    disk), each ``.npy`` header's dtype and shape checked against its bytes before an array is made."""
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
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise ProbeError(f"{PROBE_NAME} has {len(members)} members, at most {MAX_MEMBERS} expected")
            inputs = _array(archive, INPUTS_KEY, (np.float16, np.float32), 4).astype(np.float32)
            expected = _array(archive, expectation.key, (np.float32,), 2)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as e:
        raise ProbeError(f"{PROBE_NAME} is not a readable .npz file: {e}") from None
    if len(inputs) != len(expected) or not 0 < len(inputs) <= MAX_ROWS:
        raise ProbeError(
            f"{PROBE_NAME} must hold N inputs and N outputs (1 <= N <= {MAX_ROWS}), got "
            f"{list(inputs.shape)} and {list(expected.shape)}"
        )
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape):
        raise ProbeError(
            f"{PROBE_NAME} inputs are {list(inputs.shape[1:])}, the model takes {list(input_shape)}"
        )
    if classes is not None and expected.shape[1] != classes:
        raise ProbeError(f"{PROBE_NAME} outputs have {expected.shape[1]} classes, the model {classes}")
    return inputs, expected


def _array(archive: zipfile.ZipFile, key: str, dtypes: tuple[type, ...], ndim: int) -> np.ndarray:
    try:
        member = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise ProbeError(f"{PROBE_NAME} has no array {key!r}") from None
    if member.compress_type != zipfile.ZIP_STORED:
        raise ProbeError(f"{PROBE_NAME} member {key!r} is compressed; probes are stored uncompressed")
    raw = io.BytesIO(archive.read(member))
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
    else:
        raise ProbeError(f"{PROBE_NAME} member {key!r} has .npy format {version}")
    if dtype.hasobject or dtype.type not in dtypes or fortran or len(shape) != ndim:
        raise ProbeError(
            f"{PROBE_NAME} array {key!r} must be {ndim}-D C-order "
            f"{' or '.join(np.dtype(t).name for t in dtypes)}, got {len(shape)}-D {dtype}"
        )
    body = raw.read()
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(body):
        raise ProbeError(
            f"{PROBE_NAME} array {key!r} declares shape {list(shape)} but holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


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
