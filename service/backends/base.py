"""What every backend offers the batcher: ``infer(batch) -> outputs`` on one device, and ``close()``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """One model instance: runs a FP32 NCHW batch and returns FP32 [batch, classes]."""

    kind: str  # metric label `backend`: onnxruntime, tensorrt, torch
    device: str  # "cpu" or "cuda:<index>"

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the instance's resources (sessions, engines, device memory)."""

    def describe(self) -> str:
        return f"{self.kind} on {self.device}"
