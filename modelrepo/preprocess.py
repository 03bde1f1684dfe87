"""Image preprocessing, one function used by training, calibration and the server (no train/serve skew).

Pure Pillow + NumPy: resize (shorter side then centre crop, like torchvision's ImageClassification
transform, or straight to HxW), colour conversion, scale to [0, 1], normalize per channel.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_MODES = {"RGB": 3, "L": 1}


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input tensor (recorded in every manifest)."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: str = "RGB"  # PIL mode the image is converted to: "RGB" or "L"
    resize: int | None = None  # shorter side resized to this, then centre crop; None: straight to HxW

    def __post_init__(self) -> None:
        if COLOR_MODES.get(self.color) != self.channels:
            raise ValueError(f"color {self.color!r} does not give {self.channels} channels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if self.resize is not None and self.resize < max(self.height, self.width):
            raise ValueError(f"resize {self.resize} is smaller than the crop {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        try:
            return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a preprocessing spec: {d!r} ({e})") from None


IMAGENET_INPUT = InputSpec(3, 224, 224, IMAGENET_MEAN, IMAGENET_STD, "RGB", resize=256)


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode."""


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded JPEG/PNG/... bytes; raise :class:`ImageDecodeError` with the reason."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {e}") from None
    return img


def preprocess_image(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """PIL image -> float32 array of shape ``spec.shape``, normalized."""
    img = img.convert(spec.color)
    if spec.resize is None:
        img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    else:
        w, h = img.size
        scale = spec.resize / min(w, h)
        new_w, new_h = max(spec.width, round(w * scale)), max(spec.height, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - spec.width) // 2, (new_h - spec.height) // 2
        img = img.crop((left, top, left + spec.width, top + spec.height))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def preprocess_bytes(data: bytes, spec: InputSpec) -> np.ndarray:
    return preprocess_image(decode_image(data), spec)
