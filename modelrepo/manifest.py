"""``manifest.json``: the provenance and validation record beside the artifacts of a version.

Schema 2 (written since the GPU path): a version folder holds several artifacts of one model and
precision. The *primary* artifact, the one config.pbtxt's platform names and Triton serves, stays where
schema 1 put it (``artifact``, ``format``, ``sha256``, ``validation``, ``gpu``), so readers of schema 1 (an
older server during a rolling upgrade, tools) still serve it. ``alternatives`` lists the others (a
``model.onnx`` beside a plan, a ``model.pt2`` beside either), each with its own sha256, precision and
validation; the server runs whichever of them runs best on its host. ``notes`` says why an artifact one
might expect is absent. Schema 1's ``fallback`` (one artifact beside a plan) is read as the one
alternative. Required keys and types are checked on read so the server refuses a broken entry with a
clear reason.
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

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


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
    """One file of a version folder the server can run."""

    file: str  # name inside the version folder
    format: str  # a key of FORMATS
    sha256: str
    precision: str  # of its weights and activations (a key of PRECISIONS)
    validation: dict[str, Any] = field(default_factory=dict)  # its check against PyTorch
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT version, compute capability

    def __post_init__(self) -> None:
        types = {"file": (str,), "format": (str,), "sha256": (str,), "precision": (str,)}
        _check_types(self, {**types, "validation": (dict,), "extra": (dict,)})
        check_file_name("file", self.file)
        check_sha256("sha256", self.sha256)
        if self.format not in FORMATS:
            raise ManifestError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_dict(cls, d: Any, what: str) -> Artifact:
        """``d`` as an Artifact; every problem is a ManifestError starting with ``what``."""
        if isinstance(d, Artifact):
            return d
        if not isinstance(d, dict):
            raise ManifestError(f"{what} must be an object, got {type(d).__name__}")
        try:
            return cls(**d)
        except (TypeError, ManifestError) as e:
            raise ManifestError(f"{what}: {e}") from None


@dataclass
class Manifest:
    model: str  # served model name, e.g. "vgg19_fp16"
    source_model: str  # registry name, e.g. "vgg19"
    precision: str
    artifact: str  # the primary artifact's file name (what config.pbtxt's platform serves)
    format: str
    sha256: str  # of the primary artifact
    preprocessing: dict[str, Any]  # InputSpec.to_dict()
    inputs: list[dict[str, Any]]  # [{"name", "datatype", "shape"}], batch dim -1
    outputs: list[dict[str, Any]]
    labels: list[str] | None = None
    weights: dict[str, Any] = field(default_factory=dict)  # source, seed/path, sha256
    versions: dict[str, str | None] = field(default_factory=dict)  # torch, onnx, onnxruntime, ...
    validation: dict[str, Any] = field(default_factory=dict)  # the primary's parity, agreement, accuracy
    alternatives: list[Artifact] = field(default_factory=list)  # the other artifacts, best first
    quantization: dict[str, Any] | None = None
    gpu: dict[str, Any] | None = None  # the primary plan's build: TensorRT, GPU, compute capability
    batching: dict[str, Any] | None = None  # the latency curve the config's batching was fitted to
    notes: list[str] = field(default_factory=list)  # e.g. why a precision has no torch program
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
        if not all(isinstance(note, str) for note in self.notes):
            raise ManifestError("notes must be a list of strings")
        self.alternatives = [
            Artifact.from_dict(a, f"alternatives[{i}]") for i, a in enumerate(self.alternatives)
        ]
        files = [a.file for a in self.artifacts]
        if len(set(files)) != len(files):
            raise ManifestError(f"artifacts must be distinct files, got {files}")

    @property
    def primary(self) -> Artifact:
        """The primary artifact, as the other artifacts are described."""
        extra = dict(self.gpu or {})
        if self.format == "tensorrt_plan" and "tensorrt" not in extra and self.versions.get("tensorrt"):
            extra["tensorrt"] = self.versions["tensorrt"]
        return Artifact(self.artifact, self.format, self.sha256, self.precision, self.validation, extra)

    @property
    def artifacts(self) -> list[Artifact]:
        """Every artifact of the version: the primary first, then the alternatives."""
        return [self.primary, *self.alternatives]

    @property
    def fallback(self) -> Artifact | None:
        """Schema 1's view: the first alternative (the ONNX model beside a plan)."""
        return self.alternatives[0] if self.alternatives else None

    @fallback.setter
    def fallback(self, artifact: Artifact | None) -> None:
        self.alternatives = [] if artifact is None else [artifact]

    @property
    def input_spec(self) -> InputSpec:
        """The preprocessing as an InputSpec (ValueError naming what is wrong with it)."""
        return InputSpec.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, version_dir: str | os.PathLike) -> Path:
        path = Path(version_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        self.schema = SCHEMA_VERSION  # a schema-1 manifest read and written back is written as schema 2
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        schema = d.get("schema", 1)
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise ManifestError(f"field 'schema' must be int, got {type(schema).__name__} {schema!r:.60}")
        if schema not in READABLE_SCHEMAS:
            raise ManifestError(
                f"manifest schema {schema!r} is not one this server reads ({READABLE_SCHEMAS}); it was "
                "written by a newer cnnserve"
            )
        if schema == 1:
            d = _upgrade_schema1(d)
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


def _upgrade_schema1(d: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: the ``fallback`` becomes the one alternative, with the validation schema 1 kept for
    it under the primary's ``validation["fallback"]``."""
    d = dict(d)
    fallback = d.pop("fallback", None)
    if fallback is None:
        return d
    if not isinstance(fallback, dict):
        raise ManifestError(f"fallback must be an object, got {type(fallback).__name__}")
    validation = d.get("validation")
    fallback_validation = validation.get("fallback") if isinstance(validation, dict) else None
    if isinstance(fallback_validation, dict) and "validation" not in fallback:
        fallback = {**fallback, "validation": fallback_validation}
    d["alternatives"] = [Artifact.from_dict(fallback, "fallback")]
    return d


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
    "alternatives": (list,),
    "quantization": (dict, type(None)),
    "gpu": (dict, type(None)),
    "batching": (dict, type(None)),
    "notes": (list,),
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
