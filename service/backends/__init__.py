"""Backends and the choice among them: the artifact's format picks the backend.

``onnx`` -> onnxruntime (CPU; CUDA/TensorRT execution providers where present), ``tensorrt_plan`` ->
TensorRT, ``torch_export`` -> torch (CPU or CUDA). Which of a version's artifacts runs, on which device,
is :func:`choose_artifact`'s decision (:mod:`.choice`). Heavy libraries are imported only by the backend
that needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from modelrepo.preprocess import InputSpec
from protos import model_config_pb2 as mc
from service.backends.base import Backend
from service.backends.choice import ArtifactChoice, choose_artifact
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
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int, spec: InputSpec
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
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int, spec: InputSpec
) -> Backend:
    from service.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(
        choice.path, data, input_name=config.input[0].name, output_name=config.output[0].name, device=device
    )


def _torch(
    choice: ArtifactChoice, config: mc.ModelConfig, device: str, data: bytes, threads: int, spec: InputSpec
) -> Backend:
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(
        choice.path,
        data,
        device=device,
        spec=spec,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        cuda_graphs=_bool_parameter(config, "cuda_graphs", default=True),
        channels_last=_bool_parameter(config, "channels_last", default=device.startswith("cuda")),
        input_shape=tuple(config.input[0].dims),
    )


# artifact format -> the backend that runs it (each imports its library only when called)
BACKENDS: dict[str, Callable[[ArtifactChoice, mc.ModelConfig, str, bytes, int, InputSpec], Backend]] = {
    "onnx": _onnxruntime,
    "tensorrt_plan": _tensorrt,
    "torch_export": _torch,
}


def create_backend(
    choice: ArtifactChoice,
    config: mc.ModelConfig,
    device: str,
    data: bytes,
    threads: int = 1,
    spec: InputSpec | None = None,
) -> Backend:
    """One instance of ``choice`` (its bytes: ``data``) on ``device`` ("cpu" or "cuda:<i>") with ``threads``
    CPU intra-op threads unless the config's ``intra_op_thread_count`` says otherwise; onnxruntime's spin
    between ops unless the config's ``allow_spinning`` parameter is "0". ``spec`` (the model's
    preprocessing) lets a GPU backend normalize ``pixels`` and decode images on the device; torch's CUDA
    graphs and channels-last layout are on unless the ``cuda_graphs``/``channels_last`` parameters are
    "0"."""
    factory = BACKENDS.get(choice.format)
    if factory is None:
        raise ModelLoadError(f"unsupported artifact format {choice.format!r}")
    backend = factory(choice, config, device, data, configured_threads(config) or max(1, threads), spec)
    if spec is not None:
        backend.spec = spec
    return backend
