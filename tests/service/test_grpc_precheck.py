"""A ModelInferRequest whose input shape has more dimensions than any model takes is refused from its
wire bytes, before grpc.aio parses it on the event loop (8 million dimensions: a 64 MB array)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from service.dataplane.types import MAX_SHAPE_DIMS
from service.protocol.grpc_precheck import shape_refusal
from tests.service.inprocess import linear_model, run, serving


def request(shape: list[int], name: str = "input") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="lenet5", id="x")
    message.parameters["timeout"].int64_param = 10_000_000  # other fields around the input, as clients send
    message.outputs.add(name="logits")
    message.inputs.add(name=name, datatype="FP32", shape=shape)
    message.raw_input_contents.append(np.zeros(1024, np.float32).tobytes())
    return message


def test_a_shape_is_judged_from_its_length_on_the_wire():
    assert shape_refusal(request([1, 1, 32, 32]).SerializeToString()) is None
    assert shape_refusal(request([2**62] * MAX_SHAPE_DIMS).SerializeToString()) is None  # 16 x 9 bytes
    refusal = shape_refusal(request([0] * 1_000_000, name="n" * 1000).SerializeToString())
    assert (
        refusal == f"input {'n' * 64!r}...(256 characters): shape has more than {MAX_SHAPE_DIMS} dimensions"
    )
    assert shape_refusal(b"\xff\xff not protobuf") is None  # left to the parser, which says why


def test_an_unpacked_shape_is_counted_field_by_field():
    tensor = pb.ModelInferRequest.InferInputTensor(name="input").SerializeToString()
    unpacked = tensor + b"".join(b"\x18\x01" for _ in range(MAX_SHAPE_DIMS + 1))  # field 3, varint 1
    message = b"\x2a" + bytes([len(unpacked)]) + unpacked  # field 5, length-delimited
    assert pb.ModelInferRequest.FromString(message).inputs[0].shape == [1] * (MAX_SHAPE_DIMS + 1)
    assert "shape has more than 16 dimensions" in shape_refusal(message)


def test_the_server_refuses_an_8m_dimension_shape_with_invalid_argument(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)

    async def main():
        async with serving(repo, grpc_port=True) as s:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.stub.ModelInfer(request([0] * 8_000_000), timeout=30)
            fine = await s.stub.ModelInfer(request([1, 1, 32, 32]), timeout=30)
            return info.value, fine

    error, fine = run(main())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'input': shape has more than 16 dimensions"
    assert fine.outputs[0].shape == [1, 10]
