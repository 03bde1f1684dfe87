"""ModelStreamInfer in-process: its restriction is checked as for every other RPC (before a message is read),
and a bad message is answered in the stream while the stream goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos.wire import add_input
from tests.service.inprocess import linear_model, run, serving


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    return repo


def request(value: float = 0.1) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="lenet5")
    add_input(message, "input", np.full((1, 1, 32, 32), value, np.float32))
    return message


def test_the_stream_is_restricted_like_every_other_inference_rpc(repo):
    async def main():
        async with serving(repo, "--restricted-protocol", "inference:x-key=v", grpc_port=True) as s:
            refused = s.stub.ModelStreamInfer(iter([request()]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [m async for m in refused]
            allowed = s.stub.ModelStreamInfer(iter([request(), request(5.0)]), metadata=(("x-key", "v"),))
            return info.value, [m async for m in allowed]

    refused, answers = run(main())
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and "x-key" in refused.details()  # as Triton
    assert not answers[0].error_message and answers[0].infer_response.model_name == "lenet5"
    assert answers[1].error_message  # inputs >= 1 fail in this model: answered in the stream
    assert answers[1].infer_response.model_name == "lenet5"
