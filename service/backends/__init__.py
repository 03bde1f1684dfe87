"""Backends and the choice among them: the artifact's format picks the backend.

``onnx`` -> onnxruntime (CPU; CUDA/TensorRT execution providers where present), ``tensorrt_plan`` ->
TensorRT (falling back to the manifest's ONNX artifact, with a warning, where the plan cannot run here),
``torch_export`` -> torch. Heavy libraries are imported only by the backend that needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelrepo.manifest import Manifest
from protos import model_config_pb2 as mc
from service.backends.base import Backend
from service.errors import ModelLoadError

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "ArtifactChoice",
    "Backend",
    "choose_artifact",
    "configured_threads",
    "create_backend",
    "instance_devices",
]


@dataclass(frozen=True)
class ArtifactChoice:
    """The file a model version will run from, and how."""

    path: Path
    format: str  # a key of modelrepo.manifest.FORMATS
    sha256: str
    precision: str
    device: str  # "cpu" or "cuda"
    fallback_reason: str | None = None  # set when a TensorRT plan could not be used


def _onnx_device(setting: str, what: str) -> str:
    from service.backends.onnxruntime_backend import cuda_available

    if setting == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if setting == "cuda":
        raise ModelLoadError(
            f"{what}: the server's device is cuda, but onnxruntime has no CUDA provider "
            "(install onnxruntime-gpu)"
        )
    return "cpu"


def choose_artifact(manifest: Manifest, version_dir: Path, device_setting: str) -> ArtifactChoice:
    """Which artifact of a version to load on which device (``device_setting``: auto, cpu, cuda)."""
    what = f"{manifest.model} ({version_dir})"
    primary = version_dir / manifest.artifact
    if manifest.format == "onnx":
        return ArtifactChoice(
            primary, "onnx", manifest.sha256, manifest.precision, _onnx_device(device_setting, what)
        )
    if manifest.format == "torch_export":
        from service.backends.torch_backend import cuda_available

        if device_setting == "cuda" and not cuda_available():
            raise ModelLoadError(f"{what}: the server's device is cuda, but torch sees no CUDA GPU")
        device = "cuda" if device_setting != "cpu" and cuda_available() else "cpu"
        return ArtifactChoice(primary, "torch_export", manifest.sha256, manifest.precision, device)
    if manifest.format == "tensorrt_plan":
        if device_setting == "cpu":
            reason = "the server's device is cpu"
        else:
            from service.backends.tensorrt_backend import unusable_reason

            built = (manifest.versions or {}).get("tensorrt")
            capability = (manifest.gpu or {}).get("compute_capability")
            reason = unusable_reason(built, capability)
        if reason is None:
            return ArtifactChoice(primary, "tensorrt_plan", manifest.sha256, manifest.precision, "cuda")
        fallback = manifest.fallback
        if fallback is None or fallback.format != "onnx":
            raise ModelLoadError(
                f"{what}: cannot run the TensorRT plan ({reason}) and the manifest has no ONNX "
                "fallback artifact"
            )
        log.warning(
            "%s: cannot run the TensorRT plan (%s); serving the ONNX fallback %s instead",
            what,
            reason,
            fallback.file,
        )
        return ArtifactChoice(
            version_dir / fallback.file,
            "onnx",
            fallback.sha256,
            fallback.precision,
            _onnx_device(device_setting, what),
            fallback_reason=reason,
        )
    raise ModelLoadError(f"{what}: unsupported artifact format {manifest.format!r}")


def instance_devices(config: mc.ModelConfig, device: str) -> list[str]:
    """One device string per model instance, from the config's instance_group (Triton's semantics)."""
    groups = list(config.instance_group) or [
        mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    ]
    devices: list[str] = []
    for group in groups:
        count = group.count or 1
        if group.kind == mc.ModelInstanceGroup.KIND_CPU or device == "cpu":
            if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                log.warning(
                    "%s: instance group asks for KIND_GPU but no GPU backend is usable; running on CPU",
                    config.name,
                )
            devices += ["cpu"] * count
        else:
            for gpu in list(group.gpus) or [0]:
                devices += [f"cuda:{gpu}"] * count
    return devices


def configured_threads(config: mc.ModelConfig) -> int:
    """The config's ``intra_op_thread_count`` parameter (Triton's onnxruntime backend name); 0 if unset."""
    return _int_parameter(config, "intra_op_thread_count")


def _int_parameter(config: mc.ModelConfig, key: str) -> int:
    if key not in config.parameters:
        return 0
    value = config.parameters[key].string_value
    try:
        return int(value)
    except ValueError:
        raise ModelLoadError(f"{config.name}: parameter {key} must be an integer, got {value!r}") from None


def _bool_parameter(config: mc.ModelConfig, key: str, default: bool) -> bool:
    if key not in config.parameters:
        return default
    value = config.parameters[key].string_value.strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ModelLoadError(f"{config.name}: parameter {key} must be 0/1/true/false, got {value!r}")
    return value in ("1", "true")


def _gpu_accelerator(config: mc.ModelConfig) -> tuple[str | None, bool]:
    """Triton's optimization.execution_accelerators.gpu_execution_accelerator (name, fp16?)."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        fp16 = accelerator.parameters.get("precision_mode", "").upper() == "FP16"
        return accelerator.name, fp16
    return None, False


def _onnxruntime(
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int
) -> Backend:
    from service.backends.onnxruntime_backend import OnnxRuntimeBackend

    accelerator, fp16 = _gpu_accelerator(config)
    return OnnxRuntimeBackend(
        choice.path,
        data,
        input_name=config.input[0].name,
        output_name=config.output[0].name,
        device=device,
        threads=threads,
        spinning=_bool_parameter(config, "allow_spinning", default=True),
        accelerator=accelerator,
        fp16=fp16 or choice.precision == "fp16",
        cache_key=f"{config.name}-{choice.sha256[:16]}",
    )


def _tensorrt(
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int
) -> Backend:
    from service.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(
        choice.path, data, input_name=config.input[0].name, output_name=config.output[0].name, device=device
    )


def _torch(choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int) -> Backend:
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(choice.path, data, device=device)


# artifact format -> the backend that runs it (each imports its library only when called)
BACKENDS: dict[str, Callable[[ArtifactChoice, mc.ModelConfig, str, bytes, int], Backend]] = {
    "onnx": _onnxruntime,
    "tensorrt_plan": _tensorrt,
    "torch_export": _torch,
}


def create_backend(
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int = 1
) -> Backend:
    """One instance of ``choice`` (its bytes: ``data``) on ``device`` ("cpu" or "cuda:<i>") with ``threads``
    CPU intra-op threads unless the config's ``intra_op_thread_count`` says otherwise; onnxruntime's spin
    between ops unless the config's ``allow_spinning`` parameter is "0"."""
    factory = BACKENDS.get(choice.format)
    if factory is None:
        raise ModelLoadError(f"unsupported artifact format {choice.format!r}")
    return factory(choice, config, device, data, configured_threads(config) or max(1, threads))
