"""What a model expects (from the server's metadata) and what the load test sends it, protocol-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # From Triton's ModelConfig: 0 = the model does not batch; None = the server offers no model config.
    max_batch_size: int | None

    def describe_inputs(self) -> str:
        return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in self.inputs) or "none"


@dataclass(frozen=True)
class InputTensor:
    """One request's input before it is put on the wire."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes  # KServe v2 raw layout: little-endian values in row-major order; BYTES length-prefixed
    values: np.ndarray | None = None  # the same values, for JSON; None for BYTES
