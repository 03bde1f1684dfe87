"""The plain request and response objects the data plane takes and returns (no protocol in them).

Each front end (gRPC, HTTP) translates its wire messages to and from these. Tensor payloads are kept as
the front end received them (raw bytes, or the typed values of typed contents / JSON ``data``) and are
checked and converted only by the data plane, against the model they are for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Parameters = dict[str, Any]  # bool, int, float or str values, as KServe v2 parameters carry
MAX_SHAPE_DIMS = 16  # dimensions of a tensor's shape a front end takes in (a CNN's inputs have 2 to 4)


class InputTensor:
    """One input of a request: its declared name, datatype and shape, and its payload: ``raw`` bytes
    (raw contents / binary data) and/or ``values`` (typed contents / JSON data). A front end sets what the
    client sent; both set is an error the data plane reports."""

    __slots__ = ("datatype", "name", "parameters", "raw", "shape", "values")

    def __init__(
        self,
        name: str,
        datatype: str,
        shape: list[int],
        raw: bytes | memoryview | None = None,
        values: Sequence | None = None,
        parameters: Parameters | None = None,
    ) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.raw = raw
        self.values = values
        self.parameters = parameters


class RequestedOutput:
    __slots__ = ("name", "parameters")

    def __init__(self, name: str, parameters: Parameters | None = None) -> None:
        self.name = name
        self.parameters = parameters


class InferRequest:
    """A KServe v2 inference request. ``deadline``: the transport's deadline as ``time.monotonic()``."""

    __slots__ = ("deadline", "id", "inputs", "model", "outputs", "parameters", "version")

    def __init__(
        self,
        model: str,
        version: str,
        inputs: list[InputTensor],
        *,
        id: str = "",
        outputs: list[RequestedOutput] | None = None,
        parameters: Parameters | None = None,
        deadline: float | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.inputs = inputs
        self.id = id
        self.outputs = outputs or []
        self.parameters = parameters
        self.deadline = deadline


class OutputTensor:
    """An output: a numeric array (FP32 logits) or BYTES elements (classification strings)."""

    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, name: str, datatype: str, shape: tuple[int, ...], data: np.ndarray | list[bytes]):
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.data = data


class InferResponse:
    __slots__ = ("id", "model", "outputs", "version")

    def __init__(self, model: str, version: str, id: str, outputs: list[OutputTensor]) -> None:
        self.model = model
        self.version = version
        self.id = id
        self.outputs = outputs


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for the batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]
