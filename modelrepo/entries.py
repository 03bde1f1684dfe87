"""One served entry of the repository: its config.pbtxt and the manifest beside its artifacts.

``python -m export`` builds its entries here, and so do the test harness and the benchmarks, so that
every entry a server reads was written the one way. config.pbtxt names the primary artifact's platform
(what Triton serves); the manifest lists the others as alternatives the server may run instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrepo.config import make_config
from modelrepo.manifest import Artifact, Manifest, sha256_file
from modelrepo.names import INPUT_NAME, OUTPUT_NAME, TORCH_BACKEND, artifact_file, platform_of
from modelrepo.preprocess import InputSpec
from protos import model_config_pb2 as mc


@dataclass(frozen=True)
class Batching:
    """The scheduling part of a served config (Triton's ``max_batch_size`` and ``dynamic_batching``)."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0  # 0: the server's bound
    dynamic: bool = True  # False: no dynamic_batching block, each request is its own batch


def served_name(model: str, precision: str) -> str:
    """``resnet50`` (fp32), ``resnet50_fp16``, ``resnet50_int8``: one served model per precision."""
    return model if precision == "fp32" else f"{model}_{precision}"


def entry_config(
    name: str,
    *,
    source_model: str,
    precision: str,
    fmt: str,
    spec: InputSpec,
    num_classes: int,
    batching: Batching,
    instance_count: int = 1,
    parameters: Mapping[str, str] | None = None,
) -> mc.ModelConfig:
    """config.pbtxt of an entry whose primary artifact has format ``fmt``."""
    params = {"precision": precision, "source_model": source_model, **(parameters or {})}
    config = make_config(
        name,
        platform=platform_of(fmt),
        max_batch_size=batching.max_batch_size,
        input_shape=list(spec.shape),
        num_classes=num_classes,
        preferred_batch_sizes=batching.preferred_batch_sizes,
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        max_queue_size=batching.max_queue_size,
        instance_count=instance_count,
        instance_kind="KIND_GPU" if fmt == "tensorrt_plan" else "KIND_AUTO",
        parameters=params,
    )
    if fmt == "torch_export":
        config.platform, config.backend = "", TORCH_BACKEND
    if not batching.dynamic:
        config.ClearField("dynamic_batching")
    return config


def artifact_record(
    version_dir: Path,
    fmt: str,
    precision: str,
    validation: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Artifact:
    """The manifest's record of an artifact already written to ``version_dir`` (its sha256 from the file)."""
    file = artifact_file(fmt)
    return Artifact(file, fmt, sha256_file(version_dir / file), precision, validation or {}, extra or {})


def entry_manifest(
    name: str,
    *,
    source_model: str,
    precision: str,
    version_dir: Path,
    fmt: str,
    spec: InputSpec,
    labels: Sequence[str],
    weights: dict[str, Any],
    versions: dict[str, str | None],
    validation: dict[str, Any] | None = None,
    fallback_fmt: str | None = None,
    alternatives: Sequence[Artifact] = (),
    quantization: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> Manifest:
    """The manifest of ``version_dir``, whose primary artifact (format ``fmt``) is already written, beside
    the ``alternatives`` (or one artifact of format ``fallback_fmt``): sha256 are taken from the files."""
    artifact = artifact_file(fmt)
    others = list(alternatives)
    if fallback_fmt is not None:
        others.insert(0, artifact_record(version_dir, fallback_fmt, precision))
    return Manifest(
        model=name,
        source_model=source_model,
        precision=precision,
        artifact=artifact,
        format=fmt,
        sha256=sha256_file(version_dir / artifact),
        preprocessing=spec.to_dict(),
        inputs=[{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *spec.shape]}],
        outputs=[{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, len(labels)]}],
        labels=list(labels),
        weights=weights,
        versions=versions,
        validation=validation or {},
        alternatives=others,
        quantization=quantization,
        gpu=gpu,
        batching=batching,
        notes=list(notes),
    )
