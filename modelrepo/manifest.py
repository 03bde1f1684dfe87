"""``manifest.json``: the provenance and validation record beside every artifact.

Required keys are checked on read so the server can refuse a broken entry with a clear reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import MISSING, asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from modelrepo.names import FORMATS, MANIFEST_NAME, PRECISIONS
from modelrepo.preprocess import InputSpec

SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, unreadable or lacks a required field."""


@dataclass
class Artifact:
    file: str  # name inside the version folder
    format: str  # a key of FORMATS
    sha256: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT version, compute capability


@dataclass
class Manifest:
    model: str  # served model name, e.g. "vgg19_fp16"
    source_model: str  # registry name, e.g. "vgg19"
    precision: str
    artifact: str  # primary artifact file name
    format: str
    sha256: str  # of the primary artifact
    preprocessing: dict[str, Any]  # InputSpec.to_dict()
    inputs: list[dict[str, Any]]  # [{"name", "datatype", "shape"}], batch dim -1
    outputs: list[dict[str, Any]]
    labels: list[str] | None = None
    weights: dict[str, Any] = field(default_factory=dict)  # source, seed/path, sha256
    versions: dict[str, str | None] = field(default_factory=dict)  # torch, onnx, onnxruntime, ...
    validation: dict[str, Any] = field(default_factory=dict)  # parity, top1_agreement, accuracy
    fallback: Artifact | None = None  # e.g. model.onnx beside a TensorRT plan
    quantization: dict[str, Any] | None = None
    gpu: dict[str, Any] | None = None  # name, compute_capability (for plans)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.format not in FORMATS:
            raise ManifestError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if isinstance(self.fallback, dict):
            self.fallback = Artifact(**self.fallback)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, version_dir: str | os.PathLike) -> Path:
        path = Path(version_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        fields = cls.__dataclass_fields__
        required = {n for n, f in fields.items() if f.default is f.default_factory is MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ManifestError(f"manifest lacks required field(s): {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as e:
            raise ManifestError(f"malformed manifest: {e}") from None

    @classmethod
    def read(cls, version_dir: str | os.PathLike) -> Manifest:
        path = Path(version_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{path} does not exist") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path} is not readable JSON: {e}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the given distributions (None where absent), plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
