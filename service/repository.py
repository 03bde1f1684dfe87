"""What a model folder must hold to be served, checked before and while loading it.

config.pbtxt + manifest.json checks (:func:`model_io`), Triton's version policy, the batching policy, the
warm-up every instance passes before a version reports ready, and file fingerprints for poll mode.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrepo.layout import LABELS_NAME
from modelrepo.manifest import Manifest
from modelrepo.preprocess import InputSpec
from protos import model_config_pb2 as mc
from service.backends import Backend
from service.batcher import DEFAULT_MAX_QUEUE_SIZE, BatchPolicy
from service.errors import ModelLoadError

Fingerprint = tuple


@dataclass(frozen=True)
class ModelIO:
    """What a request to a model version must look like, and what its answer holds."""

    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    max_batch_size: int
    input_spec: InputSpec
    labels: tuple[str, ...] | None
    default_timeout: float | None  # seconds (default_queue_policy.default_timeout_microseconds)
    allow_timeout_override: bool

    @functools.cached_property
    def row_bytes(self) -> int:
        """Bytes of one FP32 input row."""
        c, h, w = self.input_shape
        return 4 * c * h * w


def tree_fingerprint(path: Path) -> Fingerprint:
    """Name, size and mtime of every file below ``path`` (hidden ones skipped): changes when files do."""
    entries = []
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                continue
            st = p.stat()
            entries.append((str(rel), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """Triton's version policy: latest N (default 1), all, or specific versions."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    n = (policy.latest.num_versions if which == "latest" else 1) or 1
    return list(available[-n:])


def model_io(name: str, config: mc.ModelConfig, manifest: Manifest, model_dir: Path) -> ModelIO:
    """Check a config.pbtxt + manifest pair describes a servable CNN classifier."""
    what = f"model {name}"
    if config.max_batch_size < 1:
        raise ModelLoadError(
            f"{what}: max_batch_size must be >= 1 (the batch dimension is implicit), "
            f"got {config.max_batch_size}"
        )
    if len(config.input) != 1 or len(config.output) != 1:
        raise ModelLoadError(
            f"{what}: config must have exactly one input and one output, has "
            f"{len(config.input)} and {len(config.output)}"
        )
    inp, out = config.input[0], config.output[0]
    dims = tuple(int(d) for d in inp.dims)
    if inp.data_type != mc.TYPE_FP32 or len(dims) != 3 or min(dims) <= 0:
        raise ModelLoadError(
            f"{what}: input {inp.name!r} must be TYPE_FP32 with dims [C, H, W], got "
            f"{mc.DataType.Name(inp.data_type)} {list(dims)}"
        )
    if out.data_type != mc.TYPE_FP32 or len(out.dims) != 1 or out.dims[0] <= 0:
        raise ModelLoadError(
            f"{what}: output {out.name!r} must be TYPE_FP32 with dims [classes], got "
            f"{mc.DataType.Name(out.data_type)} {list(out.dims)}"
        )
    try:
        spec = manifest.input_spec
    except ValueError as e:
        raise ModelLoadError(f"{what}: manifest preprocessing is invalid: {e}") from None
    if spec.shape != dims:
        raise ModelLoadError(
            f"{what}: manifest preprocessing gives {list(spec.shape)}, config input dims are {list(dims)}"
        )
    num_classes = int(out.dims[0])
    labels_path = model_dir / (out.label_filename or LABELS_NAME)
    labels = labels_path.read_text().splitlines() if labels_path.is_file() else manifest.labels
    if labels is not None and len(labels) != num_classes:
        raise ModelLoadError(
            f"{what}: {len(labels)} labels ({labels_path.name} or manifest) for {num_classes} classes"
        )
    queue_policy = config.dynamic_batching.default_queue_policy
    timeout_us = queue_policy.default_timeout_microseconds
    return ModelIO(
        input_name=inp.name,
        output_name=out.name,
        input_shape=dims,
        num_classes=num_classes,
        max_batch_size=config.max_batch_size,
        input_spec=spec,
        labels=tuple(labels) if labels is not None else None,
        default_timeout=timeout_us / 1e6 if timeout_us else None,
        allow_timeout_override=queue_policy.allow_timeout_override or not timeout_us,
    )


def batch_policy(name: str, config: mc.ModelConfig) -> BatchPolicy:
    try:
        if not config.HasField("dynamic_batching"):
            return BatchPolicy(config.max_batch_size, dynamic=False)
        db = config.dynamic_batching
        return BatchPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
            max_queue_delay=db.max_queue_delay_microseconds / 1e6,
            max_queue_size=db.default_queue_policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        )
    except ValueError as e:
        raise ModelLoadError(f"model {name}: dynamic_batching: {e}") from None


def warm_up(name: str, backends: list[Backend], io: ModelIO) -> float:
    """Run every instance before the version reports ready, checking the output shape against the config.

    Returns the median seconds of a one-row batch on the first instance (to choose inline execution)."""
    sizes = sorted(
        {1, min(2, io.max_batch_size)}
        | ({io.max_batch_size} if any(b.device.startswith("cuda") for b in backends) else set())
    )
    for backend in backends:
        for rows in sizes:
            try:
                out = backend.infer(np.zeros((rows, *io.input_shape), dtype=np.float32))
            except Exception as e:
                raise ModelLoadError(
                    f"model {name}: warm-up with batch {rows} on {backend.describe()} failed: {e}"
                ) from None
            if out.shape != (rows, io.num_classes):
                raise ModelLoadError(
                    f"model {name}: warm-up with batch {rows} returned shape {list(out.shape)}, "
                    f"the config says [{rows}, {io.num_classes}]"
                )
    one_row = np.zeros((1, *io.input_shape), dtype=np.float32)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        backends[0].infer(one_row)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
