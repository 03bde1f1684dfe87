"""Image preprocessing, one function used by training, calibration and the server (no train/serve skew).

Pure Pillow + NumPy: resize (shorter side then centre crop, like torchvision's ImageClassification
transform, or straight to HxW), colour conversion, scale to [0, 1], normalize per channel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_MODES = {"RGB": 3, "L": 1}
IMAGE_FORMATS = ("JPEG", "PNG")  # what the server decodes unless a manifest says otherwise


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
    image_formats: tuple[str, ...] = IMAGE_FORMATS  # encoded formats the server accepts (Pillow's names)

    def __post_init__(self) -> None:
        for name in ("channels", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean and std must be numbers, got {self.mean!r} and {self.std!r}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std values must be > 0, got {self.std!r}")
        if self.resize is not None and (isinstance(self.resize, bool) or not isinstance(self.resize, int)):
            raise ValueError(f"resize must be an integer or null, got {self.resize!r}")
        if not self.image_formats or not all(isinstance(f, str) for f in self.image_formats):
            raise ValueError(f"image_formats must be a non-empty list of names, got {self.image_formats!r}")
        if COLOR_MODES.get(self.color) != self.channels:
            raise ValueError(f"color {self.color!r} does not give {self.channels} channels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if self.resize is not None and self.resize < max(self.height, self.width):
            raise ValueError(f"resize {self.resize} is smaller than the crop {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def pixels_shape(self) -> tuple[int, int, int]:
        """The ``pixels`` input of one row: H, W, C."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``preprocessing`` (``image_formats`` only when not the default, so that servers
        older than the field still read the manifests of a default export)."""
        d = asdict(self)
        d["mean"], d["std"], d["image_formats"] = list(self.mean), list(self.std), list(self.image_formats)
        if self.image_formats == IMAGE_FORMATS:
            del d["image_formats"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """From a manifest's ``preprocessing`` (manifests written before ``image_formats``: the default)."""
        try:
            tuples = {k: tuple(d[k]) for k in ("mean", "std", "image_formats") if k in d}
            return cls(**{**d, **tuples})
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a preprocessing spec: {d!r} ({e})") from None


IMAGENET_INPUT = InputSpec(3, 224, 224, IMAGENET_MEAN, IMAGENET_STD, "RGB", resize=256)


# The server decodes at most this many pixels per pixel of the model's input, after any reduced-size
# decoding the format allows (JPEG's DCT scaling): the work an image may cause follows from the model it is
# for, not from --max-image-pixels alone (a 5000x5000 PNG for a 32x32 model costs seconds and 300 MB).
DECODE_BUDGET_FACTOR = 16
# Modes decoded as they are or converted cheaply; 16-bit greyscale ("I;16*", PNG's "I") is scaled to 8 bits
# (a uint32 copy, bounded by the decode budget). Anything else (32-bit "I" and "F" outside PNG, ...) is
# refused from the header, before any pixel is decoded.
DECODED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB"})


def decode_budget(spec: InputSpec, max_pixels: int) -> int:
    """The most pixels decoded for one image for ``spec``: :data:`DECODE_BUDGET_FACTOR` times its input,
    never above ``max_pixels``."""
    return min(max_pixels, DECODE_BUDGET_FACTOR * spec.height * spec.width)


class ImageDecodeError(ValueError):
    """The bytes are not an image the server accepts (format, size, mode, or corrupt data)."""


def open_image(
    data: bytes, formats: Sequence[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Identify an encoded image from its header (no pixels decoded yet): only ``formats`` (Pillow's names,
    e.g. JPEG, PNG; None: any) and at most ``max_pixels`` pixels."""
    try:
        img = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except UnidentifiedImageError:
        accepted = f"one of {', '.join(formats)}" if formats else "an image"
        raise ImageDecodeError(f"cannot decode image: {len(data)} bytes are not {accepted}") from None
    except Image.DecompressionBombError as e:  # Pillow's own backstop, past twice its MAX_IMAGE_PIXELS
        raise ImageDecodeError(f"image exceeds the limit of {max_pixels or 'Pillow'} pixels: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"cannot read the image header ({len(data)} bytes): {e}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"{img.format} image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(
            f"{img.format} image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels"
        )
    return img


def _draft_size(w: int, h: int, spec: InputSpec) -> tuple[int, int]:
    """The smallest size the preprocessing can start from without losing detail it keeps."""
    if spec.resize is None:
        return spec.width, spec.height
    scale = spec.resize / min(w, h)
    return max(spec.width, math.ceil(w * scale)), max(spec.height, math.ceil(h * scale))


def _check_mode(img: Image.Image) -> None:
    mode = img.mode
    if (
        mode not in DECODED_MODES
        and not mode.startswith("I;16")
        and not (mode == "I" and img.format == "PNG")
    ):
        bits = " (32-bit)" if mode in ("I", "F") else ""
        raise ImageDecodeError(f"{img.format} image has {mode!r} pixels{bits}; send an 8 or 16-bit image")


def _check_budget(img: Image.Image, header: tuple[int, int], spec: InputSpec, budget: int) -> None:
    """``img`` (drafted to its reduced size where the format allows) within ``budget`` pixels."""
    (w, h), (dw, dh) = header, img.size
    if dw * dh > budget:
        reduced = f" (decoded at {dw}x{dh})" if (dw, dh) != (w, h) else ""
        raise ImageDecodeError(
            f"{img.format} image of {w}x{h} pixels{reduced} exceeds the limit of {budget} pixels decoded for "
            f"this model's {spec.width}x{spec.height} input ({DECODE_BUDGET_FACTOR} times its pixels, at "
            "most --max-image-pixels); send it resized closer to the model's input"
        )


def load_image(img: Image.Image, spec: InputSpec, budget: int | None = None) -> Image.Image:
    """Decode an opened image for ``spec``: its first frame (animated images), JPEGs at the largest DCT
    reduction (1/2, 1/4, 1/8) that still holds the size the preprocessing keeps, in ``spec.color``. With
    ``budget`` (:func:`decode_budget`), an image that would still decode to more pixels is refused before
    any pixel is decoded, as is a pixel mode that cannot be converted cheaply."""
    w, h = img.size
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        _check_mode(img)
        if img.format == "JPEG":
            img.draft(img.mode, _draft_size(*img.size, spec))
        if budget is not None:
            _check_budget(img, (w, h), spec, budget)
        img.load()
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode {img.format} image: {e}") from None
    return to_color(img, spec.color)


def to_color(img: Image.Image, color: str) -> Image.Image:
    """``img`` in ``color`` (RGB or L), never silently mis-scaled: 16-bit greyscale is scaled to 8 bits
    (Pillow's own conversion would clip it), palette images go through RGBA, alpha is dropped (as
    torchvision's ImageFolder does), CMYK is converted; float images are refused."""
    mode = img.mode
    if mode == color:
        return img
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((wide * 255 // 65535).astype(np.uint8), mode="L")
    elif mode in ("I", "F"):
        raise ImageDecodeError(f"{img.format} image has {mode!r} pixels (32-bit); send an 8 or 16-bit image")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img if img.mode == color else img.convert(color)


def decode_image(
    data: bytes, spec: InputSpec, formats: Sequence[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Encoded bytes -> a decoded image in ``spec.color``; raises :class:`ImageDecodeError` saying why.
    With ``max_pixels`` (the server), within :func:`decode_budget` too."""
    budget = None if max_pixels is None else decode_budget(spec, max_pixels)
    return load_image(open_image(data, formats, max_pixels), spec, budget)


def to_pixels(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image resized (and centre-cropped) to the model's input: uint8 [H, W, C]."""
    img = to_color(img, spec.color)
    if spec.resize is None:
        img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    else:
        w, h = img.size
        scale = spec.resize / min(w, h)
        new_w, new_h = max(spec.width, round(w * scale)), max(spec.height, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - spec.width) // 2, (new_h - spec.height) // 2
        img = img.crop((left, top, left + spec.width, top + spec.height))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize_pixels(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 [N, H, W, C] pixels -> the network's float32 [N, C, H, W] input: scaled to [0, 1], then
    normalized per channel with the spec's mean and std. The server's ``pixels`` input and every image
    path go through this one function."""
    # (p / 255 - mean) / std as one multiply-add per value, written straight into the NCHW result: 7-8x
    # faster than converting, scaling, normalizing and transposing in separate passes.
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (-mean / std).astype(np.float32)[:, None, None]
    n, h, w, c = pixels.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    np.multiply(pixels.transpose(0, 3, 1, 2), scale, out=out, casting="unsafe")
    out += offset
    return out


def preprocess_image(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """PIL image -> float32 array of shape ``spec.shape``, normalized."""
    return normalize_pixels(to_pixels(img, spec)[None], spec)[0]


def preprocess_bytes(
    data: bytes, spec: InputSpec, formats: Sequence[str] | None = None, max_pixels: int | None = None
) -> np.ndarray:
    return preprocess_image(decode_image(data, spec, formats, max_pixels), spec)
