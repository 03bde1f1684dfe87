"""What every backend offers the batcher: ``run(batch) -> outputs`` on one device, and ``close()``.

A batch is FP32 [N, C, H, W] (already normalized) or UINT8 [N, H, W, C] pixels, which a backend normalizes
with the model's preprocessing (:func:`modelrepo.preprocess.normalize_pixels` here; a GPU backend may do it
on the device)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from modelrepo.preprocess import InputSpec, normalize_pixels


class Backend(ABC):
    """One model instance: runs a FP32 NCHW batch and returns FP32 [batch, classes]."""

    kind: str  # metric label `backend`: onnxruntime, tensorrt, torch
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

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the instance's resources (sessions, engines, device memory)."""

    def describe(self) -> str:
        return f"{self.kind} on {self.device}"
