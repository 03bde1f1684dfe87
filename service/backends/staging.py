"""Host staging buffers of one backend instance, allocated once for the largest batch and reused.

On a GPU they are pinned (page-locked), so the copies to the device and back run asynchronously on the
instance's stream. A batch is copied into the input buffer of its kind (FP32 ``input`` rows or UINT8
``pixels`` rows); outputs land in the output buffer and leave as a copy, because the next batch reuses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT, PIXELS = "input", "pixels"


class HostStaging:
    """``load(kind, batch)`` -> a torch view of the staged rows; ``output(rows)`` -> the staged logits."""

    def __init__(
        self, torch: Any, max_rows: int, input_shape: tuple[int, int, int], num_classes: int, pin: bool
    ) -> None:
        c, h, w = input_shape
        shapes = {INPUT: ((c, h, w), torch.float32), PIXELS: ((h, w, c), torch.uint8)}
        self.max_rows = max_rows
        self.inputs = {
            kind: torch.empty((max_rows, *shape), dtype=dtype, pin_memory=pin)
            for kind, (shape, dtype) in shapes.items()
        }
        self.outputs = torch.empty((max_rows, num_classes), dtype=torch.float32, pin_memory=pin)
        self._arrays = {kind: t.numpy() for kind, t in self.inputs.items()}
        self._output_array = self.outputs.numpy()
        self.pinned = pin

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values()) + self._output_array.nbytes

    def load(self, kind: str, batch: np.ndarray) -> Any:
        """Copy ``batch`` (its rows must match the kind's row shape and dtype) into the buffer of ``kind``."""
        rows = len(batch)
        target = self._arrays[kind]
        if rows > self.max_rows or batch.shape[1:] != target.shape[1:] or batch.dtype != target.dtype:
            raise ValueError(
                f"cannot stage a {batch.dtype} batch of shape {list(batch.shape)} as {kind} rows "
                f"{list(target.shape[1:])} {target.dtype} (at most {self.max_rows})"
            )
        np.copyto(target[:rows], batch, casting="no")
        return self.inputs[kind][:rows]

    def output(self, rows: int) -> np.ndarray:
        """The first ``rows`` staged output rows, copied out (the buffer is the next batch's)."""
        return self._output_array[:rows].copy()
