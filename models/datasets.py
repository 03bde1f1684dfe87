"""Labelled image sets for training, calibration and accuracy checks, preprocessed by one function.

Every image goes through :func:`modelrepo.preprocess.preprocess_image` with the model's
:class:`InputSpec`, the same function the server applies to ``image`` inputs, so training, INT8
calibration and serving see identical tensors. The held-out split is fixed (seeded, stratified):
:func:`digits_split` returns the same images to ``models.train`` and to ``export``'s checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from modelrepo.preprocess import ImageDecodeError, InputSpec, decode_image, preprocess_image

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2
DIGITS_CLASSES = tuple(str(i) for i in range(10))


class DatasetError(ValueError):
    """A dataset folder is missing, unreadable or holds no usable images."""


@dataclass(frozen=True)
class ImageSet:
    """Images (PIL images or file paths) with integer labels; items are preprocessed on access.

    Indexing yields ``(float32 array of spec.shape, label)``, so an ``ImageSet`` is a map-style
    dataset for ``torch.utils.data.DataLoader`` as it is.
    """

    images: tuple[Image.Image | Path, ...]
    labels: np.ndarray  # int64, one per image
    classes: tuple[str, ...]
    spec: InputSpec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return preprocess_image(self._open(index), self.spec), int(self.labels[index])

    def _open(self, index: int) -> Image.Image:
        item = self.images[index]
        if isinstance(item, Image.Image):
            return item
        try:
            return decode_image(Path(item).read_bytes(), self.spec)  # as the server decodes it
        except (OSError, ImageDecodeError) as e:
            raise DatasetError(f"cannot read image {item}: {e}") from None

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return ImageSet(
            images=tuple(self.images[i] for i in indices),
            labels=self.labels[np.asarray(indices, dtype=np.int64)],
            classes=self.classes,
            spec=self.spec,
        )

    def head(self, n: int | None) -> ImageSet:
        return self if n is None or n >= len(self) else self.subset(range(n))

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(inputs [B, C, H, W], labels [B])`` in order."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            items = [self[i] for i in range(start, stop)]
            yield np.stack([x for x, _ in items]), np.asarray([y for _, y in items], dtype=np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All inputs and labels at once (small sets only)."""
        if not len(self):
            return np.zeros((0, *self.spec.shape), np.float32), np.zeros(0, np.int64)
        xs, ys = zip(*self.batches(256), strict=True)
        return np.concatenate(xs), np.concatenate(ys)


@dataclass(frozen=True)
class Split:
    """A fixed train / held-out split of one dataset."""

    name: str
    train: ImageSet
    heldout: ImageSet

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def describe(self) -> dict:
        """What a checkpoint or manifest records about the data."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "train_size": len(self.train),
            "heldout_size": len(self.heldout),
            "split_seed": SPLIT_SEED,
            "heldout_fraction": HELDOUT_FRACTION,
        }


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    stratify = labels if len(counts) and counts[counts > 0].min() >= 2 else None
    train, heldout = train_test_split(
        indices, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=stratify
    )
    return np.sort(train), np.sort(heldout)


@lru_cache(maxsize=1)
def digits_images() -> tuple[tuple[Image.Image, ...], np.ndarray]:
    """scikit-learn's bundled 8x8 digits (0..16 intensities) as 8-bit grayscale PIL images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return tuple(Image.fromarray(p) for p in pixels), digits.target.astype(np.int64)


def digits_split(spec: InputSpec) -> Split:
    """The digits split every part of the project uses: 1437 training and 360 held-out images."""
    images, labels = digits_images()
    full = ImageSet(images, labels, DIGITS_CLASSES, spec)
    train, heldout = _split_indices(labels)
    return Split("digits", full.subset(train), full.subset(heldout))


def image_folder(root: str | os.PathLike, spec: InputSpec) -> ImageSet:
    """A torchvision ``ImageFolder`` tree (``root/<class>/<image>``); classes are the folder names."""
    from torchvision.datasets import ImageFolder

    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"image folder {path} does not exist or is not a directory")
    try:
        folder = ImageFolder(str(path))
    except (FileNotFoundError, PermissionError, OSError) as e:
        raise DatasetError(f"cannot read image folder {path}: {e}") from None
    if not folder.samples:
        raise DatasetError(f"image folder {path} holds no images")
    return ImageSet(
        images=tuple(Path(p) for p, _ in folder.samples),
        labels=np.asarray(folder.targets, dtype=np.int64),
        classes=tuple(folder.classes),
        spec=spec,
    )


def folder_split(root: str | os.PathLike, spec: InputSpec) -> Split:
    """Seeded, stratified (where every class has two images) split of an ImageFolder tree."""
    full = image_folder(root, spec)
    if len(full) < 2:
        raise DatasetError(f"image folder {root} needs at least two images to hold one out")
    train, heldout = _split_indices(full.labels)
    return Split(f"folder:{Path(root).resolve()}", full.subset(train), full.subset(heldout))
