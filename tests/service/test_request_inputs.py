"""A request checked against its model (service.dataplane.inputs): cheap checks, each naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from modelrepo.preprocess import InputSpec
from modelrepo.reader import ModelIO
from protos.wire import serialize_bytes
from service.dataplane.inputs import IMAGES, PIXELS, TENSOR, read_input, read_top_k, request_deadline
from service.dataplane.types import InferRequest, InputTensor, RequestedOutput
from service.errors import InvalidInput

SPEC = InputSpec(1, 4, 4, (0.5,), (0.5,), "L")
IO = ModelIO("input", "logits", (1, 4, 4), 3, 8, SPEC, ("a", "b", "c"), None, True)


def _request(*tensors: InputTensor, **kw) -> InferRequest:
    return InferRequest("m", "", list(tensors), **kw)


def test_fp32_raw_is_a_zero_copy_view():
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    got = read_input(_request(InputTensor("input", "FP32", [2, 1, 4, 4], raw=x.tobytes())), IO)
    assert got.kind == TENSOR and got.rows == 2
    np.testing.assert_array_equal(got.data, x)
    assert not got.data.flags.writeable


def test_pixels_are_uint8_nhwc_viewed_without_copying():
    x = np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1)
    got = read_input(_request(InputTensor("pixels", "UINT8", [2, 4, 4, 1], raw=x.tobytes())), IO)
    assert got.kind == PIXELS and got.rows == 2 and got.data.dtype == np.uint8
    np.testing.assert_array_equal(got.data, x)
    typed = read_input(_request(InputTensor("pixels", "UINT8", [1, 4, 4, 1], values=list(range(16)))), IO)
    np.testing.assert_array_equal(typed.data.ravel(), np.arange(16))


def test_fp32_typed_values():
    got = read_input(_request(InputTensor("input", "FP32", [1, 1, 4, 4], values=list(range(16)))), IO)
    np.testing.assert_array_equal(got.data.ravel(), np.arange(16))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (InputTensor("input", "FP16", [1, 1, 4, 4], raw=b""), "datatype must be FP32, got 'FP16'"),
        (
            InputTensor("input", "FP32", [1, 4, 4], raw=b""),
            r"shape must be \[N, 1, 4, 4\] \(NCHW, normalized\), got \[1, 4, 4\]",
        ),
        (InputTensor("input", "FP32", [0, 1, 4, 4], raw=b""), "batch dimension must be >= 1, got 0"),
        (InputTensor("input", "FP32", [-3, 1, 4, 4], raw=b""), "batch dimension must be >= 1, got -3"),
        (
            InputTensor("input", "FP32", [9, 1, 4, 4], raw=b""),
            "batch of 9 rows exceeds the model's max_batch_size 8",
        ),
        (
            InputTensor("input", "FP32", [1, 1, 4, 4], raw=b"\0" * 60),
            "raw contents hold 60 bytes, expected 64",
        ),
        (InputTensor("input", "FP32", [1, 1, 4, 4], values=[1.0] * 3), "holds 3 elements, expected 16"),
        (
            InputTensor("input", "FP32", [1, 1, 4, 4], raw=b"\0" * 64, values=[0.0] * 16),
            "both raw contents and typed contents",
        ),
        (InputTensor("pixels?", "FP32", [1], raw=b""), "unknown input 'pixels\\?'"),
        (InputTensor("pixels", "FP32", [1, 4, 4, 1], raw=b""), "datatype must be UINT8, got 'FP32'"),
        (InputTensor("pixels", "UINT8", [1, 1, 4, 4], raw=b""), r"shape must be \[N, 4, 4, 1\] \(NHWC\)"),
        (InputTensor("pixels", "UINT8", [1, 4, 4, 1], raw=b"\0" * 15), "hold 15 bytes, expected 16"),
        (
            InputTensor("pixels", "UINT8", [1, 4, 4, 1], values=[256] * 16),
            "UINT8 elements must lie in 0..255",
        ),
        (InputTensor("image", "FP32", [1], raw=b""), "datatype must be BYTES"),
        (InputTensor("image", "BYTES", [1, 2], raw=b""), r"shape must be \[N\] or \[N, 1\]"),
    ],
)
def test_every_mismatch_is_invalid_input_naming_the_field(tensor, message):
    with pytest.raises(InvalidInput, match=message):
        read_input(_request(tensor), IO)


def test_images_are_counted_against_the_shape_without_materialising_a_bomb():
    got = read_input(_request(InputTensor("image", "BYTES", [2], raw=serialize_bytes([b"p", b"q"]))), IO)
    assert got.kind == IMAGES and got.data == [b"p", b"q"]
    bomb = b"\x00\x00\x00\x00" * 4_000_000  # 4 million empty elements declared as one image
    with pytest.raises(InvalidInput, match=r"input 'image': holds more than 1 BYTES elements, expected 1"):
        read_input(_request(InputTensor("image", "BYTES", [1], raw=bomb)), IO)
    with pytest.raises(InvalidInput, match="holds 1 BYTES elements, expected 2"):
        read_input(_request(InputTensor("image", "BYTES", [2], raw=serialize_bytes([b"p"]))), IO)


def test_exactly_one_input():
    with pytest.raises(InvalidInput, match="request has no inputs"):
        read_input(_request(), IO)
    two = [InputTensor("input", "FP32", [1, 1, 4, 4]), InputTensor("image", "BYTES", [1])]
    with pytest.raises(InvalidInput, match=r"request has inputs \['input', 'image'\]"):
        read_input(_request(*two), IO)


def test_classification_parameter():
    assert read_top_k(_request(), IO) == 0
    ask = _request(outputs=[RequestedOutput("logits", {"classification": 5})])
    assert read_top_k(ask, IO) == 3  # clamped to the classes, as Triton does
    for bad, message in (("2", "must be an integer"), (0, "must be >= 1"), (True, "must be an integer")):
        with pytest.raises(InvalidInput, match=message):
            read_top_k(_request(outputs=[RequestedOutput("logits", {"classification": bad})]), IO)
    with pytest.raises(InvalidInput, match="unknown output 'probs'"):
        read_top_k(_request(outputs=[RequestedOutput("probs")]), IO)


def test_deadline_is_the_earliest_of_transport_and_timeout_parameter():
    assert request_deadline(_request(), IO, 100.0) is None
    assert request_deadline(_request(deadline=105.0), IO, 100.0) == 105.0
    assert request_deadline(_request(parameters={"timeout": 2_000_000}), IO, 100.0) == 102.0
    assert request_deadline(_request(parameters={"timeout": 9_000_000}, deadline=105.0), IO, 100.0) == 105.0
    with pytest.raises(InvalidInput, match="'timeout' must be >= 0"):
        request_deadline(_request(parameters={"timeout": -1}), IO, 100.0)
