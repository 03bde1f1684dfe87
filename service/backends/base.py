"""What every backend offers the batcher: ``run(batch) -> outputs`` on one device, and ``close()``.

A batch is FP32 [N, C, H, W] (already normalized) or UINT8 [N, H, W, C] pixels, which a backend normalizes
with the model's preprocessing (:func:`modelrepo.preprocess.normalize_pixels` here; a GPU backend may do it
on the device). A backend that can also decode encoded images on its device offers a decoder through
:meth:`Backend.image_decoder`; the data plane then hands it the ``image`` rows instead of decoding them
with Pillow."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from modelrepo.preprocess import InputSpec, normalize_pixels

# (encoded images, preprocessing, max pixels per image) -> UINT8 [N, H, W, C] at the model's input size,
# raising service.errors.InvalidInput naming the row at fault
ImageDecoderFn = Callable[[Sequence[bytes], InputSpec, int], np.ndarray]


class BatchTooLarge(ValueError):
    """A batch of more rows than the instance was built for (its config's ``max_batch_size``): the batcher
    never forms one; a caller that runs an instance directly may."""


class Backend(ABC):
    """One model instance: runs a FP32 NCHW batch and returns FP32 [batch, classes]."""

    kind: str  # served_version.backend_kind: onnxruntime, tensorrt, torch
    device: str  # "cpu" or "cuda:<index>"
    spec: InputSpec | None = None  # the model's preprocessing, set by the loader (for pixel batches)

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """FP32 [N, C, H, W] -> FP32 [N, classes]."""

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """UINT8 [N, H, W, C] -> FP32 [N, classes]."""
        return self.infer(normalize_pixels(pixels, self.spec))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """What the batcher calls, with either kind of batch."""
        return self.infer_pixels(batch) if batch.dtype == np.uint8 else self.infer(batch)

    def image_decoder(self) -> ImageDecoderFn | None:
        """A decoder of ``image`` rows on this backend's device, or None: Pillow on the CPU decodes them."""
        return None

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the instance's resources (sessions, engines, device memory)."""

    @property
    def label(self) -> str:
        """The metric label ``backend``: the runtime, and ``_cuda`` where it runs on a GPU."""
        if self.kind == "tensorrt" or not self.device.startswith("cuda"):
            return self.kind
        return f"{self.kind}_cuda"

    def describe(self) -> str:
        return f"{self.kind} on {self.device}"
