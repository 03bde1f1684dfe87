"""Images for INT8 calibration and for accuracy checks: digits, an ImageFolder tree, or random tensors.

Calibration draws from the training (held-in) part of a split and evaluation from the held-out part,
both through :mod:`models.datasets`, i.e. the one preprocessing function and the fixed split that
``models.train`` used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import CalibrationError
from modelrepo.preprocess import InputSpec
from models.datasets import DatasetError, ImageSet, Split, digits_split, folder_split

DIGITS = "digits"
RANDOM = "random"
RANDOM_EVAL_SAMPLES = 32  # random tensors have no labels; a few batches suffice for agreement


@dataclass
class EvalInputs:
    """Preprocessed inputs with labels in the model's class indices (None where classes do not match)."""

    source: str
    inputs: np.ndarray
    labels: np.ndarray | None

    def describe(self) -> dict:
        return {"source": self.source, "samples": len(self.inputs), "labelled": self.labels is not None}


def source_kind(source: str | os.PathLike) -> str:
    return str(source) if str(source) in (DIGITS, RANDOM) else "folder"


def check_source(source: str | os.PathLike, what: str = "calibration") -> None:
    """Fail early, before any export work, when an image folder cannot be used."""
    if source_kind(source) != "folder":
        return
    path = Path(source)
    if not path.is_dir():
        raise CalibrationError(f"{what} folder {path} does not exist (expected digits, random or a folder)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CalibrationError(f"{what} folder {path} is not readable")
    try:
        classes = [p for p in path.iterdir() if p.is_dir()]
    except OSError as e:
        raise CalibrationError(f"cannot read {what} folder {path}: {e}") from None
    if not classes:
        raise CalibrationError(
            f"{what} folder {path} has no class sub-folders (expected {path}/<class>/<image>)"
        )


def _split(source: str | os.PathLike, spec: InputSpec) -> Split:
    try:
        return digits_split(spec) if source_kind(source) == DIGITS else folder_split(source, spec)
    except DatasetError as e:
        raise CalibrationError(str(e)) from None


def _sample(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(images):
        return images
    picked = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    return images.subset(picked.tolist())


def _arrays(images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    try:
        return images.arrays()
    except DatasetError as e:
        raise CalibrationError(str(e)) from None


def _random(spec: InputSpec, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *spec.shape), dtype=np.float32)


def calibration_inputs(
    source: str | os.PathLike, spec: InputSpec, samples: int, seed: int = 0
) -> tuple[np.ndarray, str]:
    """``samples`` preprocessed calibration inputs from the held-in part of ``source``."""
    if samples < 1:
        raise CalibrationError("{option} must be at least 1", option="calib_samples")
    if source_kind(source) == RANDOM:
        return _random(spec, samples, seed), f"random (standard normal, seed {seed})"
    split = _split(source, spec)
    x, _ = _arrays(_sample(split.train, samples, seed))
    return x, f"{split.name}:train"


def match_labels(
    classes: Sequence[str], labels: np.ndarray, model_labels: Sequence[str]
) -> np.ndarray | None:
    """Dataset labels as the model's class indices, or None where some class is not among its labels."""
    index = {name: i for i, name in enumerate(model_labels)}
    if not all(c in index for c in classes):
        return None
    return np.asarray([index[classes[y]] for y in labels], dtype=np.int64)


def evaluation_inputs(
    source: str | os.PathLike,
    spec: InputSpec,
    model_labels: Sequence[str],
    samples: int | None = None,
    seed: int = 1,
) -> EvalInputs:
    """Held-out inputs for agreement and accuracy (all of the held-out split unless ``samples``)."""
    if source_kind(source) == RANDOM:
        n = samples or RANDOM_EVAL_SAMPLES
        return EvalInputs(f"random (standard normal, seed {seed})", _random(spec, n, seed), None)
    split = _split(source, spec)
    x, y = _arrays(_sample(split.heldout, samples, seed))
    return EvalInputs(f"{split.name}:heldout", x, match_labels(split.classes, y, model_labels))
