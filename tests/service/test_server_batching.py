"""Dynamic batching, queue bounds and deadlines, observed end to end through ModelStatistics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from harness.waiting import wait_for
from protos import grpc_service_pb2 as pb
from protos.wire import add_input


def stats(client, model):
    return client.statistics(model).model_stats[0]


def batch_counts(s) -> dict[int, int]:
    return {b.batch_size: b.compute_infer.count for b in s.batch_stats}


def new_batches(before, after) -> dict[int, int]:
    old, new = batch_counts(before), batch_counts(after)
    return {size: n - old.get(size, 0) for size, n in new.items() if n - old.get(size, 0)}


def concurrently(fn, args_list):
    with ThreadPoolExecutor(len(args_list)) as pool:
        return [f.result() for f in [pool.submit(fn, *args) for args in args_list]]


def x(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).uniform(-1, 1, (rows, 1, 32, 32)).astype(np.float32)


def test_concurrent_requests_are_batched(client):
    before = stats(client, "lenet5_batched")
    outs = concurrently(lambda n: client.infer("lenet5_batched", x(n)), [(1,)] * 6)
    after = stats(client, "lenet5_batched")
    assert [o.shape for o in outs] == [(1, 10)] * 6
    batches = new_batches(before, after)
    assert sum(size * n for size, n in batches.items()) == 6
    assert max(batches) > 1, f"expected a batch of several requests, got {batches}"
    assert after.execution_count - before.execution_count < 6
    assert after.inference_count - before.inference_count == 6


def test_requests_of_n_rows_count_as_n(client):
    before = stats(client, "lenet5_batched")
    concurrently(lambda n: client.infer("lenet5_batched", x(n)), [(3,), (3,), (2,)])
    after = stats(client, "lenet5_batched")
    assert after.inference_count - before.inference_count == 8
    assert sum(size * n for size, n in new_batches(before, after).items()) == 8
    assert max(new_batches(before, after)) >= 5  # never split: 3+3, 3+2 or all 8


def test_without_dynamic_batching_each_request_is_its_own_batch(client):
    before = stats(client, "lenet5_nobatch")
    concurrently(lambda n: client.infer("lenet5_nobatch", x(n)), [(1,)] * 6)
    after = stats(client, "lenet5_nobatch")
    assert after.execution_count - before.execution_count == 6
    assert new_batches(before, after) == {1: 6}


def test_full_queue_answers_resource_exhausted(client, server):
    with ThreadPoolExecutor(2) as pool:
        queued = [pool.submit(client.infer, "lenet5_tiny_queue", x(1)) for _ in range(2)]
        depth = lambda: server.metric("cnnserve_queue_depth", model="lenet5_tiny_queue")  # noqa: E731
        wait_for(lambda: depth() == 2, 10, "both requests in the queue (1 s delay, max_queue_size 2)")
        with pytest.raises(Exception) as info:
            client.infer("lenet5_tiny_queue", x(1))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            "model lenet5_tiny_queue/1 queue is full (2 requests waiting); retry later" in info.value.details
        )
        assert [f.result().shape for f in queued] == [(1, 10), (1, 10)]


def test_timeout_parameter_expires_in_the_queue_without_computing(stub, client):
    before = stats(client, "lenet5_batched")
    request = pb.ModelInferRequest(model_name="lenet5_batched")
    add_input(request, "input", x(1))
    request.parameters["timeout"].int64_param = 50_000  # microseconds, Triton's unit
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (
        "waited" in info.value.details() and "passed its deadline before it could run" in info.value.details()
    )
    after = stats(client, "lenet5_batched")
    assert after.execution_count == before.execution_count  # nothing was computed
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


def test_grpc_deadline_is_honoured(stub, client, server):
    before = stats(client, "lenet5_batched")
    ended = lambda: server.metric("cnnserve_requests_total", model="lenet5_batched", protocol="grpc")  # noqa: E731
    ended_before = ended()
    request = pb.ModelInferRequest(model_name="lenet5_batched")
    add_input(request, "input", x(1))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=0.1)  # the 300 ms batching delay outlasts it
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: ended() == ended_before + 1, 10, "the server to end the request")
    assert stats(client, "lenet5_batched").execution_count == before.execution_count
