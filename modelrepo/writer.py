"""Writes entries of the model repository atomically.

Everything is built under a hidden staging folder inside the repository (same filesystem, skipped by
``modelrepo.layout.model_names``). An entry appears by ``rename``: a new model folder appears whole
(config, labels, version); a new version of an existing model appears whole, then its config and
labels are replaced file by file (``os.replace``). A failure before the commit leaves the repository
untouched; the staging folder is removed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from modelrepo.config import write_config
from modelrepo.layout import write_labels
from modelrepo.manifest import Manifest
from modelrepo.names import CONFIG_NAME, LABELS_NAME
from protos import model_config_pb2 as mc

STAGING_PREFIX = ".staging-"


class RepositoryWriteError(Exception):
    """The repository cannot take the entry (not writable, bad version)."""


class VersionExistsError(RepositoryWriteError):
    """The version folder is already in the repository and replacing it was not asked for."""


def check_version_free(repo: Path, served_name: str, version: int, replace: bool) -> None:
    target = repo / served_name / str(version)
    if target.exists() and not replace:
        raise VersionExistsError(f"{target} already exists; replace it, or write another version beside it")


class RepositoryWriter:
    """``with RepositoryWriter(repo, version, replace) as w: d = w.version_dir(name); ...; w.commit()``."""

    def __init__(self, repo: str | os.PathLike, version: int, replace: bool = False) -> None:
        if version < 1:
            raise RepositoryWriteError(f"version must be a positive integer, got {version}")
        self.repo = Path(repo)
        self.version = version
        self.replace = replace
        self.staging: Path | None = None
        self._staged: list[str] = []

    def __enter__(self) -> RepositoryWriter:
        try:
            self.repo.mkdir(parents=True, exist_ok=True)
            self.staging = self.repo / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
            self.staging.mkdir()
        except OSError as e:
            raise RepositoryWriteError(f"cannot write to repository {self.repo}: {e}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def version_dir(self, served_name: str) -> Path:
        """The staged version folder of ``served_name`` (created on first use)."""
        if self.staging is None:
            raise RuntimeError("RepositoryWriter used outside its with-block")
        path = self.staging / served_name / str(self.version)
        if served_name not in self._staged:
            check_version_free(self.repo, served_name, self.version, self.replace)
            path.mkdir(parents=True)
            self._staged.append(served_name)
        return path

    def finish(self, served_name: str, config: mc.ModelConfig, labels: list[str], manifest: Manifest) -> None:
        """Write config.pbtxt, labels.txt and manifest.json of a staged entry."""
        vdir = self.version_dir(served_name)
        write_config(vdir.parent, config)
        write_labels(vdir.parent, labels)
        manifest.write(vdir)

    def commit(self) -> list[Path]:
        """Move every staged entry into the repository; returns their version folders."""
        return [self._commit_one(name) for name in self._staged]

    def _commit_one(self, served_name: str) -> Path:
        staged_model = self.staging / served_name
        target_model = self.repo / served_name
        target_version = target_model / str(self.version)
        if not target_model.exists():
            os.rename(staged_model, target_model)
            return target_version
        check_version_free(self.repo, served_name, self.version, self.replace)
        replaced = None
        if target_version.exists():
            replaced = target_model / f".replaced-{self.version}-{uuid.uuid4().hex[:8]}"
            os.rename(target_version, replaced)
        try:
            os.rename(staged_model / str(self.version), target_version)
        except OSError:
            if replaced is not None:
                os.rename(replaced, target_version)
            raise
        for name in (CONFIG_NAME, LABELS_NAME):
            os.replace(staged_model / name, target_model / name)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        return target_version
