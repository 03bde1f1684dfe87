"""One budget of request bytes in flight (--max-inflight-bytes): HTTP bodies reserve their Content-Length
before they are read, chunked bodies as their chunks arrive, and release it when the request ends; a body
that would pass the budget is refused unread (429, Retry-After), a stalled one dropped (408) with its
reservation released. In-process (ASGITransport), bodies from generators that record what was pulled."""

from __future__ import annotations

import asyncio

import pytest

from service.dataplane.budget import BudgetFull, ByteBudget
from tests.service.inprocess import linear_model, run, serving

INFER = "/v2/models/lenet5/infer"
BUDGET = 100_000
WAIT_S = 10  # bound on waiting for a condition


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    return repo


def test_a_byte_budget_refuses_past_its_limit_and_frees_what_is_released():
    budget = ByteBudget(100)
    assert budget.reserve(60) == 60
    with pytest.raises(BudgetFull, match="past the server's limit of 100 bytes"):
        budget.reserve(41)
    budget.release(60)
    assert budget.reserve(100) == 100 and budget.held == 100


class Body:
    """A request body of ``chunks`` chunks of ``size`` bytes; with ``stall_after``, it stops after that
    many chunks until ``resume`` is set."""

    def __init__(self, chunks: int, size: int = 10_000, stall_after: int | None = None) -> None:
        self.chunks, self.size, self.stall_after = chunks, size, stall_after
        self.pulled = 0
        self.stalled = asyncio.Event()
        self.resume = asyncio.Event()

    async def __aiter__(self):
        for i in range(self.chunks):
            if i == self.stall_after:
                self.stalled.set()
                await self.resume.wait()
            self.pulled += 1
            yield b" " * self.size

    @property
    def length(self) -> dict:
        return {"Content-Length": str(self.chunks * self.size)}


def test_a_body_past_the_budget_is_refused_before_it_is_read(repo):
    async def main():
        async with serving(repo, "--max-inflight-bytes", str(BUDGET)) as s:
            body = Body(20)
            answer = await s.http.post(INFER, content=body, headers=body.length)
            return answer, body.pulled, s.server.plane.budget.held

    answer, pulled, held = run(main())
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert answer.headers["connection"] == "close"
    assert (
        "200000 bytes would take" in answer.json()["error"]
        and "--max-inflight-bytes" in answer.json()["error"]
    )
    assert (pulled, held) == (0, 0)


def test_bodies_in_flight_share_the_budget_until_their_requests_end(repo):
    async def main():
        async with serving(repo, "--max-inflight-bytes", str(BUDGET)) as s:
            first = Body(6, stall_after=1)
            sending = asyncio.create_task(s.http.post(INFER, content=first, headers=first.length))
            await asyncio.wait_for(first.stalled.wait(), WAIT_S)
            held_while_stalled = s.server.plane.budget.held
            second = Body(6)
            refused = await s.http.post(INFER, content=second, headers=second.length)
            first.resume.set()
            done = await asyncio.wait_for(sending, WAIT_S)
            third = Body(6)
            after = await s.http.post(INFER, content=third, headers=third.length)
            return held_while_stalled, refused, second.pulled, done, after, s.server.plane.budget.held

    held_while_stalled, refused, pulled, done, after, held = run(main())
    assert held_while_stalled == 60_000
    assert refused.status_code == 429 and pulled == 0
    assert done.status_code == 400 and after.status_code == 400  # read, then refused as malformed JSON
    assert "malformed JSON" in after.json()["error"]
    assert held == 0


def test_a_chunked_body_counts_as_its_chunks_arrive(repo):
    async def main():
        async with serving(repo, "--max-inflight-bytes", str(BUDGET)) as s:
            body = Body(50, size=30_000)  # no Content-Length: sent chunked
            answer = await s.http.post(INFER, content=body)
            return answer, body.pulled, s.server.plane.budget.held

    answer, pulled, held = run(main())
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert pulled == 4 and held == 0  # the fourth chunk would pass 100000 bytes: reading stops there


def test_a_stalled_body_is_dropped_and_its_reservation_released(repo):
    async def main():
        async with serving(repo, "--body-timeout", "0.2") as s:
            body = Body(6, stall_after=2)  # never resumed
            answer = await s.http.post(INFER, content=body, headers=body.length)
            return answer, s.server.plane.budget.held

    answer, held = run(main())
    assert answer.status_code == 408 and answer.headers["connection"] == "close"
    assert (
        "stalled or crawled: 20000 bytes in 0 s (each chunk within 0.2 s, --body-timeout"
        in answer.json()["error"]
    )
    assert held == 0


class Crawling(Body):
    """A body that sends a small chunk every ``period`` seconds: each chunk is in time, the whole is not."""

    def __init__(self, chunks: int, period: float) -> None:
        super().__init__(chunks, size=100)
        self.period = period

    async def __aiter__(self):
        for _ in range(self.chunks):
            await asyncio.sleep(self.period)
            self.pulled += 1
            yield b" " * self.size


def test_a_crawling_body_is_dropped_once_past_its_minimum_rate(repo):
    """A chunk every 0.1 s never stalls past --body-timeout 0.3 s, but 1 KB/s is far under the minimum
    rate: dropped 408 once the first --body-timeout is spent, not after all 200 chunks (20 s)."""

    async def main():
        async with serving(repo, "--body-timeout", "0.3") as s:
            body = Crawling(200, period=0.1)
            answer = await s.http.post(INFER, content=body, headers=body.length)
            return answer, body.pulled, s.server.plane.budget.held

    answer, pulled, held = run(main())
    assert answer.status_code == 408 and "stalled or crawled" in answer.json()["error"], answer.text
    assert pulled < 20 and held == 0


def test_grpc_bounds_the_streams_a_connection_may_buffer():
    from service.protocol.grpc_server import MAX_CONCURRENT_STREAMS, server_options

    assert dict(server_options(1 << 20))["grpc.max_concurrent_streams"] == MAX_CONCURRENT_STREAMS


def test_a_binary_tensor_counts_once_though_it_is_both_body_and_tensor(repo):
    """4 KiB of FP32 rows in a body of about 4.2 KB: counted twice, it would not fit 6000 bytes."""
    import json

    import numpy as np

    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32]}
    tensor["parameters"] = {"binary_data_size": 4096}
    head = json.dumps({"inputs": [tensor]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))}

    async def main():
        async with serving(repo, "--max-inflight-bytes", "6000") as s:
            body = head + np.zeros(1024, np.float32).tobytes()
            answer = await s.http.post(INFER, content=body, headers=headers)
            return answer, s.server.plane.budget.held

    answer, held = run(main())
    assert answer.status_code == 200, answer.text
    assert held == 0


def test_a_large_declared_body_arrives_whole_in_its_buffer(tmp_path):
    """A body from MAPPED_BODY_BYTES on is read into one mapping of its Content-Length, chunk by chunk;
    the tensors are views of it, and answer as the same rows sent one request each."""
    import json

    import numpy as np

    from service.protocol.http_server import MAPPED_BODY_BYTES

    repo = tmp_path / "repo"
    rows = 256
    linear_model(repo, max_batch_size=rows)
    x = np.random.default_rng(0).uniform(0, 0.5, (rows, 1, 32, 32)).astype(np.float32)

    def request(batch: np.ndarray) -> tuple[bytes, dict]:
        tensor = {"name": "input", "datatype": "FP32", "shape": list(batch.shape)}
        tensor["parameters"] = {"binary_data_size": batch.nbytes}
        head = json.dumps({"inputs": [tensor]}).encode()
        return head + batch.tobytes(), {"Inference-Header-Content-Length": str(len(head))}

    async def chunks(data: bytes, size: int = 65536):
        for start in range(0, len(data), size):
            yield data[start : start + size]

    async def main():
        async with serving(repo) as s:
            body, headers = request(x)
            assert len(body) >= MAPPED_BODY_BYTES
            headers["Content-Length"] = str(len(body))
            whole = await s.http.post(INFER, content=chunks(body), headers=headers)
            singles = []
            for i in (0, 100, 255):
                one, one_headers = request(x[i : i + 1])
                singles.append(await s.http.post(INFER, content=one, headers=one_headers))
            return whole, singles, s.server.plane.budget.held

    whole, singles, held = run(main())
    assert whole.status_code == 200, whole.text
    outputs = np.array(whole.json()["outputs"][0]["data"], np.float32).reshape(rows, -1)
    for i, single in zip((0, 100, 255), singles, strict=True):
        np.testing.assert_allclose(outputs[i], single.json()["outputs"][0]["data"], rtol=1e-5, atol=1e-6)
    assert held == 0
