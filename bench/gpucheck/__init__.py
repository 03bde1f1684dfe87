"""The GPU check (``scripts/gpu-check.sh``, ``python -m bench.gpucheck``): on a machine with CUDA torch and
no network, export a model, serve it on the GPU, check the served answers against PyTorch, and measure
in-process and served throughput with the same backend and precision. ``--dry-run`` runs the same code
with tiny sizes on the CPU (CI), so that import and packaging errors never reach the GPU machine.

Steps, each bounded by the plan's time budget: survey the environment (fail first, naming what is
missing), export (fp32, fp16, and int8 where something runs it on the serving device), load each entry
in-process with the server's loader (fail within seconds when one cannot load), measure it per input
kind and batch size, start ``python -m service`` (fail at the first model it reports unavailable), check
its answers, sweep it with ``python -m loadtest``, write JSON, PNG and a Markdown table.
"""

from __future__ import annotations

import datetime
import io
import os
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench.gpucheck import inprocess, report, served
from bench.gpucheck.environment import survey
from bench.gpucheck.nvml import GpuSampler
from bench.gpucheck.served import CheckFailed

KINDS = report.KINDS
GOAL_PIXELS_IMAGES_PER_S = 5000  # the goal for ResNet-50 on one H200, served with `pixels`
GOAL_SERVED_RATIO = 0.5
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": None}  # of max|logit|, served vs PyTorch FP32
IMAGE_TOLERANCE = 0.1  # JPEG rows: the GPU and Pillow decoders differ by about a level per pixel


@dataclass(frozen=True)
class Plan:
    model: str
    device: str  # the server's --device
    max_batch_size: int
    batch_sizes: tuple[int, ...]  # in-process
    concurrencies: tuple[int, ...]  # served
    request_batch: int  # rows per gRPC request
    workers: int  # load-test client processes
    window_s: float
    windows: int
    duration_s: float
    warmup_s: float
    inprocess_s: float  # seconds per in-process point
    image_size: tuple[int, int]
    image_count: int
    calib_samples: int
    eval_samples: int
    sweep_models: int | None  # served entries swept through gRPC (None: all)
    budget_s: float  # the whole check
    backend: str = "auto"  # the server's --backend (the runtime tried first)

    def sweep_seconds(self) -> float:
        return len(self.concurrencies) * (self.warmup_s + self.duration_s + 2) + 5


def full_plan(model: str = "resnet50") -> Plan:
    workers = max(2, min(8, (os.cpu_count() or 4) // 2))
    return Plan(
        model, "cuda", 128, (1, 8, 32, 64, 128), (1, 8, 32), 8, workers, 1.0, 2, 4.0, 1.0, 1.0,
        (500, 375), 64, 64, 32, None, 450.0,
    )  # fmt: skip


def dry_plan(model: str = "lenet5") -> Plan:
    """The torch program served on the CPU (the GPU's code path: staging, buckets, the loader), asked for
    a batch of 8 above the entry's cap of 4, as the full plan asks a GPU for batches up to 128."""
    return Plan(
        model, "cpu", 4, (1, 2, 8), (1, 2), 1, 2, 0.3, 2, 1.2, 0.2, 0.1, (40, 36), 4, 16, 8, 1, 240.0,
        backend="torch",
    )  # fmt: skip


def write_images(folder: Path, plan: Plan) -> list[bytes]:
    """Photograph-like JPEGs (smooth colour fields and texture) of the plan's size."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = plan.image_size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = []
    for i in range(plan.image_count):
        rng = np.random.default_rng(i)
        planes = [128 + 100 * np.sin(x / (13 + 7 * c + i) + y / (19 + 3 * c)) for c in range(3)]
        pixels = np.clip(np.stack(planes, -1) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
        (folder / f"{i:03d}.jpg").write_bytes(blobs[-1])
    return blobs


def int8_reason(device: str) -> str | None:
    """None where something runs int8 on ``device``: onnxruntime's CPU kernels, TensorRT, onnxruntime CUDA."""
    if device == "cpu":
        return None
    import onnxruntime

    from export.tensorrt import tensorrt_status

    if tensorrt_status().available or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    return "nothing runs int8 on the GPU here (no TensorRT, no onnxruntime CUDA provider); int8 not exported"


def export(plan: Plan, repo: Path, weights: str, notes: list[str]) -> dict:
    from export import export_model
    from export.progress import Reporter

    skip_int8 = int8_reason(plan.device)
    if skip_int8:
        notes.append(skip_int8)
    started = time.monotonic()
    result = export_model(
        plan.model, weights=weights, fp16=True, int8=skip_int8 is None, calib="random",
        calib_samples=plan.calib_samples, calib_method="minmax", eval_samples=plan.eval_samples,
        repo=repo, max_batch_size=plan.max_batch_size, tensorrt="auto", force=True, reporter=Reporter(),
    )  # fmt: skip
    notes += result.notes
    entries = {}
    for entry in result.entries:
        entries[entry.name] = {
            "precision": entry.precision,
            "notes": entry.manifest.notes,
            "artifacts": [
                {
                    "file": a.file,
                    "format": a.format,
                    "runtime": a.validation.get("runtime"),
                    "max_rel_error": (a.validation.get("parity") or {}).get("max_rel_error"),
                    "top1_agreement": a.validation.get("top1_agreement"),
                }
                for a in entry.manifest.artifacts
            ],
        }
    return {"seconds": round(time.monotonic() - started, 1), "entries": entries}


def check_answers(client, name: str, precision: str, plan: Plan, weights: str, images: list[bytes]) -> dict:
    """The served logits for FP32 rows, pixels and JPEGs against PyTorch FP32 on the CPU."""
    import torch

    from modelrepo.names import IMAGE_INPUT, INPUT_NAME, PIXELS_INPUT
    from modelrepo.preprocess import normalize_pixels, preprocess_bytes
    from models import get_model_entry, load_model

    spec = get_model_entry(plan.model).input_spec
    model = load_model(plan.model, weights=weights).model.eval()
    rows = min(4, plan.max_batch_size)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, *spec.shape), dtype=np.float32)
    pixels = rng.integers(0, 256, (rows, *spec.pixels_shape), dtype=np.uint8)
    blobs = images[:rows]
    decoded = np.stack([preprocess_bytes(b, spec) for b in blobs])
    tolerance = TOLERANCE[precision]
    cases = {  # kind -> (input name, what is sent, what PyTorch gets, tolerance)
        "input": (INPUT_NAME, x, x, tolerance),
        "pixels": (PIXELS_INPUT, pixels, normalize_pixels(pixels, spec), tolerance),
        "image": (
            IMAGE_INPUT,
            blobs,
            decoded,
            None if tolerance is None else max(tolerance, IMAGE_TOLERANCE),
        ),
    }
    verdicts = {}
    for kind, (input_name, sent, tensor, allowed) in cases.items():
        with torch.inference_mode():
            reference = model(torch.from_numpy(tensor)).numpy()
        verdicts[kind] = served.compare(served.logits(client, name, input_name, sent), reference, allowed)
    return verdicts


def run_check(plan: Plan, out: Path, work: Path, console, weights: str = "random", command: str = "") -> dict:
    """Every step; returns the record, written to ``out`` after each step and whatever stops the check
    (the server's logs are kept in ``out/logs``). Raises CheckFailed where it cannot go on, and any other
    error as it came, after recording it."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "plan": asdict(plan), "model": plan.model, "notes": [], "models": {},
        "stages": [],
    }  # fmt: skip

    def done(stage: str) -> None:
        record["stages"].append(stage)
        record["seconds"] = round(time.monotonic() - started, 1)
        report.write_json(record, out / "gpu-check.json")

    try:
        _steps(plan, out, work, console, weights, record, started + plan.budget_s, done)
    except BaseException as e:
        record["failed"] = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
        if not isinstance(e, CheckFailed):
            record["traceback"] = traceback.format_exc()[-6000:]
        done("failed")
        raise
    record["goal"] = goal(record) if plan.device == "cuda" else {}
    done("finished")
    report.write_plot(record, out / "gpu-check.png")
    (out / "gpu-check.md").write_text(report.markdown(record))
    return record


def _steps(plan: Plan, out: Path, work: Path, console, weights: str, record: dict, deadline: float, done):
    env = survey(need_cuda=plan.device == "cuda")
    record["environment"] = env.to_dict()
    console.print(f"versions: {env.versions}", highlight=False)
    console.print(f"GPU: {env.gpu or 'none'}", highlight=False)
    for line in env.absent:
        console.print(f"optional, absent: {line}", highlight=False)
    done("survey")
    if env.missing:
        raise CheckFailed("missing: " + "; ".join(env.missing) + " (carry the wheels: docs/GPU.md)")
    sampler = GpuSampler()
    if sampler.reason:
        record["notes"].append(f"no GPU utilization figures: {sampler.reason}")
    with console.status(f"exporting {plan.model}"):
        record["export"] = export(plan, work / "repo", weights, record["notes"])
    names = list(record["export"]["entries"])
    console.print(f"exported {', '.join(names)} in {record['export']['seconds']} s", highlight=False)
    done("export")
    images = write_images(work / "images", plan)
    for name in names:
        with console.status(f"{name}: loading and measuring in-process"):
            try:
                version = inprocess.load(work / "repo", name, plan.device, plan.backend)
            except Exception as e:  # ModelLoadError with the reason, or a bug: either way, stop now
                raise CheckFailed(f"model {name} cannot load: {e}") from None
            try:
                measured = inprocess.measure(version, plan.batch_sizes, plan.inprocess_s, sampler, images)
            finally:
                inprocess.close(version)
        record["models"][name] = {"inprocess": measured, "served": {}, "ratios": {}}
        best = {k: round(inprocess.best(v)) for k, v in measured["points"].items()}
        console.print(f"  {name} in-process ({measured['backend']}): {best} img/s", highlight=False)
        for refusal in measured["refused"]:
            console.print(f"  {name} {refusal['kind']} batch {refusal['batch']}: {refusal['reason']}")
        done(f"{name} in-process")
    serve(plan, work, out / "logs", record, console, sampler, images, weights, deadline, done)


def serve(plan, work, logs, record, console, sampler, images, weights, deadline, done) -> None:
    names = list(record["models"])
    with console.status(f"starting python -m service --device {plan.device} --backend {plan.backend}"):
        server = served.start(work / "repo", logs, plan.device, names, timeout_s=300, backend=plan.backend)
    try:
        client = server.client()
        for name in names:
            figures = record["models"][name]
            figures["served_config"] = served.served_parameters(client, name)
            precision = figures["inprocess"]["precision"]
            figures["answers"] = check_answers(client, name, precision, plan, weights, images)
        done("served answers")
        swept = names if plan.sweep_models is None else names[: plan.sweep_models]
        for name in swept:
            for kind in KINDS:
                if time.monotonic() + plan.sweep_seconds() > deadline:
                    record["notes"].append(f"{name} {kind}: not swept, the time budget is spent")
                    continue
                with console.status(f"{name}: python -m loadtest, {kind}, c={plan.concurrencies}"):
                    points = served.run_loadtest(
                        server.address, server.metrics_url, name, kind, work / "images", plan,
                        work / f"loadtest-{name}-{kind}.json", sampler,
                    )  # fmt: skip
                figures = record["models"][name]
                figures["served"][kind] = points
                inproc = inprocess.best(figures["inprocess"]["points"][kind])
                top = max(p["images_per_s"] for p in points)
                figures["ratios"][kind] = top / inproc if inproc else float("nan")
                console.print(
                    f"  {name} served {kind}: {[round(p['images_per_s']) for p in points]} img/s at "
                    f"c={list(plan.concurrencies)}; served/in-process {figures['ratios'][kind]:.2f}",
                    highlight=False,
                )
                done(f"{name} served {kind}")
    finally:
        server.terminate()
        record["server_log"] = str(server.log_path)
        record["server_log_tail"] = server.log()[-4000:]


def goal(record: dict) -> dict:
    """The issue's goal, judged per served model: pixels through gRPC, and served over in-process."""
    out = {}
    for name, figures in record["models"].items():
        pixels = figures["served"].get("pixels")
        if not pixels:
            continue
        best = max(p["images_per_s"] for p in pixels)
        ratio = figures["ratios"].get("pixels")
        out[name] = {
            "pixels_images_per_s": best,
            "target_images_per_s": GOAL_PIXELS_IMAGES_PER_S,
            "served_over_inprocess": ratio,
            "met": best >= GOAL_PIXELS_IMAGES_PER_S and ratio is not None and ratio >= GOAL_SERVED_RATIO,
        }
    return out


def failures(record: dict) -> list[str]:
    """Answers that disagree with PyTorch beyond tolerance, and served steps with errors."""
    found = []
    for name, figures in record["models"].items():
        for kind, verdict in figures.get("answers", {}).items():
            if verdict["passed"] is False:
                error, allowed = verdict["max_rel_error"], verdict["tolerance"]
                found.append(f"{name} {kind}: served vs PyTorch, max relative error {error:.3g} > {allowed}")
        for kind, points in figures.get("served", {}).items():
            for p in points:
                if p["errors"]:
                    found.append(f"{name} {kind} c={p['concurrency']}: errors {p['errors']}")
    return found


__all__ = ["CheckFailed", "Plan", "dry_plan", "failures", "full_plan", "replace", "run_check"]
