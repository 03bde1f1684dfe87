"""numpy arrays <-> KServe v2 gRPC tensors (the clients' side) and BYTES serialization."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos.wire import (
    WireFormatError,
    add_input,
    bytes_offsets,
    deserialize_bytes,
    output_array,
    serialize_bytes,
)


def _response_from(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """The request's tensors as a response's outputs (what a server echoing them would send)."""
    response = pb.ModelInferResponse()
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(raw)
    return response


@pytest.mark.parametrize(
    "dtype", ["float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"]
)
def test_every_numeric_datatype_round_trips(dtype):
    x = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    request = pb.ModelInferRequest()
    add_input(request, "t", x)
    np.testing.assert_array_equal(output_array(_response_from(request), "t"), x)


def test_big_endian_arrays_travel_little_endian():
    x = np.arange(4, dtype=">f4")
    request = pb.ModelInferRequest()
    add_input(request, "t", x)
    assert request.raw_input_contents[0] == np.arange(4, dtype="<f4").tobytes()


def test_bytes_serialization_is_length_prefixed_little_endian():
    raw = serialize_bytes([b"ab", b"", b"xyz"])
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz"
    assert deserialize_bytes(raw) == [b"ab", b"", b"xyz"]
    with pytest.raises(WireFormatError, match="truncated BYTES length prefix"):
        deserialize_bytes(raw + b"\x01\x00")
    with pytest.raises(WireFormatError, match="element 0 claims 5 bytes but only 2 remain"):
        deserialize_bytes(b"\x05\x00\x00\x00ab")


def test_bytes_offsets_stop_past_the_limit_without_walking_the_rest():
    bomb = b"\x00\x00\x00\x00" * 1_000_000  # a million empty elements
    with pytest.raises(WireFormatError, match="more than 2 BYTES elements"):
        bytes_offsets(bomb, limit=2)
    assert bytes_offsets(serialize_bytes([b"a", b"bc"]), limit=2) == [(4, 5), (9, 11)]


def test_output_array_reads_raw_typed_and_bytes_and_checks_sizes():
    response = pb.ModelInferResponse()
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(np.array([[1.5, -2]], dtype=np.float32).tobytes())
    np.testing.assert_array_equal(output_array(response, "logits"), [[1.5, -2]])
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="cls", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend([b"a", b"b"])
    assert output_array(typed, "cls").tolist() == [[b"a", b"b"]]
    with pytest.raises(KeyError, match="no output 'nope'"):
        output_array(response, "nope")
    short = pb.ModelInferResponse()
    short.outputs.add(name="logits", datatype="FP32", shape=[1, 2])
    short.raw_output_contents.append(b"\0" * 4)
    with pytest.raises(WireFormatError, match="holds 4 bytes, expected 8"):
        output_array(short, "logits")
