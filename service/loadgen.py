"""A closed-loop KServe v2 load generator: ``concurrency`` callers, each sending its next request when the
previous one is answered. Requests are serialized once, up front, so the client spends its time on the
protocol, not on protobuf building. Run it in its own process (:func:`run_in_subprocess`) so that it does
not share a GIL with the server it measures.

``python -m service.loadgen --address 127.0.0.1:8001 --payload req.bin --concurrency 8 --duration 10``
prints one JSON object (:class:`LoadResult`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from service.codec import add_input

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # answered successfully while measuring
    errors: int
    seconds: float
    rows_per_request: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    first_error: str = ""
    total_requests: int = 0  # answered while warming up and measuring (for per-request resource use)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


def infer_payload(model: str, data: np.ndarray | list[bytes], input_name: str = "input") -> bytes:
    """A serialized ModelInferRequest carrying ``data`` (an array, or encoded images as `image`)."""
    request = pb.ModelInferRequest(model_name=model)
    if isinstance(data, np.ndarray):
        add_input(request, input_name, data)
    else:
        add_input(request, "image", data)
    return request.SerializeToString()


async def closed_loop(
    address: str,
    payload: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    max_message_bytes: int = 64 * 1024 * 1024,
) -> LoadResult:
    request = pb.ModelInferRequest.FromString(payload)
    rows = int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    latencies: list[float] = []
    errors = 0
    total = 1
    first_error = ""
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out: no (de)serialization cost
        await call(payload)
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from = start + warmup
        end = measure_from + duration

        async def caller() -> None:
            nonlocal errors, first_error, total
            while True:
                t0 = time.perf_counter()
                if loop.time() >= end:
                    return
                try:
                    await call(payload)
                except grpc.aio.AioRpcError as e:
                    if loop.time() >= measure_from:
                        errors += 1
                        first_error = first_error or f"{e.code().name}: {e.details()}"
                    continue
                total += 1
                if loop.time() >= measure_from:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    lat = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    p50, p90, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    return LoadResult(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=duration,
        rows_per_request=rows,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        first_error=first_error,
        total_requests=total,
    )


def run_in_subprocess(
    address: str, payload: bytes, *, concurrency: int, duration: float, warmup: float = 1.0
) -> LoadResult:
    """:func:`closed_loop` in a fresh Python process (its own GIL)."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(payload)
        f.flush()
        cmd = [
            sys.executable,
            "-m",
            "service.loadgen",
            "--address",
            address,
            "--payload",
            f.name,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return LoadResult(**json.loads(done.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.loadgen", description="closed-loop KServe v2 load"
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--payload", required=True, type=Path, help="a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    args = parser.parse_args(argv)
    result = asyncio.run(
        closed_loop(
            args.address,
            args.payload.read_bytes(),
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
        )
    )
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
