"""Tensors <-> KServe v2 protobuf messages (raw contents and typed contents), shared by server and client.

Raw contents are the tensor's elements flattened row-major, little-endian; BYTES elements are each
prefixed by their length as a 4-byte little-endian unsigned integer (Triton's serialization).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

from protos import grpc_service_pb2 as pb
from service.errors import InvalidInput

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = {dt: name for name, dt in NUMPY_DTYPES.items()}
# InferTensorContents field holding each datatype (FP16 has none: raw contents only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def numeric_array(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor,
    raw: bytes | None,
    what: str,
) -> np.ndarray:
    """The tensor's elements as an array of its shape (zero-copy and read-only for raw contents)."""
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"{what}: datatype {tensor.datatype!r} is not a numeric KServe v2 datatype")
    shape = tuple(tensor.shape)
    if shape and min(shape) < 0:
        raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
    count = element_count(shape)
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"{what}: raw contents hold {len(raw)} bytes, expected {expected} "
                f"({count} {tensor.datatype} elements of shape {list(shape)})"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"{what}: datatype {tensor.datatype} can only be sent as raw contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: contents.{field} holds {len(values)} elements, expected {count} for shape {list(shape)}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    """Length-prefixed concatenation of BYTES elements."""
    parts = []
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, what: str) -> list[bytes]:
    """Split length-prefixed BYTES raw contents into its elements."""
    items, offset, end = [], 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"{what}: truncated BYTES length prefix at byte {offset} of {end}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"{what}: BYTES element {len(items)} claims {length} bytes but only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def bytes_elements(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor,
    raw: bytes | None,
    what: str,
) -> list[bytes]:
    """The elements of a BYTES tensor, checked against its shape."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"{what}: datatype must be BYTES, got {tensor.datatype!r}")
    items = deserialize_bytes(raw, what) if raw is not None else list(tensor.contents.bytes_contents)
    count = element_count(tensor.shape)
    if len(items) != count:
        raise InvalidInput(
            f"{what}: holds {len(items)} BYTES elements, expected {count} for shape {list(tensor.shape)}"
        )
    return items


def add_input(request: pb.ModelInferRequest, name: str, array: np.ndarray | Sequence[bytes]) -> None:
    """Append an input tensor in raw contents: a numeric array, or a sequence of bytes (BYTES [n])."""
    tensor = request.inputs.add(name=name)
    if isinstance(array, np.ndarray) and array.dtype != np.object_:
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        datatype = DATATYPES.get(np.dtype(dtype))
        if datatype is None:
            raise ValueError(f"no KServe v2 datatype for numpy dtype {array.dtype}")
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
    else:
        items = [bytes(x) for x in array]
        tensor.datatype = "BYTES"
        tensor.shape.append(len(items))
        request.raw_input_contents.append(serialize_bytes(items))


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """An output of a response as an array (BYTES outputs as an object array of bytes)."""
    for i, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        raw = response.raw_output_contents[i] if i < len(response.raw_output_contents) else None
        what = f"output {name!r}"
        if tensor.datatype == "BYTES":
            items = bytes_elements(tensor, raw, what)
            out = np.empty(len(items), dtype=np.object_)
            out[:] = items
            return out.reshape(tuple(tensor.shape))
        return numeric_array(tensor, raw, what)
    names = ", ".join(repr(t.name) for t in response.outputs)
    raise KeyError(f"response has no output {name!r} (it has {names})")
