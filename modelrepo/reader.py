"""Reading a model folder as the server serves it: config.pbtxt + manifest.json checked as a pair.

:func:`read_model_folder` reads the config and picks the versions (Triton's version policy);
:func:`read_version` reads one version's manifest and checks it against the config, giving the
:class:`ModelIO` a request must match. :class:`Fingerprint` tells when any of those files changed.
Every problem is an :class:`EntryError` naming the file and what is wrong.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from modelrepo.config import ConfigError, read_config
from modelrepo.layout import read_labels, versions
from modelrepo.manifest import Manifest, ManifestError
from modelrepo.names import CONFIG_NAME, LABELS_NAME
from modelrepo.preprocess import InputSpec
from protos import model_config_pb2 as mc


class EntryError(ValueError):
    """A model folder, or one of its versions, is not a servable entry."""


@dataclass(frozen=True)
class FileStamp:
    path: str  # relative to the fingerprinted folder
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Fingerprint:
    """Name, size and mtime of every file below a folder (hidden ones skipped): changes when files do."""

    files: tuple[FileStamp, ...]

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        stamps = []
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                rel = p.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                    continue
                st = p.stat()
                stamps.append(FileStamp(str(rel), st.st_size, st.st_mtime_ns))
        return cls(tuple(stamps))

    def outside_versions(self) -> Fingerprint:
        """The files that are not inside a numeric version folder (config, labels)."""
        return Fingerprint(tuple(s for s in self.files if not s.path.split("/")[0].isdigit()))


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


@dataclass(frozen=True)
class ModelFolder:
    """A model's config and the versions its version policy selects."""

    name: str
    path: Path
    config: mc.ModelConfig
    versions: tuple[int, ...]
    config_fingerprint: Fingerprint  # config.pbtxt, labels: a change reloads every version


@dataclass(frozen=True)
class VersionEntry:
    version: int
    path: Path
    manifest: Manifest
    io: ModelIO
    fingerprint: tuple[Fingerprint, Fingerprint]  # (the model folder's config files, the version folder)


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


def read_model_folder(repo: Path, name: str) -> ModelFolder:
    model_dir = repo / name
    try:
        config = read_config(model_dir)
    except ConfigError as e:
        raise EntryError(str(e)) from None
    if config.name and config.name != name:
        raise EntryError(
            f"{model_dir / CONFIG_NAME} names model {config.name!r}; it must match its folder {name!r}"
        )
    config.name = name
    available = versions(model_dir)
    selected = select_versions(config.version_policy, available)
    if not selected:
        raise EntryError(
            f"model {name}: no version folder matches the version policy (found {available or 'none'})"
        )
    fingerprint = Fingerprint.of(model_dir).outside_versions()
    return ModelFolder(name, model_dir, config, tuple(selected), fingerprint)


def read_version(folder: ModelFolder, version: int) -> VersionEntry:
    path = folder.path / str(version)
    fingerprint = (folder.config_fingerprint, Fingerprint.of(path))
    try:
        manifest = Manifest.read(path)
    except ManifestError as e:
        raise EntryError(f"model {folder.name} version {version}: {e}") from None
    return VersionEntry(
        version, path, manifest, model_io(folder.name, folder.config, manifest, folder.path), fingerprint
    )


def _labels(what: str, model_dir: Path, output: mc.ModelOutput, manifest: Manifest) -> list[str] | None:
    """labels.txt (or the config's label_filename, which must stay inside the model folder), else the
    manifest's labels."""
    file_name = output.label_filename or LABELS_NAME
    path = (model_dir / file_name).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise EntryError(f"{what}: label_filename {file_name!r} points outside the model folder")
    try:
        labels = read_labels(path.parent, path.name)
    except (OSError, UnicodeDecodeError) as e:
        raise EntryError(f"{what}: cannot read {file_name}: {e}") from None
    return labels if labels is not None else manifest.labels


def model_io(name: str, config: mc.ModelConfig, manifest: Manifest, model_dir: Path) -> ModelIO:
    """Check a config.pbtxt + manifest pair describes a servable CNN classifier."""
    what = f"model {name}"
    if config.max_batch_size < 1:
        raise EntryError(
            f"{what}: max_batch_size must be >= 1 (the batch dimension is implicit), "
            f"got {config.max_batch_size}"
        )
    if len(config.input) != 1 or len(config.output) != 1:
        raise EntryError(
            f"{what}: config must have exactly one input and one output, has "
            f"{len(config.input)} and {len(config.output)}"
        )
    inp, out = config.input[0], config.output[0]
    dims = tuple(int(d) for d in inp.dims)
    if inp.data_type != mc.TYPE_FP32 or len(dims) != 3 or min(dims) <= 0:
        raise EntryError(
            f"{what}: input {inp.name!r} must be TYPE_FP32 with dims [C, H, W], got "
            f"{mc.DataType.Name(inp.data_type)} {list(dims)}"
        )
    if out.data_type != mc.TYPE_FP32 or len(out.dims) != 1 or out.dims[0] <= 0:
        raise EntryError(
            f"{what}: output {out.name!r} must be TYPE_FP32 with dims [classes], got "
            f"{mc.DataType.Name(out.data_type)} {list(out.dims)}"
        )
    try:
        spec = manifest.input_spec
    except ValueError as e:
        raise EntryError(f"{what}: manifest preprocessing is invalid: {e}") from None
    if spec.shape != dims:
        raise EntryError(
            f"{what}: manifest preprocessing gives {list(spec.shape)}, config input dims are {list(dims)}"
        )
    num_classes = int(out.dims[0])
    labels = _labels(what, model_dir, out, manifest)
    if labels is not None and len(labels) != num_classes:
        source = out.label_filename or LABELS_NAME
        raise EntryError(f"{what}: {len(labels)} labels ({source} or manifest) for {num_classes} classes")
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
