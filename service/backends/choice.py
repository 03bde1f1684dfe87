"""Which artifact of a version runs on this host, and why the better ones were skipped.

A version lists its artifacts in the manifest (the primary and its alternatives). The server ranks the
ways to run them, best first, and takes the first that runs here:

1. a TensorRT plan on the GPU (the TensorRT version and compute capability it was built for);
2. the ONNX model on onnxruntime's CUDA (and TensorRT) execution providers (onnxruntime-gpu);
3. the ``torch.export`` program on torch CUDA (CUDA torch alone);
4. the ONNX model on onnxruntime's CPU provider;
5. the ``torch.export`` program on the CPU.

``--device cpu`` considers 4-5 only, ``--device cuda`` 1-3 only (and fails, with every reason, where none
of them runs), ``auto`` all five. ``--backend onnxruntime|torch|tensorrt`` moves that runtime's ways to
the front (in the same order among themselves); a version without its artifact, or where it cannot run,
goes on down the ranking. Only what is known before loading decides (libraries, GPUs, versions);
an artifact that then fails to load or warm up is an error, never a silent switch to another.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelrepo.manifest import Artifact, Manifest
from service.errors import ModelLoadError

log = logging.getLogger(__name__)

CPU, CUDA = "cpu", "cuda"
RANKING = (
    ("tensorrt_plan", CUDA),
    ("onnx", CUDA),
    ("torch_export", CUDA),
    ("onnx", CPU),
    ("torch_export", CPU),
)
WHAT = {"tensorrt_plan": "TensorRT plan", "onnx": "ONNX", "torch_export": "torch.export program"}
# --backend -> the artifact format that runtime runs
PREFERRED_FORMAT = {"onnxruntime": "onnx", "torch": "torch_export", "tensorrt": "tensorrt_plan"}


def ranking(backend: str = "auto") -> tuple[tuple[str, str], ...]:
    """The ways to run an artifact, best first, with ``backend``'s (a ``--backend`` value) moved ahead."""
    preferred = PREFERRED_FORMAT.get(backend)
    return tuple(sorted(RANKING, key=lambda way: way[0] != preferred))


@dataclass(frozen=True)
class ArtifactChoice:
    """The file a model version will run from, and how."""

    path: Path
    format: str  # a key of modelrepo.names.FORMATS
    sha256: str
    precision: str
    device: str  # "cpu" or "cuda"
    skipped: tuple[str, ...] = ()  # why each better way to run this version was not taken
    primary: bool = True  # the artifact config.pbtxt names (False: one of the manifest's alternatives)
    validation: dict = field(default_factory=dict, compare=False)  # its record: checks, numerics probe

    @property
    def fallback_reason(self) -> str | None:
        """Why the server runs something worse than the best way (None: nothing better was skipped)."""
        return "; ".join(self.skipped) or None

    def describe(self) -> str:
        role = "" if self.primary else " fallback"
        return f"the {WHAT[self.format]}{role} {self.path.name} on {self.device}"


def _gpu_device_absent() -> str | None:
    """A reason when this Linux host has no NVIDIA device node, found without importing torch (which
    costs seconds and hundreds of MB in a server that may serve ONNX on the CPU only)."""
    if not sys.platform.startswith("linux"):
        return None
    dev = Path("/dev")
    if any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists():  # /dev/dxg: CUDA under WSL2
        return None
    return "no NVIDIA GPU device on this host"


@functools.cache
def _torch_cuda(device_setting: str) -> str | None:
    """Why torch cannot run on a GPU here. Under ``--device cuda`` torch itself is asked (a fresh VM may
    create its device nodes only when CUDA first starts); under ``auto`` a host without NVIDIA device
    nodes is taken at its word."""
    absent = _gpu_device_absent() if device_setting != "cuda" else None
    if absent is not None:
        return absent
    from service.backends.torch_backend import cuda_unavailable_reason

    return cuda_unavailable_reason()


@functools.cache
def _onnxruntime_cuda() -> str | None:
    from service.backends.onnxruntime_backend import cuda_available

    return None if cuda_available() else "onnxruntime has no CUDA provider (install onnxruntime-gpu)"


def _plan(manifest: Manifest, artifact: Artifact, device: str, setting: str) -> str | None:
    from service.backends.tensorrt_backend import unusable_reason

    built = artifact.extra.get("tensorrt") or manifest.versions.get("tensorrt")
    return unusable_reason(built, artifact.extra.get("compute_capability"))


def _program(manifest: Manifest, artifact: Artifact, device: str, setting: str) -> str | None:
    if device == CUDA and (reason := _torch_cuda(setting)) is not None:
        return reason
    from service.backends.torch_backend import program_unusable_reason

    return program_unusable_reason(artifact.extra.get("torch") or manifest.versions.get("torch"))


def _onnx(manifest: Manifest, artifact: Artifact, device: str, setting: str) -> str | None:
    return _onnxruntime_cuda() if device == CUDA else None


# format -> why an artifact of that format cannot run on a device class ("cuda", "cpu") under the server's
# --device setting (None: it can)
PROBES: dict[str, Callable[[Manifest, Artifact, str, str], str | None]] = {
    "tensorrt_plan": _plan,
    "onnx": _onnx,
    "torch_export": _program,
}


@dataclass(frozen=True)
class _Skip:
    format: str
    file: str
    device: str
    reason: str

    def __str__(self) -> str:
        where = " on CUDA" if self.device == CUDA and self.format != "tensorrt_plan" else ""
        return f"cannot run the {WHAT[self.format]} {self.file}{where}: {self.reason}"


def choose_artifact(
    manifest: Manifest, version_dir: Path, device_setting: str, backend: str = "auto"
) -> ArtifactChoice:
    """The best way to run this version here (``device_setting``: auto, cpu, cuda; ``backend``: the
    runtime to try first, or auto); raises :class:`ModelLoadError` with every reason where nothing runs."""
    what = f"{manifest.model} ({version_dir})"
    artifacts = manifest.artifacts
    devices = {"cpu": (CPU,), "cuda": (CUDA,)}.get(device_setting, (CUDA, CPU))
    skipped: list[_Skip] = []
    for fmt, device in ranking(backend):
        if device not in devices:
            continue
        for artifact in artifacts:
            if artifact.format != fmt:
                continue
            reason = PROBES[fmt](manifest, artifact, device, device_setting)
            if reason is not None:
                skipped.append(_Skip(fmt, artifact.file, device, reason))
                continue
            primary = artifact.file == manifest.artifact
            choice = ArtifactChoice(
                version_dir / artifact.file,
                fmt,
                artifact.sha256,
                artifact.precision,
                device,
                tuple(map(str, skipped)),
                primary,
                artifact.validation,
            )
            primary_ways = sum(f == manifest.format and d in devices for f, d in RANKING)
            _log_choice(what, choice, [s for s in skipped if s.file == manifest.artifact], primary_ways)
            return choice
    raise ModelLoadError(_nothing_runs(what, manifest, device_setting, skipped))


def _log_choice(what: str, choice: ArtifactChoice, primary_skips: list[_Skip], primary_ways: int) -> None:
    """Worth a warning: the artifact config.pbtxt names cannot run here in any way allowed (a plan on a host
    without its TensorRT). Skipped GPU ways on a host without them are the normal case: information."""
    if not choice.skipped:
        return
    unusable_primary = not choice.primary and len(primary_skips) >= primary_ways
    level = logging.WARNING if unusable_primary else logging.INFO
    log.log(level, "%s: %s; serving %s instead", what, "; ".join(choice.skipped), choice.describe())


def _nothing_runs(what: str, manifest: Manifest, device_setting: str, skipped: list[_Skip]) -> str:
    formats = {a.format for a in manifest.artifacts}
    if device_setting == "cuda":
        reasons = "; ".join(f"{s.reason} ({WHAT[s.format]} {s.file})" for s in skipped)
        return f"{what}: the server's device is cuda, but {reasons or 'no artifact runs on a GPU'}"
    message = f"{what}: no artifact of this version runs here: {'; '.join(map(str, skipped))}"
    if "onnx" not in formats:
        message += "; and the manifest has no ONNX fallback artifact"
    return message
