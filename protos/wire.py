"""Facts of the KServe v2 wire format that server, client and load tester share, and numpy arrays to and
from gRPC tensors for clients.

Datatype names and their NumPy dtypes, the typed-contents field of each datatype, the serialization of
BYTES elements (each prefixed by its length as a 4-byte little-endian unsigned integer, Triton's), and the
default message size limit. Raw contents are a tensor's elements flattened row-major, little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default limit, and the client's

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
DATATYPES = {dt: name for name, dt in NUMPY_DTYPES.items()}  # numpy dtype -> KServe v2 datatype
BYTES = "BYTES"
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
    BYTES: "bytes_contents",
}
_LENGTH = struct.Struct("<I")


class WireFormatError(ValueError):
    """Bytes that do not follow the KServe v2 serialization."""


def element_count(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    """Length-prefixed concatenation of BYTES elements."""
    parts = []
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def bytes_offsets(raw: bytes | memoryview, limit: int) -> list[tuple[int, int]]:
    """(start, end) of each length-prefixed BYTES element of ``raw``; raises :class:`WireFormatError` past
    ``limit`` elements, so that a hostile payload of millions of empty elements is refused after
    ``limit + 1`` steps instead of being split."""
    spans: list[tuple[int, int]] = []
    offset, end = 0, len(raw)
    while offset < end:
        if len(spans) == limit:
            raise WireFormatError(f"holds more than {limit} BYTES elements")
        if offset + 4 > end:
            raise WireFormatError(f"truncated BYTES length prefix at byte {offset} of {end}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise WireFormatError(
                f"BYTES element {len(spans)} claims {length} bytes but only {end - offset} remain"
            )
        spans.append((offset, offset + length))
        offset += length
    return spans


def deserialize_bytes(raw: bytes | memoryview, limit: int | None = None) -> list[bytes]:
    """The elements of length-prefixed BYTES raw contents (at most ``limit`` of them)."""
    view = memoryview(raw)
    spans = bytes_offsets(view, len(view) // 4 + 1 if limit is None else limit)
    return [bytes(view[start:stop]) for start, stop in spans]


# ------------------------------------------------------------------------ numpy <-> gRPC tensors (clients)


def add_input(request, name: str, array: np.ndarray | Sequence[bytes]) -> None:
    """Append an input tensor to a ``ModelInferRequest`` in raw contents: a numeric array, or a sequence of
    bytes (BYTES [n])."""
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
        tensor.datatype = BYTES
        tensor.shape.append(len(items))
        request.raw_input_contents.append(serialize_bytes(items))


def output_array(response, name: str) -> np.ndarray:
    """An output of a ``ModelInferResponse`` as an array (BYTES outputs as an object array of bytes);
    raises :class:`WireFormatError` where its contents do not match its shape and datatype."""
    for i, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        shape = tuple(tensor.shape)
        count = element_count(shape)
        raw = response.raw_output_contents[i] if i < len(response.raw_output_contents) else None
        if tensor.datatype == BYTES:
            items = deserialize_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
            if len(items) != count:
                raise WireFormatError(
                    f"output {name!r} holds {len(items)} BYTES elements for shape {list(shape)}"
                )
            out = np.empty(len(items), dtype=np.object_)
            out[:] = items
            return out.reshape(shape)
        dtype = NUMPY_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise WireFormatError(f"output {name!r} has unknown datatype {tensor.datatype!r}")
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise WireFormatError(
                    f"output {name!r} holds {len(raw)} bytes, expected {count * dtype.itemsize} for "
                    f"{tensor.datatype} {list(shape)}"
                )
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        values = getattr(tensor.contents, CONTENTS_FIELDS.get(tensor.datatype, "fp32_contents"))
        if len(values) != count:
            raise WireFormatError(f"output {name!r} holds {len(values)} elements for shape {list(shape)}")
        return np.asarray(values, dtype=dtype).reshape(shape)
    names = ", ".join(repr(t.name) for t in response.outputs)
    raise KeyError(f"response has no output {name!r} (it has {names})")
