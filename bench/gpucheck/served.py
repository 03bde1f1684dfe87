"""The served side: ``python -m service`` on the repository, its answers checked against PyTorch, and the
gRPC figures from ``python -m loadtest`` (several client processes) with FP32 ``input``, UINT8 ``pixels``
and JPEG ``image`` requests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.gpucheck.nvml import GpuSampler

POLL_S = 0.25


class CheckFailed(RuntimeError):
    """The check cannot go on; the message says why."""


def server_args(device: str, models: Sequence[str], backend: str = "auto") -> list[str]:
    from service.settings import Settings

    args = ["--device", device, "--backend", backend]
    args += [part for m in models for part in ("--load-model", m)]
    # The HTTP front end imports Starlette and uvicorn, which this check needs not and the GPU image lacks.
    if "http_port" in Settings.__dataclass_fields__:
        args += ["--http-port", "0"]
    return args


def start(
    repo: Path, logs: Path, device: str, models: Sequence[str], timeout_s: float, backend: str = "auto"
):
    """The server, once every model is READY; fails at the first model the server reports UNAVAILABLE
    (with its reason), or when the process exits, not at the end of the timeout."""
    from harness.server import start_server

    logs.mkdir(parents=True, exist_ok=True)
    try:
        server = start_server(
            repo, logs, *server_args(device, models, backend), ready_service="liveness", ready_timeout=60
        )
    except RuntimeError as e:
        raise CheckFailed(f"the server did not start: {str(e)[-3000:]}") from None
    client = server.client()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if server.proc.poll() is not None:
                raise CheckFailed(f"the server exited ({server.proc.returncode}):\n{server.log()[-3000:]}")
            states = {m.name: (m.state, m.reason) for m in client.repository_index()}
            failed = {n: reason for n, (state, reason) in states.items() if state == "UNAVAILABLE" and reason}
            if failed:
                raise CheckFailed("; ".join(f"model {n} cannot load: {r}" for n, r in failed.items()))
            if all(states.get(m, ("",))[0] == "READY" for m in models):
                return server
            if time.monotonic() > deadline:
                raise CheckFailed(f"models not ready after {timeout_s:.0f}s: {states}")
            time.sleep(POLL_S)
    except BaseException:
        server.terminate()
        raise


def served_parameters(client, model: str) -> dict[str, str]:
    config = client.model_config(model)
    return {k: v.string_value for k, v in config.parameters.items()}


def logits(client, model: str, name: str, rows) -> np.ndarray:
    from protos import grpc_service_pb2 as pb
    from protos.wire import add_input, output_array

    request = pb.ModelInferRequest(model_name=model)
    add_input(request, name, rows)
    return output_array(client.infer_request(request), "logits")


def compare(served: np.ndarray, reference: np.ndarray, tolerance: float | None) -> dict:
    """Max error relative to the largest reference logit, top-1 agreement, and the verdict (None: recorded,
    not gated)."""
    scale = float(np.abs(reference).max()) or 1.0
    relative = float(np.abs(served - reference).max()) / scale
    agreement = float(np.mean(served.argmax(1) == reference.argmax(1)))
    return {
        "max_rel_error": relative,
        "top1_agreement": agreement,
        "tolerance": tolerance,
        "passed": None if tolerance is None else relative <= tolerance,
    }


def run_loadtest(
    address: str,
    metrics_url: str,
    model: str,
    kind: str,
    images: Path,
    plan,
    out: Path,
    sampler: GpuSampler,
) -> list[dict]:
    """One ``python -m loadtest`` sweep over the plan's concurrencies; one figure per step."""
    command = [
        sys.executable, "-m", "loadtest", "--url", address, "--model", model,
        "--concurrency", ",".join(map(str, plan.concurrencies)), "--batch", str(plan.request_batch),
        "--workers", str(plan.workers), "--window", str(plan.window_s), "--windows", str(plan.windows),
        "--duration", str(plan.duration_s), "--warmup", str(plan.warmup_s), "--metrics-url", metrics_url,
        "--connect-timeout", "10", "--json", str(out), "--quiet",
    ]  # fmt: skip
    if kind == "pixels":
        command += ["--input", "pixels"]
    elif kind == "image":
        command += ["--images", str(images)]
    budget = len(plan.concurrencies) * (plan.warmup_s + plan.duration_s + 15) + 30
    with sampler.sampling() as sampling:
        done = subprocess.run(command, capture_output=True, text=True, timeout=budget)
    if done.returncode != 0 or not out.is_file():
        raise CheckFailed(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    steps = json.loads(out.read_text())["steps"]
    return [
        {
            "concurrency": int(step["level"]),
            "images_per_s": step["images_per_s"],
            "requests_per_s": step["requests_per_s"],
            "p50_ms": (step["latency"]["p50"] or 0) * 1e3,
            "p99_ms": (step["latency"]["p99"] or 0) * 1e3,
            "errors": step["errors"],
            "stable": step["stable"],
            "client_cpu_utilization": step["client_cpu_utilization"],
            "server_batch_mean": (step.get("server") or {}).get("batch_mean"),
            "gpu_utilization_whole_sweep": sampling.summary(),
        }
        for step in steps
    ]
