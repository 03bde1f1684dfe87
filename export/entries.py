"""config.pbtxt and manifest.json of one served model (``<model>``, ``<model>_fp16``, ``<model>_int8``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from modelrepo.config import make_config
from modelrepo.manifest import FORMATS, Artifact, Manifest, package_versions, sha256_file
from modelrepo.preprocess import InputSpec
from protos import model_config_pb2 as mc

MAX_QUEUE_DELAY_MICROSECONDS = 500  # a CNN batch computes in milliseconds; wait briefly to fill one
QUEUE_ROWS_PER_BATCH = 8  # bound the queue at this many full batches


def served_name(model: str, precision: str) -> str:
    return model if precision == "fp32" else f"{model}_{precision}"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({s for s in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if s >= 2})


def tool_versions() -> dict[str, str | None]:
    versions = package_versions("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorrt")
    if versions.get("onnxruntime") is None:
        versions["onnxruntime"] = package_versions("onnxruntime-gpu").get("onnxruntime-gpu")
    return versions


def served_config(
    name: str,
    *,
    source_model: str,
    precision: str,
    fmt: str,
    spec: InputSpec,
    num_classes: int,
    max_batch_size: int,
) -> mc.ModelConfig:
    platform, _ = FORMATS[fmt]
    parameters = {"precision": precision, "source_model": source_model}
    if fmt == "tensorrt_plan":
        parameters["fallback_artifact"] = FORMATS["onnx"][1]
    return make_config(
        name,
        platform=platform,
        max_batch_size=max_batch_size,
        input_shape=list(spec.shape),
        num_classes=num_classes,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        preferred_batch_sizes=preferred_batch_sizes(max_batch_size),
        max_queue_delay_microseconds=MAX_QUEUE_DELAY_MICROSECONDS,
        max_queue_size=QUEUE_ROWS_PER_BATCH * max_batch_size,
        instance_count=1,
        instance_kind="KIND_GPU" if fmt == "tensorrt_plan" else "KIND_AUTO",
        parameters=parameters,
    )


def build_manifest(
    name: str,
    *,
    source_model: str,
    precision: str,
    version_dir: Path,
    spec: InputSpec,
    labels: list[str],
    weights: dict[str, Any],
    validation: dict[str, Any],
    plan: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of ``version_dir``; with ``plan`` (TensorRT extras) the plan is the artifact and
    ``model.onnx`` its fallback."""
    onnx_file = FORMATS["onnx"][1]
    onnx_sha = sha256_file(version_dir / onnx_file)
    if plan is not None:
        plan_file = FORMATS["tensorrt_plan"][1]
        artifact, fmt, sha = plan_file, "tensorrt_plan", sha256_file(version_dir / plan_file)
        fallback = Artifact(file=onnx_file, format="onnx", sha256=onnx_sha, precision=precision)
        gpu = dict(plan)  # name, compute_capability, tensorrt version, profile, typing
    else:
        artifact, fmt, sha, fallback, gpu = onnx_file, "onnx", onnx_sha, None, None
    return Manifest(
        model=name,
        source_model=source_model,
        precision=precision,
        artifact=artifact,
        format=fmt,
        sha256=sha,
        preprocessing=spec.to_dict(),
        inputs=[{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *spec.shape]}],
        outputs=[{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, len(labels)]}],
        labels=list(labels),
        weights=weights,
        versions=tool_versions(),
        validation=validation,
        fallback=fallback,
        quantization=quantization,
        gpu=gpu,
    )
