"""``python -m bench --section peers``: cnnserve against the servers a user could run instead, on the same
ONNX files, the same machine and the same client.

cnnserve serves the repository ``python -m export`` writes, with the config it writes (what users get by
default). Triton 2.51 (the ``nvidia-pytriton`` wheel: its C++ front end and dynamic batcher, the model run
on onnxruntime by its Python backend, delay 0) and MLServer 1.7.1 (onnxruntime in a custom runtime) serve
the same ``model.onnx`` files; the do-nothing server is the protocol's floor. A peer that cannot be set up
is reported with the reason. Rounds alternate the order of the servers; the ratios are medians of per-round
ratios, each taken against the peer measured right beside it.

LeNet-5 is measured over gRPC and over HTTP/REST (Triton's binary tensor extension, as ``tritonclient.http``
sends by default); MLServer is left out over HTTP, since its REST API has no binary tensors and JSON would
measure the encoding. ResNet-18 (compute-bound, 602 kB bodies) over gRPC only.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path

from bench import BenchContext, SectionResult, register_section
from bench.charts import grouped_bars
from bench.report import update_benchmarks_block
from bench.serving import Endpoint, closed_loop, exported_repository, median_point, window_settings

MODELS = ("lenet5", "resnet18")
CONCURRENCIES = (1, 8)
GRPC, HTTP = "grpc", "http"
PROTOCOLS = {"lenet5": (GRPC, HTTP), "resnet18": (GRPC,)}
OURS, TRITON, MLSERVER, FLOOR = "cnnserve", "triton", "mlserver", "do-nothing"
# The goals: ours / peer, per model and concurrency (checked for each protocol measured)
GOALS = {
    ("lenet5", 1, TRITON): 1.1,
    ("lenet5", 8, TRITON): 1.1,
    ("lenet5", 8, FLOOR): 0.85,
    ("resnet18", 1, TRITON): 1.0,
    ("resnet18", 8, TRITON): 1.0,
}


@contextlib.contextmanager
def _servers(
    ctx: BenchContext, repo: Path, notes: list[str]
) -> Iterator[dict[str, dict[tuple[str, str], Endpoint]]]:
    """Every server that could be started: label -> (model, protocol) -> endpoint."""
    from bench import null_server
    from harness.peers import OnnxModel, PeerUnavailable, mlserver, triton
    from harness.server import start_server

    onnx = [OnnxModel.from_onnx(repo / m / "1" / "model.onnx", name=m) for m in MODELS]
    found: dict[str, dict[tuple[str, str], Endpoint]] = {}

    def endpoints(label: str, grpc: str, http: str | None, pid: int, metrics: str | None, models=MODELS):
        urls = {GRPC: grpc, HTTP: http}
        return {
            (m, p): Endpoint(label, urls[p], m, pid, metrics)
            for m in models
            for p in PROTOCOLS[m]
            if urls[p] is not None
        }

    with contextlib.ExitStack() as stack:
        logs = ctx.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with ctx.console.status("starting cnnserve"):
            ours = start_server(repo, logs)
        stack.callback(ours.terminate)
        found[OURS] = endpoints(OURS, ours.address, ours.http_url, ours.proc.pid, ours.metrics_url)
        for label, peer in ((TRITON, triton), (MLSERVER, mlserver)):
            try:
                with ctx.console.status(f"setting up and starting {label}"):
                    server = stack.enter_context(peer.serve_onnx(onnx, ctx.work_dir / label))
            except PeerUnavailable as e:
                notes.append(f"{label} could not be set up here, so it is not in the figures: {e.reason}")
                ctx.console.print(notes[-1], highlight=False)
                continue
            http = server.http_url if label == TRITON else None
            found[label] = endpoints(label, server.grpc_address, http, server.proc.pid, None)
        lenet = onnx[0]
        null = stack.enter_context(
            null_server.running(
                model="lenet5", shape=tuple(lenet.dims), classes=lenet.classes, max_batch_size=32, http=True
            )
        )
        found[FLOOR] = endpoints(FLOOR, null.grpc, null.http, null.pid, null.metrics_url, models=("lenet5",))
        yield found


def ratios(measured: dict[str, list[dict]], key: str) -> dict[str, float]:
    """``{"<model>@c<c> <protocol> vs <peer>": median over rounds of ours / peer}`` from per-round points
    keyed ``"<label>|<model>|<protocol>|<c>"``."""
    out = {}
    for name, ours in measured.items():
        label, model, protocol, c = name.split("|")
        if label != OURS:
            continue
        for peer_name, theirs in measured.items():
            peer, *where = peer_name.split("|")
            if peer != OURS and where == [model, protocol, c]:
                per_round = [o[key] / t[key] for o, t in zip(ours, theirs, strict=True) if t[key]]
                if per_round:
                    out[f"{model}@c{c} {protocol} vs {peer}"] = statistics.median(per_round)
    return out


def _verdicts(rates: dict[str, float]) -> dict[str, str]:
    out = {}
    for (model, c, peer), goal in GOALS.items():
        for protocol in PROTOCOLS[model]:
            value = rates.get(f"{model}@c{c} {protocol} vs {peer}")
            out[f"{model} c={c} {protocol}: ours / {peer} >= {goal}"] = (
                "not measured" if value is None else f"{value:.2f}: {'met' if value >= goal else 'NOT met'}"
            )
    return out


def _cell(point: dict | None) -> str:
    if point is None:
        return "-"
    cpu = point.get("server_cpu_us_per_request")
    return f"{point['images_per_s']:.0f} img/s, p50 {point['p50_ms']:.2f} ms" + (
        f", CPU {cpu:.0f} µs/req" if cpu else ""
    )


@register_section(
    "peers", "cnnserve vs Triton 2.51, MLServer 1.7.1, the do-nothing server: lenet5 (gRPC, HTTP), resnet18"
)
def peers(ctx: BenchContext) -> SectionResult:
    rounds = 1 if ctx.quick else 3
    notes: list[str] = []
    repo = exported_repository(ctx, MODELS, "peers-repo")
    measured: dict[str, list[dict]] = {}
    with _servers(ctx, repo, notes) as servers:
        jobs = [
            (f"{label}|{model}|{protocol}|{c}", endpoint, protocol, c)
            for model in MODELS
            for protocol in PROTOCOLS[model]
            for c in CONCURRENCIES
            for label, found in servers.items()
            if (endpoint := found.get((model, protocol))) is not None
        ]
        for r in range(rounds):
            ctx.console.print(f"round {r + 1}/{rounds}", highlight=False)
            for key, endpoint, protocol, c in jobs if r % 2 == 0 else list(reversed(jobs)):
                timing = window_settings(ctx, 0.02 if "resnet" in endpoint.model else 0.001)
                point = closed_loop(ctx, endpoint, c, protocol=protocol, **timing)
                measured.setdefault(key, []).append(point)
    medians = {key: median_point(points) for key, points in measured.items()}
    rates = ratios(measured, "images_per_s")
    p50 = {k: v for k, v in ratios(measured, "p50_ms").items() if k.startswith("lenet5@c1")}
    labels = [
        label for label in (OURS, TRITON, MLSERVER, FLOOR) if any(k.startswith(label) for k in measured)
    ]
    columns = ["model", "protocol", "c", *labels]
    rows = []
    for model in MODELS:
        for protocol in PROTOCOLS[model]:
            for c in CONCURRENCIES:
                rows.append(
                    [model, protocol, str(c)]
                    + [_cell(medians.get(f"{label}|{model}|{protocol}|{c}")) for label in labels]
                )
    verdicts = _verdicts(rates)
    plot = ctx.out_dir / "peers.png"
    grouped_bars(
        plot,
        {
            f"{model} over {protocol} (images/s)": (
                [f"c={c}" for c in CONCURRENCIES],
                {
                    label: [
                        medians.get(f"{label}|{model}|{protocol}|{c}", {}).get("images_per_s", 0.0)
                        for c in CONCURRENCIES
                    ]
                    for label in labels
                    if any(k.startswith(f"{label}|{model}|{protocol}|") for k in medians)
                },
            )
            for model in MODELS
            for protocol in PROTOCOLS[model]
        },
        "the same ONNX files on each server, one client, medians of interleaved rounds",
    )
    notes += [f"{goal}: {verdict}" for goal, verdict in verdicts.items()]
    update_benchmarks_block(
        "peers", columns, rows, notes, command="python -m bench --section peers", quick=ctx.quick
    )
    return SectionResult(
        columns=columns,
        rows=rows,
        figures={
            "points": medians,
            "ratios_images_per_s": rates,
            "ratios_p50_lenet5_c1": p50,
            "goals": verdicts,
        },
        plots=[plot],
        notes=notes,
    )
