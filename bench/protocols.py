"""The front ends side by side: one cnnserve process, the same model, driven over gRPC and over HTTP/REST
(Triton's binary tensor data extension, as Triton's HTTP clients send by default), at concurrency 1 and 8.

Both protocols are measured in every round, in an order that alternates between rounds, and the figures
that compare them are ratios of the two points of one round (HTTP over gRPC), their median over rounds:
on a shared machine a change in speed between rounds hits both alike. The load comes from the load tester
in the benchmark's process (grpc.aio or aiohttp), so req/s and p50 include the client; the server's CPU
per request (from /proc) is the server's side alone.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator

from bench import BenchContext, SectionResult, register_section
from bench.charts import grouped_bars
from bench.serve import _fmt, _interleaved, round_ratios
from bench.serving import Endpoint, closed_loop, median_point, repository, window_settings

MODELS = ("lenet5", "resnet18")
PROTOCOLS = ("grpc", "http")
CONCURRENCIES = (1, 8)


@contextlib.contextmanager
def serving(ctx: BenchContext, models: tuple[str, ...]) -> Iterator[dict[str, Endpoint]]:
    """cnnserve over the benchmark repository with ``models``; one endpoint per (model, protocol)."""
    from harness.server import start_server

    repo = repository(ctx, list(models))
    logs = ctx.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    load = [part for model in models for part in ("--load-model", model)]
    with ctx.console.status(f"starting cnnserve with {', '.join(models)} (gRPC and HTTP)"):
        server = start_server(repo, logs, *load)
    try:
        pid = server.proc.pid
        yield {
            f"{model}/{protocol}": Endpoint(
                f"{model} {protocol}",
                server.address if protocol == "grpc" else server.http_url,
                model,
                pid,
                server.metrics_url,
            )
            for model in models
            for protocol in PROTOCOLS
        }
    finally:
        server.terminate()


def timing(ctx: BenchContext, model: str) -> dict:
    """Short steps and many rounds: more gRPC/HTTP pairs measured side by side."""
    settings = window_settings(ctx, seconds_per_request=0.03 if model == "resnet18" else 0.001)
    if not ctx.quick:
        if model == "resnet18":
            settings.update(window_s=1.5, duration_s=6.0, warmup_s=1.5)
        else:
            settings.update(window_s=0.5, duration_s=3.0, warmup_s=0.5)
    return settings


def protocol_ratios(measured: dict[str, list[dict]], model: str, c: int) -> dict:
    """HTTP against gRPC at one concurrency, each round's HTTP point over that round's gRPC point, then the
    median over rounds."""
    http, grpc = measured[f"{model}/http@{c}"], measured[f"{model}/grpc@{c}"]
    pairs = list(zip(grpc, http, strict=True))
    cpu = [
        h["server_cpu_us_per_request"] / g["server_cpu_us_per_request"]
        for g, h in pairs
        if g.get("server_cpu_us_per_request") and h.get("server_cpu_us_per_request")
    ]
    by_round = round_ratios(http, grpc, "requests_per_s")
    return {
        "requests_per_s_http_over_grpc": statistics.median(by_round),
        "requests_per_s_http_over_grpc_by_round": [round(r, 3) for r in by_round],
        "p50_http_over_grpc": statistics.median(round_ratios(http, grpc, "p50_ms")),
        "p50_http_minus_grpc_ms": statistics.median(h["p50_ms"] - g["p50_ms"] for g, h in pairs),
        "server_cpu_http_over_grpc": statistics.median(cpu) if cpu else None,
    }


@register_section(
    "protocols",
    "gRPC vs HTTP/REST (binary tensors) on one server: lenet5 and resnet18, req/s and p50 at concurrency 1 "
    "and 8, HTTP/gRPC ratios per interleaved round",
)
def protocols(ctx: BenchContext) -> SectionResult:
    rounds = 1 if ctx.quick else 5
    models = MODELS[:1] if ctx.quick else MODELS  # a smoke run checks the section, with the small model
    with serving(ctx, models) as endpoints:
        jobs = [
            (f"{key}@{c}", _job(ctx, endpoint, key.rsplit("/", 1)[1], c))
            for key, endpoint in endpoints.items()
            for c in CONCURRENCIES
        ]
        measured = _interleaved(ctx, rounds, jobs)
    medians = {key: median_point(points) for key, points in measured.items()}
    figures: dict = {"rounds": rounds, "encoding": "HTTP: JSON header + binary tensor data", "models": {}}
    rows, notes = [], []
    for model in models:
        per_model: dict = {"points": {}, "ratios": {}}
        for c in CONCURRENCIES:
            ratios = protocol_ratios(measured, model, c)
            per_model["ratios"][str(c)] = ratios
            for protocol in PROTOCOLS:
                point = medians[f"{model}/{protocol}@{c}"]
                per_model["points"][f"{protocol}@{c}"] = point
                rows.append(
                    [
                        model,
                        protocol,
                        str(c),
                        f"{point['requests_per_s']:.0f}",
                        f"{point['p50_ms']:.2f}",
                        f"{point['p99_ms']:.2f}",
                        _fmt(point["server_cpu_us_per_request"], "{:.0f}"),
                        str(point["errors"]),
                        "" if protocol == "grpc" else _fmt(ratios["requests_per_s_http_over_grpc"]),
                        "" if protocol == "grpc" else _fmt(ratios["p50_http_over_grpc"]),
                    ]
                )
            notes.append(
                f"{model} c={c}: HTTP/gRPC req/s {_fmt(ratios['requests_per_s_http_over_grpc'])}, "
                f"p50 {_fmt(ratios['p50_http_over_grpc'])} ({ratios['p50_http_minus_grpc_ms']:+.2f} ms), "
                f"server CPU {_fmt(ratios['server_cpu_http_over_grpc'])}"
            )
        figures["models"][model] = per_model
    plot = ctx.out_dir / "protocols.png"
    categories = [f"{m} c={c}" for m in models for c in CONCURRENCIES]
    panels = {}
    for title, key in (("requests/s", "requests_per_s"), ("p50 ms", "p50_ms")):
        panels[title] = (
            categories,
            {p: [medians[f"{m}/{p}@{c}"][key] for m in models for c in CONCURRENCIES] for p in PROTOCOLS},
        )
    ratios_of = [figures["models"][m]["ratios"][str(c)] for m in models for c in CONCURRENCIES]
    panels["HTTP / gRPC (per-round ratio, median)"] = (
        categories,
        {
            "req/s": [r["requests_per_s_http_over_grpc"] for r in ratios_of],
            "p50": [r["p50_http_over_grpc"] for r in ratios_of],
        },
    )
    grouped_bars(plot, panels, f"gRPC vs HTTP/REST on one cnnserve (medians of {rounds} interleaved rounds)")
    return SectionResult(
        columns=[
            "model",
            "protocol",
            "conc.",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "errors",
            "req/s HTTP/gRPC",
            "p50 HTTP/gRPC",
        ],
        rows=rows,
        figures=figures,
        plots=[plot],
        notes=notes,
    )


def _job(ctx: BenchContext, endpoint: Endpoint, protocol: str, concurrency: int) -> Callable[[], dict]:
    # closed_loop passes its keyword arguments to LoadTestOptions: the windows, and the protocol
    settings = {**timing(ctx, endpoint.model), "protocol": protocol}
    return lambda: closed_loop(ctx, endpoint, concurrency, **settings)
