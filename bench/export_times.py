"""``python -m bench --section export-times``: how long ``python -m export MODEL --fp16 --int8`` takes on this
CPU for each family member, stage by stage, run as a user runs it (the CLI in a process of its own, seeded
random weights, digits calibration, no TensorRT). ``CNNSERVE_EXPORT_TIMES_MODELS`` (comma-separated)
picks the models; quick runs take LeNet-5 and ResNet-18. Each model's export is bounded by
``PER_MODEL_TIMEOUT_S``; one that runs past it is recorded as such and the next one starts. The whole
section is bounded by ``CNNSERVE_EXPORT_TIMES_BUDGET_S`` (default 3600): models not started by then are
recorded as not run. Models run smallest first (published parameter count), so a budget cut keeps the
small ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import BenchContext, SectionResult, register_section
from bench.charts import stacked_bars

QUICK_MODELS = ("lenet5", "resnet18")
PER_MODEL_TIMEOUT_S = 1800
MODELS_ENV = "CNNSERVE_EXPORT_TIMES_MODELS"
BUDGET_ENV, DEFAULT_BUDGET_S = "CNNSERVE_EXPORT_TIMES_BUDGET_S", 3600.0
# "✓ check int8 ONNX against PyTorch (onnxruntime CPU) (12.3 s)": a finished stage (export.progress)
STAGE_LINE = re.compile(r"^✓ (?P<stage>.+) \((?P<seconds>[0-9.]+) s\)$")
# stage groups of the plot, by the first words of a stage's description
GROUPS = (
    ("quantize", ("calibrate", "read calibration")),
    ("check", ("check", "PyTorch reference")),
    ("fit batching", ("measure",)),
    ("export", ("export", "convert", "load")),
)


def stage_seconds(stderr: str) -> dict[str, float]:
    """Seconds per stage from the export's log lines (a stage that ran twice is summed)."""
    stages: dict[str, float] = {}
    for line in stderr.splitlines():
        found = STAGE_LINE.match(line.strip())
        if found:
            stage = found["stage"]
            stages[stage] = stages.get(stage, 0.0) + float(found["seconds"])
    return stages


def group_of(stage: str) -> str:
    for group, prefixes in GROUPS:
        if stage.startswith(prefixes):
            return group
    return "other"


def export_one(model: str, repo: Path, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "export", model, "--fp16", "--int8", "--tensorrt", "off"]
    command += ["--repo", str(repo), "--force"]
    started = time.perf_counter()
    try:
        # a log, as a user's CI would keep one: one line per stage (no colours, no redraws)
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {
            "model": model,
            "status": f"timed out after {timeout_s:.0f} s",
            "stages": stage_seconds(stderr),
        }
    seconds = time.perf_counter() - started
    stages = stage_seconds(done.stderr)
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    groups: dict[str, float] = {}
    for stage, s in stages.items():
        groups[group_of(stage)] = groups.get(group_of(stage), 0.0) + s
    return {"model": model, "status": status, "seconds": seconds, "stages": stages, "groups": groups}


def chosen_models(quick: bool) -> list[str]:
    from models import get_model_entry, list_models

    if os.environ.get(MODELS_ENV):
        names = [m.strip() for m in os.environ[MODELS_ENV].split(",") if m.strip()]
    else:
        names = list(QUICK_MODELS) if quick else list(list_models())
    return sorted(names, key=lambda name: get_model_entry(name).published_params or 0)


@register_section("export-times", "python -m export MODEL --fp16 --int8 on this CPU, per model and stage")
def export_times(ctx: BenchContext) -> SectionResult:
    repo = ctx.work_dir / "export-times"
    budget_s = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S))
    started = time.monotonic()
    measured = []
    for i, model in enumerate(chosen_models(ctx.quick), 1):
        left = budget_s - (time.monotonic() - started)
        if left <= 0:
            measured.append({"model": model, "status": f"not run: the section's {budget_s:.0f} s were spent"})
            continue
        with ctx.console.status(f"[{i}] python -m export {model} --fp16 --int8"):
            result = export_one(model, repo, min(PER_MODEL_TIMEOUT_S, left))
        shutil.rmtree(repo, ignore_errors=True)  # VGG's entries take 1.6 GB: keep one model's at a time
        measured.append(result)
        took = f"{result['seconds']:.0f} s" if "seconds" in result else result["status"]
        ctx.console.print(f"  {model}: {took} ({result['status'][:80]})", highlight=False)
    done = [m for m in measured if m["status"] == "ok"]
    plot = ctx.out_dir / "export-times.png"
    groups = [g for g, _ in GROUPS] + ["other"]
    stacked_bars(
        plot,
        [m["model"] for m in done],
        {g: [m["groups"].get(g, 0.0) for m in done] for g in groups},
        f"python -m export MODEL --fp16 --int8 on {os.cpu_count()} CPUs (random weights), by stage",
        "seconds",
    )
    return SectionResult(
        columns=["model", "seconds", *groups, "status"],
        rows=[
            [
                m["model"],
                f"{m['seconds']:.0f}" if "seconds" in m else "-",
                *(f"{m.get('groups', {}).get(g, 0.0):.0f}" for g in groups),
                m["status"][:60],
            ]
            for m in measured
        ],
        figures={
            "cpus": os.cpu_count(),
            "command": "python -m export MODEL --fp16 --int8 --tensorrt off",
            "budget_s": budget_s,
            "results": measured,
        },
        plots=[plot],
    )
