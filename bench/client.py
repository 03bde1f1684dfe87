"""Client-side benchmarks against the null server: the load tester's own floor, and grpc.aio vs threads."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import grpc
import numpy as np

from bench import BenchContext, SectionResult, null_server, register_section
from bench.charts import bar_chart
from loadtest.inputs import build_payloads
from loadtest.options import LoadTestOptions
from loadtest.progress import QuietProgress
from loadtest.sweep import run_loadtest
from loadtest.target import CHANNEL_OPTIONS, INFER_METHOD, connect, describe_model

MODEL = "null"
SHAPE = (3, 32, 32)


def _measure_options(ctx: BenchContext) -> dict:
    if ctx.quick:
        return {"window_s": 0.3, "windows": 2, "duration_s": 1.2, "warmup_s": 0.2, "stability": 0.5}
    return {"window_s": 1.0, "windows": 3, "duration_s": 12.0, "warmup_s": 1.0, "stability": 0.1}


@register_section("client", "load tester overhead floor: null server, concurrency 1 and 8, 1 or 2 workers")
def client_floor(ctx: BenchContext) -> SectionResult:
    configs = [(1, 1), (1, 2), (8, 1), (8, 2)]  # (concurrency, workers)
    measured = []
    with null_server.running(model=MODEL, shape=SHAPE) as address:
        for concurrency, workers in configs:
            options = LoadTestOptions(
                url=address.grpc,
                model=MODEL,
                levels=(concurrency,),
                workers=workers,
                metrics_url=address.metrics_url,
                **_measure_options(ctx),
            )
            step = run_loadtest(options, QuietProgress()).steps[0]
            measured.append(
                {
                    "concurrency": concurrency,
                    "workers": workers,
                    "requests_per_s": step.requests_per_s,
                    "p50_ms": step.latency.p50 * 1e3,
                    "p99_ms": step.latency.p99 * 1e3,
                    "stable": step.stable,
                    "client_cpu_us_per_request": step.totals.cpu_s / max(1, step.totals.sent) * 1e6,
                    "server_requests_match": step.server is not None
                    and step.server.requests == step.totals.sent,
                }
            )
    baseline = measured[0]["requests_per_s"]
    for row in measured:
        row["throughput_vs_c1_w1"] = row["requests_per_s"] / baseline if baseline else float("nan")
    labels = [f"c={m['concurrency']} w={m['workers']}" for m in measured]
    plot = ctx.out_dir / "client.png"
    bar_chart(
        plot,
        labels,
        {
            "requests/s": [m["requests_per_s"] for m in measured],
            "p50 ms": [m["p50_ms"] for m in measured],
            "p99 ms": [m["p99_ms"] for m in measured],
        },
        "load tester floor against the null server",
    )
    return SectionResult(
        columns=[
            "config",
            "req/s",
            "x c1w1",
            "p50 ms",
            "p99 ms",
            "client CPU us/req",
            "stable",
            "count = server",
        ],
        rows=[
            [
                label,
                f"{m['requests_per_s']:.0f}",
                f"{m['throughput_vs_c1_w1']:.2f}",
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.2f}",
                f"{m['client_cpu_us_per_request']:.0f}",
                str(m["stable"]),
                str(m["server_requests_match"]),
            ]
            for label, m in zip(labels, measured, strict=True)
        ],
        figures={"model_shape": list(SHAPE), "configs": measured},
        plots=[plot],
    )


def _request(url: str) -> bytes:
    channel = connect(url, 5.0)
    try:
        spec = describe_model(channel, url, MODEL, "", 5.0)
    finally:
        channel.close()
    return build_payloads(spec, 1).requests[0]


def _run_aio(url: str, payload: bytes, concurrency: int, seconds: float) -> list[float]:
    async def main() -> list[float]:
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
            call = channel.unary_unary(INFER_METHOD)
            await call(payload)
            end = time.monotonic() + seconds

            async def client() -> None:
                while (start := time.monotonic()) < end:
                    await call(payload)
                    latencies.append(time.monotonic() - start)

            await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies

    return asyncio.run(main())


def _run_threads(url: str, payload: bytes, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []  # list.append is atomic under the GIL
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(INFER_METHOD)
        call(payload)
        end = time.monotonic() + seconds

        def client() -> None:
            while (start := time.monotonic()) < end:
                call(payload)
                latencies.append(time.monotonic() - start)

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return latencies


def _measure_api(run, url: str, payload: bytes, concurrency: int, seconds: float) -> dict:
    cpu, wall = time.process_time(), time.monotonic()
    latencies = np.asarray(run(url, payload, concurrency, seconds))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {
        "requests_per_s": latencies.size / wall,
        "client_cpu_us_per_request": cpu / latencies.size * 1e6,
        "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
    }


@register_section(
    "client-api", "grpc.aio vs sync stubs in threads: client CPU per request against the null server"
)
def client_api(ctx: BenchContext) -> SectionResult:
    seconds, repeats = (0.5, 1) if ctx.quick else (4.0, 3)
    apis = {"aio": _run_aio, "threads": _run_threads}
    measured = []
    with null_server.running(model=MODEL, shape=SHAPE) as address:
        payload = _request(address.grpc)
        for concurrency in (1, 8, 64):
            runs: dict[str, list[dict]] = {name: [] for name in apis}
            for _ in range(repeats):  # interleaved, so drifting load on the machine hits both alike
                for name, run in apis.items():
                    runs[name].append(_measure_api(run, address.grpc, payload, concurrency, seconds))
            for name, results in runs.items():
                row = {"api": name, "concurrency": concurrency}
                row.update({k: statistics.median(r[k] for r in results) for k in results[0]})
                measured.append(row)
    for row in measured:
        aio = next(m for m in measured if m["api"] == "aio" and m["concurrency"] == row["concurrency"])
        row["cpu_per_request_vs_aio"] = row["client_cpu_us_per_request"] / aio["client_cpu_us_per_request"]
    labels = [f"{m['api']} c={m['concurrency']}" for m in measured]
    plot = ctx.out_dir / "client-api.png"
    bar_chart(
        plot,
        labels,
        {
            "requests/s": [m["requests_per_s"] for m in measured],
            "client CPU us/request": [m["client_cpu_us_per_request"] for m in measured],
        },
        "grpc.aio vs threads (sync stub), same null server",
    )
    return SectionResult(
        columns=["api", "concurrency", "req/s", "client CPU us/req", "x aio", "p50 ms", "p99 ms"],
        rows=[
            [
                m["api"],
                str(m["concurrency"]),
                f"{m['requests_per_s']:.0f}",
                f"{m['client_cpu_us_per_request']:.0f}",
                f"{m['cpu_per_request_vs_aio']:.2f}",
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.2f}",
            ]
            for m in measured
        ],
        figures={"seconds_per_run": seconds, "repeats": repeats, "runs": measured},
        plots=[plot],
    )
