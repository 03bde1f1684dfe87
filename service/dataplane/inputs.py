"""A request checked against the model it is for: which input, how many rows, top-k, deadline.

Only cheap checks run here (names, datatypes, shapes, byte counts, parameters); nothing is copied or
decoded. Every failure is an :class:`InvalidInput` naming the field and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelrepo.names import IMAGE_INPUT, PIXELS_INPUT
from modelrepo.reader import ModelIO
from protos.wire import BYTES, NUMPY_DTYPES, WireFormatError, bytes_offsets
from service.dataplane.types import InferRequest, InputTensor, Parameters
from service.errors import InvalidInput, clip

CLASSIFICATION = "classification"  # requested-output parameter: top-k as "score:index:label"
TIMEOUT_PARAMETER = "timeout"  # request parameter, microseconds (Triton's)
# integer parameters travel as int64 or uint64 (gRPC's int64_param, uint64_param) and must fit one
MIN_PARAMETER, MAX_PARAMETER = -(2**63), 2**64 - 1
FP32, UINT8 = NUMPY_DTYPES["FP32"], NUMPY_DTYPES["UINT8"]

TENSOR, PIXELS, IMAGES = "tensor", "pixels", "images"


@dataclass
class ModelInput:
    """The request's one input, checked: ``data`` is an FP32 [N, C, H, W] array (``tensor``), a UINT8
    [N, H, W, C] array (``pixels``), or N encoded images (``images``), not yet decoded."""

    kind: str
    rows: int
    data: np.ndarray | list[bytes]

    def held_bytes(self, row_bytes: int) -> int:
        """Memory the request holds until answered: its payload, and for images their decoded rows."""
        if self.kind == IMAGES:
            return sum(len(x) for x in self.data) + self.rows * row_bytes
        return self.data.nbytes


def expected_inputs(io: ModelIO) -> str:
    c, h, w = io.input_shape
    formats = "/".join(io.input_spec.image_formats)
    return (
        f"exactly one of {io.input_name!r} (FP32 [N, {c}, {h}, {w}]), {PIXELS_INPUT!r} "
        f"(UINT8 [N, {h}, {w}, {c}]) or {IMAGE_INPUT!r} (BYTES [N], one encoded {formats} image per row)"
    )


def _check_rows(what: str, rows: int, io: ModelIO) -> None:
    if rows < 1:
        raise InvalidInput(f"{what}: batch dimension must be >= 1, got {clip(rows)}")
    if rows > io.max_batch_size:
        raise InvalidInput(
            f"{what}: batch of {clip(rows)} rows exceeds the model's max_batch_size {io.max_batch_size}"
        )


def _payload(tensor: InputTensor, what: str):
    if tensor.raw is not None and tensor.values is not None:
        raise InvalidInput(f"{what}: carries both raw contents and typed contents; send one of them")
    return tensor.raw


def _numeric_tensor(
    tensor: InputTensor, io: ModelIO, kind: str, datatype: str, row_shape: tuple[int, ...], layout: str
) -> ModelInput:
    """An input of ``datatype`` and shape [N, *row_shape]: raw bytes viewed without copying, or typed
    values converted."""
    what = f"input {clip(tensor.name)}"
    shape = tensor.shape
    if tensor.datatype != datatype:
        raise InvalidInput(f"{what}: datatype must be {datatype}, got {clip(tensor.datatype)}")
    if len(shape) != 1 + len(row_shape) or tuple(shape[1:]) != row_shape:
        expected = ", ".join(map(str, row_shape))
        raise InvalidInput(f"{what}: shape must be [N, {expected}] ({layout}), got {clip(shape)}")
    rows = shape[0]
    _check_rows(what, rows, io)
    dtype = NUMPY_DTYPES[datatype]
    count = rows
    for d in row_shape:
        count *= d
    raw = _payload(tensor, what)
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"{what}: raw contents hold {len(raw)} bytes, expected {expected} "
                f"({count} {datatype} elements of shape {clip(shape)})"
            )
        return ModelInput(kind, rows, np.frombuffer(raw, dtype=dtype).reshape(shape))  # zero-copy, read-only
    values = tensor.values
    if values is None or len(values) != count:
        got = 0 if values is None else len(values)
        raise InvalidInput(f"{what}: holds {got} elements, expected {count} for shape {clip(shape)}")
    try:
        array = np.asarray(values, dtype=np.float64 if dtype == FP32 else np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"{what}: elements must be numbers: {clip(str(e))}") from None
    if dtype == UINT8 and array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"{what}: UINT8 elements must lie in 0..255")
    return ModelInput(kind, rows, array.astype(dtype).reshape(shape))


def _image_tensor(tensor: InputTensor, io: ModelIO) -> ModelInput:
    what = f"input {IMAGE_INPUT!r}"
    shape = tensor.shape
    if tensor.datatype != BYTES:
        raise InvalidInput(f"{what}: datatype must be BYTES (encoded JPEG/PNG), got {clip(tensor.datatype)}")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(
            f"{what}: shape must be [N] or [N, 1] (one encoded image per row), got {clip(shape)}"
        )
    rows = shape[0]
    _check_rows(what, rows, io)
    raw = _payload(tensor, what)
    if raw is not None:
        try:
            spans = bytes_offsets(raw, limit=rows)
        except WireFormatError as e:
            raise InvalidInput(f"{what}: {e}, expected {rows} for shape {clip(shape)}") from None
        count = len(spans)
    else:
        values = tensor.values or ()
        count = len(values)
    if count != rows:  # counted before a single element is copied (a bomb holds millions)
        raise InvalidInput(f"{what}: holds {count} BYTES elements, expected {rows} for shape {clip(shape)}")
    if raw is not None:
        view = memoryview(raw)
        items = [bytes(view[start:stop]) for start, stop in spans]
    else:
        items = list(values)
        if not all(isinstance(x, bytes) for x in items):
            raise InvalidInput(f"{what}: elements must be bytes (encoded images)")
    return ModelInput(IMAGES, rows, items)


def read_input(request: InferRequest, io: ModelIO) -> ModelInput:
    """The request's one input, checked against ``io``."""
    inputs = request.inputs
    if len(inputs) != 1:
        names = [t.name for t in inputs]
        got = "no inputs" if not names else f"inputs {clip(names)}"
        raise InvalidInput(f"request has {got}; model {clip(request.model)} expects {expected_inputs(io)}")
    tensor = inputs[0]
    if tensor.name == io.input_name:
        return _numeric_tensor(tensor, io, TENSOR, "FP32", io.input_shape, "NCHW, normalized")
    if tensor.name == PIXELS_INPUT:
        return _numeric_tensor(tensor, io, PIXELS, "UINT8", io.input_spec.pixels_shape, "NHWC")
    if tensor.name == IMAGE_INPUT:
        return _image_tensor(tensor, io)
    raise InvalidInput(
        f"unknown input {clip(tensor.name)}; model {clip(request.model)} expects {expected_inputs(io)}"
    )


def _integer(parameters: Parameters, key: str, what: str = "an integer") -> int | None:
    """The integer value of parameter ``key``; None when the request does not carry it."""
    if key not in parameters:
        return None
    value = parameters[key]
    if value is None:  # the parameter is there with none of its value fields set
        raise InvalidInput(f"parameter {key!r} must be {what}, got no value")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter {key!r} must be {what}, got {type(value).__name__} {clip(value)}")
    if not MIN_PARAMETER <= value <= MAX_PARAMETER:
        raise InvalidInput(f"parameter {key!r} must be {what} within int64 or uint64, got {clip(value)}")
    return value


def read_top_k(request: InferRequest, io: ModelIO) -> int:
    """Top-k requested through the classification extension (0: plain logits)."""
    outputs = request.outputs
    if not outputs:
        return 0
    if len(outputs) > 1:
        names = [o.name for o in outputs]
        raise InvalidInput(
            f"request asks for outputs {clip(names)}; the model has one output {io.output_name!r}"
        )
    output = outputs[0]
    if output.name != io.output_name:
        raise InvalidInput(f"unknown output {clip(output.name)}; the model has one output {io.output_name!r}")
    if not output.parameters or CLASSIFICATION not in output.parameters:
        return 0
    try:
        k = _integer(output.parameters, CLASSIFICATION)
    except InvalidInput as e:
        raise InvalidInput(f"output {io.output_name!r}: {e}") from None
    if k < 1:
        raise InvalidInput(f"output {io.output_name!r}: parameter {CLASSIFICATION!r} must be >= 1, got {k}")
    return min(k, io.num_classes)  # Triton clamps to the number of classes


def request_deadline(request: InferRequest, io: ModelIO, received: float) -> float | None:
    """time.monotonic() by which the request must have run: the transport's deadline, the ``timeout``
    parameter (microseconds) or the model's default queue timeout, whichever comes first."""
    timeout = io.default_timeout
    parameters = request.parameters
    if parameters and TIMEOUT_PARAMETER in parameters and io.allow_timeout_override:
        value = _integer(parameters, TIMEOUT_PARAMETER, "an integer number of microseconds")
        if value is not None and value < 0:
            raise InvalidInput(f"parameter {TIMEOUT_PARAMETER!r} must be >= 0 microseconds, got {value}")
        if value is not None:
            timeout = value / 1e6 if value else None
    deadline = request.deadline
    if timeout is None:
        return deadline
    if deadline is None:
        return received + timeout
    return min(received + timeout, deadline)
