"""Paths of Triton's repository layout: model folders, numeric version folders, labels."""

from __future__ import annotations

import os
from pathlib import Path

from modelrepo.names import CONFIG_NAME, LABELS_NAME


def is_model_folder(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a config.pbtxt. A folder that cannot be looked into (permissions) counts
    as a model: its load then fails saying why, and one unreadable folder does not hide the others."""
    try:
        return (model_dir / CONFIG_NAME).is_file()
    except PermissionError:
        return True


def model_names(repo: str | os.PathLike) -> list[str]:
    """Model folders of a repository (those holding a config.pbtxt, or that cannot be looked into; hidden
    staging folders skipped)."""
    root = Path(repo)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_model_folder(p)
    )


def versions(model_dir: str | os.PathLike) -> list[int]:
    """Numeric version folders of a model, ascending."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def read_labels(model_dir: str | os.PathLike, file_name: str = LABELS_NAME) -> list[str] | None:
    """One label per line (UTF-8); None where the file does not exist."""
    path = Path(model_dir) / file_name
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()


def write_labels(model_dir: str | os.PathLike, labels: list[str]) -> Path:
    path = Path(model_dir) / LABELS_NAME
    path.write_text("".join(f"{label}\n" for label in labels))
    return path
