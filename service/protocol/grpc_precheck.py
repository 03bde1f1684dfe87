"""What a ModelInferRequest's wire bytes say before they are parsed: grpc.aio parses a request on the
event loop while holding the GIL, and an input shape of 8 million dimensions (8 MB on the wire) costs
a 64 MB array and a stall of hundreds of milliseconds before any handler could refuse it. Its fields are
walked without parsing them (a varint tag and a length each), and a shape of more than
:data:`MAX_SHAPE_DIMS` dimensions is refused from its length.

The walk is bounded: at most :data:`MAX_FIELDS` fields of the request and of each input are looked at;
a message with more is parsed unchecked (the parse is then bounded by --max-message-bytes only)."""

from __future__ import annotations

from service.dataplane.types import MAX_SHAPE_DIMS
from service.errors import clip

MAX_FIELDS = 1024
INPUTS, NAME, SHAPE = 5, 1, 3  # ModelInferRequest.inputs; InferInputTensor.name and .shape
VARINT, FIXED64, DELIMITED, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10  # an int64 as a varint


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes, start: int, end: int):
    """(field number, wire type, value start, value end) of the fields in ``data[start:end]``, at most
    :data:`MAX_FIELDS` of them; ValueError where the bytes are not protobuf."""
    at, count = start, 0
    while at < end and count < MAX_FIELDS:
        tag, at = _varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == VARINT:
            _, after = _varint(data, at)
        elif kind == DELIMITED:
            length, at = _varint(data, at)
            after = at + length
        elif kind in (FIXED64, FIXED32):
            after = at + (8 if kind == FIXED64 else 4)
        else:
            raise ValueError(f"wire type {kind}")
        if after > end:
            raise ValueError("field past the end")
        yield number, kind, at, after
        at, count = after, count + 1


def shape_refusal(data: bytes) -> str | None:
    """Why the ModelInferRequest in ``data`` is refused before it is parsed (None: parse it)."""
    try:
        for number, kind, start, end in _fields(data, 0, len(data)):
            if number == INPUTS and kind == DELIMITED:
                refusal = _input_refusal(data, start, end)
                if refusal is not None:
                    return refusal
    except ValueError:
        return None  # not protobuf: the parser says why
    return None


def _input_refusal(data: bytes, start: int, end: int) -> str | None:
    name, dims = b"", 0
    for number, kind, value_start, value_end in _fields(data, start, end):
        if number == NAME and kind == DELIMITED:
            name = data[value_start : min(value_end, value_start + 256)]
        elif (
            number == SHAPE
            and kind == DELIMITED
            and value_end - value_start > MAX_SHAPE_DIMS * MAX_VARINT_BYTES
        ):
            dims = value_end - value_start  # packed: at least one byte per dimension
        elif number == SHAPE and kind == VARINT:
            dims += 1
        if dims > MAX_SHAPE_DIMS:
            shown = clip(name.decode("utf-8", "replace"))
            return f"input {shown}: shape has more than {MAX_SHAPE_DIMS} dimensions"
    return None
