"""torch: a ``torch.export`` program (``model.pt2``) on CPU or CUDA. torch is imported only here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from service.backends.base import Backend
from service.errors import ModelLoadError


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, path: Path, data: bytes, *, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise ModelLoadError(f"{path} needs torch, which is not installed") from None
        self._torch = torch
        try:
            program = torch.export.load(io.BytesIO(data))
            module = program.module()
            module.to(device)
        except Exception as e:  # torch raises many types for corrupt or incompatible programs
            raise ModelLoadError(f"torch cannot load {path.name} onto {device}: {e}") from None
        floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        self.module = module
        self.device = device

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if not batch.flags.writeable:  # torch.from_numpy warns on read-only buffers (a request's raw bytes)
            batch = batch.copy()
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, self.dtype)
            y = self.module(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            return y.to(torch.float32).cpu().numpy()
