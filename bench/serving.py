"""What the serving sections share: the benchmark's model repository, servers as subprocesses, one
closed-loop measurement (with the server's CPU time), and medians over interleaved rounds.

The load comes from ``loadtest.sweep.run_loadtest`` (the closed loop of ``python -m loadtest``) running in
the benchmark's own process; every server runs in a subprocess, so client and server never share a GIL.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import BenchContext
from loadtest.options import LoadTestOptions
from loadtest.progress import QuietProgress
from loadtest.sweep import run_loadtest

MAX_BATCH = 8  # max_batch_size of every benchmark model
NOBATCH = "_nobatch"  # suffix of the copy served without dynamic_batching


@dataclass(frozen=True)
class Endpoint:
    """A model on a running KServe v2 server."""

    label: str  # how tables and plots name it
    url: str
    model: str
    pid: int | None  # the server process, for its CPU time
    metrics_url: str | None


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process and its descendants, all threads, the children they have
    reaped included (Linux /proc; None elsewhere). Descendants count because some servers run the model in
    another process (Triton's Python backend stub, MLServer's workers); a child's time moves into its
    parent's when it exits, so the sum does not drop."""
    if pid is None:
        return None
    stats = _proc_stats()
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, todo, seen = 0, [pid], {pid}
    while todo:
        current = todo.pop()
        total += stats[current][1]
        for child in children.get(current, []):
            if child not in seen:  # a pid reused while /proc was read could make a cycle
                seen.add(child)
                todo.append(child)
    return total / os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system clock ticks, its own and its reaped children's) of every process
    /proc shows."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return out


def repository(ctx: BenchContext, models: list[str], fmt: str = "onnx") -> Path:
    """``<work>/repo`` (``repo-torch_export`` for ``fmt="torch_export"``) holding each model twice:
    ``<model>`` with dynamic batching (delay 0) and ``<model>_nobatch`` without, both ``max_batch_size``
    8, from one export with random weights (speed does not depend on their values): ONNX, or a
    ``torch.export`` program that the server runs with torch (on CUDA where onnxruntime has no CUDA
    provider). Exported once per benchmark run."""
    from export.onnx_export import export_onnx
    from harness.repository import add_model, export_torch_program
    from models import get_labels, get_model_entry, load_model

    if fmt not in ("onnx", "torch_export"):
        raise ValueError(f"benchmark repository format must be onnx or torch_export, got {fmt!r}")
    repo = ctx.work_dir / ("repo" if fmt == "onnx" else f"repo-{fmt}")
    for name in models:
        if (repo / name).is_dir() and (repo / f"{name}{NOBATCH}").is_dir():
            continue
        artifact = ctx.work_dir / fmt / (f"{name}.onnx" if fmt == "onnx" else f"{name}.pt2")
        artifact.parent.mkdir(parents=True, exist_ok=True)
        with ctx.console.status(f"exporting {name} ({fmt}, random weights)"):
            if fmt == "onnx":
                model = load_model(name, weights="random").model
                export_onnx(model, get_model_entry(name).input_spec, artifact)
            else:
                export_torch_program(name, artifact)
        spec, labels = get_model_entry(name).input_spec, get_labels(name)
        for served, batching in ((name, True), (f"{name}{NOBATCH}", False)):
            add_model(
                repo,
                served,
                artifact,
                spec=spec,
                labels=labels,
                fmt=fmt,
                source_model=name,
                max_batch_size=MAX_BATCH,
                dynamic_batching=batching,
            )
    return repo


def exported_repository(ctx: BenchContext, models: list[str] | tuple[str, ...], folder: str) -> Path:
    """``<work>/<folder>`` with each model as ``python -m export`` writes it by default (batching config
    included; random weights: speed does not depend on them), exported once per work folder."""
    from export import export_model

    repo = ctx.work_dir / folder
    for model in models:
        if not (repo / model).is_dir():
            with ctx.console.status(f"python -m export {model} (random weights)"):
                export_model(model, repo=repo, tensorrt="off", eval_samples=8)
    return repo


@dataclass(frozen=True)
class RunningServer:
    url: str
    metrics_url: str
    pid: int
    repo: Path

    def endpoint(self, model: str, label: str | None = None) -> Endpoint:
        return Endpoint(label or model, self.url, model, self.pid, self.metrics_url)


@contextlib.contextmanager
def cnnserve(ctx: BenchContext, models: list[str], *args: str, fmt: str = "onnx") -> Iterator[RunningServer]:
    """``python -m service`` over the benchmark repository, serving ``models`` and their ``_nobatch``
    copies, on free 127.0.0.1 ports (stopped with SIGTERM on exit)."""
    from harness.server import start_server

    repo = repository(ctx, models, fmt)
    logs = ctx.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = [n for m in models for n in (m, f"{m}{NOBATCH}")]
    load = [part for name in names for part in ("--load-model", name)]
    with ctx.console.status(f"starting cnnserve with {', '.join(names)}"):
        server = start_server(repo, logs, *load, *args)
    try:
        yield RunningServer(server.address, server.metrics_url, server.proc.pid, repo)
    finally:
        server.terminate()


def window_settings(ctx: BenchContext, seconds_per_request: float = 0.001) -> dict:
    """Measurement windows for LoadTestOptions: long enough for a few hundred requests per window."""
    if ctx.quick:
        return {"window_s": 0.3, "windows": 2, "duration_s": 1.2, "warmup_s": 0.3, "stability": 0.5}
    window = 1.0 if seconds_per_request < 0.005 else 3.0
    return {
        "window_s": window,
        "windows": 3,
        "duration_s": 6 * window,
        "warmup_s": 1.0 if window < 2 else 3.0,
        "stability": 0.1,
    }


def closed_loop(
    ctx: BenchContext, endpoint: Endpoint, concurrency: int, *, payload: dict | None = None, **timing
) -> dict:
    """One closed-loop step at ``concurrency`` against ``endpoint``: rates, latency percentiles, the
    server's CPU per request over the whole step, and its batch sizes where it exports our metrics.
    ``payload``: LoadTestOptions fields choosing what is sent (``input_name``, ``images``, ``batch``)."""
    options = LoadTestOptions(
        url=endpoint.url,
        model=endpoint.model,
        levels=(concurrency,),
        metrics_url=endpoint.metrics_url,
        **(payload or {}),
        **(timing or window_settings(ctx)),
    )
    cpu_before = process_cpu_seconds(endpoint.pid)
    step = run_loadtest(options, QuietProgress()).steps[0]
    cpu_after = process_cpu_seconds(endpoint.pid)
    point = {
        "requests_per_s": step.requests_per_s,
        "images_per_s": step.images_per_s,
        "p50_ms": step.latency.p50 * 1e3,
        "p99_ms": step.latency.p99 * 1e3,
        "errors": sum(step.errors.values()),
        "stable": step.stable,
        "requests_sent": step.totals.sent,
        "client_cpu_us_per_request": step.totals.cpu_s / max(1, step.totals.sent) * 1e6,
        "server_cpu_us_per_request": None,
    }
    if cpu_before is not None and cpu_after is not None and step.totals.sent:
        point["server_cpu_us_per_request"] = (cpu_after - cpu_before) / step.totals.sent * 1e6
    if step.server is not None and step.server.batches:
        point["batch_mean"] = step.server.batch_mean
        point["batches"] = {_bucket(b.low, b.high): b.count for b in step.server.batch_buckets if b.count}
        point["queue_mean_ms"] = step.server.queue_mean_s * 1e3
        point["compute_mean_ms"] = step.server.compute_mean_s * 1e3
    ctx.console.print(
        f"  {endpoint.label} c={concurrency}: {step.requests_per_s:.1f} req/s, "
        f"{step.images_per_s:.1f} img/s, "
        f"p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms"
        + (
            f", server CPU {point['server_cpu_us_per_request']:.0f} µs/req"
            if point["server_cpu_us_per_request"]
            else ""
        )
        + (f", mean batch {point['batch_mean']:.2f}" if "batch_mean" in point else "")
        + ("" if step.stable else " (not stable)"),
        highlight=False,
    )
    return point


def _bucket(low: float, high: float) -> str:
    if high == float("inf"):
        return f">{low:g}"
    return f"{high:g}" if high - low <= 1 else f"{low:g}<n<={high:g}"


def median_point(points: list[dict]) -> dict:
    """Medians of the numeric figures over rounds; batch counts summed; every round's rate kept."""
    out: dict = {"rounds": len(points)}
    for key, value in points[0].items():
        if isinstance(value, bool):
            out[key] = all(p[key] for p in points)
        elif isinstance(value, int | float):
            known = [p[key] for p in points if p.get(key) is not None]
            out[key] = statistics.median(known) if known else None
        elif key == "batches":
            merged: dict[str, int] = {}
            for p in points:
                for bucket, n in p.get("batches", {}).items():
                    merged[bucket] = merged.get(bucket, 0) + n
            out[key] = merged
    for key in ("server_cpu_us_per_request", "batch_mean", "queue_mean_ms", "compute_mean_ms"):
        known = [p[key] for p in points if p.get(key) is not None]
        if known:
            out[key] = statistics.median(known)
    if "errors" in points[0]:
        out["errors"] = sum(p["errors"] for p in points)
    if "requests_per_s" in points[0]:
        out["requests_per_s_by_round"] = [round(p["requests_per_s"], 1) for p in points]
    out["images_per_s_by_round"] = [round(p["images_per_s"], 1) for p in points]
    return out
