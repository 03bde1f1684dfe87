"""``manifest.json``: the provenance and validation record beside every artifact.

Required keys are checked on read so the server can refuse a broken entry with a clear reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import MISSING, asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from modelrepo.names import FORMATS, MANIFEST_NAME, PRECISIONS
from modelrepo.preprocess import InputSpec

SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, unreadable, lacks a required field or has one of the wrong type."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_file_name(what: str, name: Any) -> None:
    """A file named by a manifest stays inside its version folder: a plain name, no path."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ManifestError(f"{what} must be a file name inside the version folder, got {name!r}")


def check_sha256(what: str, digest: Any) -> None:
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ManifestError(f"{what} must be 64 lower-case hex digits, got {digest!r}")


def _check_types(obj: Any, types: dict[str, tuple[type, ...]]) -> None:
    for name, allowed in types.items():
        value = getattr(obj, name)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ManifestError(
                f"field {name!r} must be {expected}, got {type(value).__name__} {value!r:.60}"
            )


@dataclass
class Artifact:
    file: str  # name inside the version folder
    format: str  # a key of FORMATS
    sha256: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT version, compute capability

    def __post_init__(self) -> None:
        _check_types(
            self, {"file": (str,), "format": (str,), "sha256": (str,), "precision": (str,), "extra": (dict,)}
        )
        check_file_name("fallback file", self.file)
        check_sha256("fallback sha256", self.sha256)
        if self.format not in FORMATS:
            raise ManifestError(f"fallback format must be one of {sorted(FORMATS)}, got {self.format!r}")


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
        _check_types(self, _FIELD_TYPES)
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.format not in FORMATS:
            raise ManifestError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        check_file_name("artifact", self.artifact)
        check_sha256("sha256", self.sha256)
        if self.labels is not None and not all(isinstance(label, str) for label in self.labels):
            raise ManifestError("labels must be a list of strings")
        if isinstance(self.fallback, dict):
            try:
                self.fallback = Artifact(**self.fallback)
            except TypeError as e:
                raise ManifestError(f"fallback: {e}") from None

    @property
    def input_spec(self) -> InputSpec:
        """The preprocessing as an InputSpec (ValueError naming what is wrong with it)."""
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path} is not readable JSON: {e}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "source_model": (str,),
    "precision": (str,),
    "artifact": (str,),
    "format": (str,),
    "sha256": (str,),
    "preprocessing": (dict,),
    "inputs": (list,),
    "outputs": (list,),
    "labels": (list, type(None)),
    "weights": (dict,),
    "versions": (dict,),
    "validation": (dict,),
    "fallback": (dict, Artifact, type(None)),
    "quantization": (dict, type(None)),
    "gpu": (dict, type(None)),
    "created_at": (str,),
    "schema": (int,),
}


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
