"""resnet50 on a CUDA GPU: the GPU check (:mod:`bench.gpucheck`, ``scripts/gpu-check.sh``) as a benchmark
section, so that BENCHMARKS.md's GPU figures and the check's are one measurement: the backend the server
picks on this host (TensorRT plan, onnxruntime CUDA, or the torch.export program on torch CUDA), fp32 and
fp16 (int8 where something runs it on the GPU), in-process by batch size and served through gRPC by
concurrency with FP32 ``input``, UINT8 ``pixels`` and JPEG ``image`` requests.

Skipped, with the reason, where there is no CUDA GPU.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

from bench import BenchContext, SectionResult, register_section

MODEL = "resnet50"


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    return None


@register_section(
    "gpu",
    f"{MODEL} on a CUDA GPU (the GPU check): the backend picked here, fp32/fp16, in-process by batch and "
    "served through gRPC with input, pixels and JPEG requests",
)
def gpu(ctx: BenchContext) -> SectionResult:
    reason = no_gpu_reason()
    if reason is not None:
        return SectionResult.skip(reason)
    from bench.gpucheck import failures, full_plan, run_check

    plan = full_plan(MODEL)
    if ctx.quick:
        plan = replace(
            plan, batch_sizes=(1, 8), concurrencies=(1, 8), windows=1, duration_s=1.0, warmup_s=0.5
        )
    out = ctx.work_dir / "gpu-check"
    record = run_check(plan, out, ctx.work_dir / "gpu-check-work", ctx.console, command="python -m bench")
    plot = ctx.out_dir / "gpu.png"
    shutil.copyfile(out / "gpu-check.png", plot)
    rows = []
    for name, figures in record["models"].items():
        label = figures["inprocess"]["label"]
        for kind, points in figures["inprocess"]["points"].items():
            rows += [[name, label, kind, f"batch {p['batch']}", f"{p['images_per_s']:.0f}"] for p in points]
        for kind, points in figures["served"].items():
            rows += [
                [name, label, kind, f"served c={p['concurrency']}", f"{p['images_per_s']:.0f}"]
                for p in points
            ]
    return SectionResult(
        columns=["served model", "backend", "input", "how", "images/s"],
        rows=rows,
        figures=record,
        plots=[plot],
        notes=record["notes"] + [f"FAILED: {f}" for f in failures(record)],
    )
