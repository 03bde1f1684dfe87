"""Tensors <-> KServe v2 messages: raw and typed contents, BYTES serialization, size checks."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from service.codec import (
    add_input,
    bytes_elements,
    deserialize_bytes,
    numeric_array,
    output_array,
    serialize_bytes,
)
from service.errors import InvalidInput


def tensor(datatype: str, shape) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=shape)


def test_raw_round_trip_is_zero_copy():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    request = pb.ModelInferRequest()
    add_input(request, "input", x)
    assert request.inputs[0].datatype == "FP32" and list(request.inputs[0].shape) == [2, 3, 4]
    out = numeric_array(request.inputs[0], request.raw_input_contents[0], "input")
    np.testing.assert_array_equal(out, x)
    assert not out.flags.writeable  # a view on the request's bytes


@pytest.mark.parametrize("dtype", ["float16", "float64", "int8", "uint8", "int32", "int64", "bool"])
def test_datatypes(dtype):
    x = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    request = pb.ModelInferRequest()
    add_input(request, "t", x)
    np.testing.assert_array_equal(numeric_array(request.inputs[0], request.raw_input_contents[0], "t"), x)


def test_typed_contents():
    t = tensor("FP32", [2, 2])
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    np.testing.assert_array_equal(numeric_array(t, None, "input"), [[1, 2], [3, 4]])
    t.contents.fp32_contents.append(5)
    with pytest.raises(InvalidInput, match=r"contents.fp32_contents holds 5 elements, expected 4"):
        numeric_array(t, None, "input")
    with pytest.raises(InvalidInput, match="FP16 can only be sent as raw contents"):
        numeric_array(tensor("FP16", [1]), None, "input")


def test_byte_length_and_shape_checks():
    with pytest.raises(InvalidInput, match=r"input 'x': raw contents hold 12 bytes, expected 16 \(4 FP32"):
        numeric_array(tensor("FP32", [2, 2]), b"\0" * 12, "input 'x'")
    with pytest.raises(InvalidInput, match="negative dimension"):
        numeric_array(tensor("FP32", [-1, 2]), b"", "x")
    with pytest.raises(InvalidInput, match="'COMPLEX' is not a numeric"):
        numeric_array(tensor("COMPLEX", [1]), b"", "x")


def test_bytes_serialization_is_length_prefixed_little_endian():
    raw = serialize_bytes([b"ab", b"", b"xyz"])
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz"
    assert deserialize_bytes(raw, "x") == [b"ab", b"", b"xyz"]
    with pytest.raises(InvalidInput, match="truncated BYTES length prefix"):
        deserialize_bytes(raw + b"\x01\x00", "x")
    with pytest.raises(InvalidInput, match="element 0 claims 5 bytes but only 2 remain"):
        deserialize_bytes(b"\x05\x00\x00\x00ab", "x")


def test_bytes_elements_checks_count_and_datatype():
    t = tensor("BYTES", [2])
    assert bytes_elements(t, serialize_bytes([b"a", b"b"]), "image") == [b"a", b"b"]
    with pytest.raises(InvalidInput, match="holds 3 BYTES elements, expected 2"):
        bytes_elements(t, serialize_bytes([b"a", b"b", b"c"]), "image")
    t.contents.bytes_contents.extend([b"p", b"q"])
    assert bytes_elements(t, None, "image") == [b"p", b"q"]
    with pytest.raises(InvalidInput, match="datatype must be BYTES, got 'FP32'"):
        bytes_elements(tensor("FP32", [2]), b"", "image")


def test_output_array_reads_raw_typed_and_bytes():
    response = pb.ModelInferResponse()
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(np.array([[1.5, -2]], dtype=np.float32).tobytes())
    np.testing.assert_array_equal(output_array(response, "logits"), [[1.5, -2]])
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="cls", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend([b"a", b"b"])
    assert output_array(typed, "cls").tolist() == [[b"a", b"b"]]
    with pytest.raises(KeyError, match="no output 'nope'"):
        output_array(response, "nope")
