"""resnet50 on a CUDA GPU: torch CUDA FP16 eager and every CUDA backend that runs here, in-process
(onnxruntime's CUDA and TensorRT execution providers, TensorRT plans, each only where installed), and
served by cnnserve with ``--device cuda`` through the closed loop: ONNX on onnxruntime's CUDA provider where
installed, else a ``torch.export`` program on torch CUDA (see ``served_format``).

Every in-process figure is end to end as the server's backends do it: FP32 host array in, host FP32
logits out (host-device copies included), batch size over the median batch time in interleaved rounds.
Skipped, with the reason, where there is no CUDA GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import BenchContext, SectionResult, register_section
from bench.charts import grouped_bars
from bench.export import measure
from bench.serving import MAX_BATCH, closed_loop, cnnserve, median_point, window_settings

MODEL = "resnet50"
BATCH_SIZES = (1, 8)
SERVED_CONCURRENCIES = (1, 8, 16)

Infer = Callable[[np.ndarray], np.ndarray]


def served_format() -> tuple[str, str]:
    """The artifact format cnnserve serves on the GPU here, and how its backend runs it: ONNX through
    onnxruntime's CUDA provider where installed (onnxruntime-gpu), else a ``torch.export`` program on
    torch CUDA (the GPU image of this project's test machines has only onnxruntime's CPU build)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnx", "onnxruntime cuda fp32"
    return "torch_export", "torch cuda fp32"


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    return None


def _torch_fp16(model) -> Infer:
    import torch

    module = model.eval().half().to("cuda", memory_format=torch.channels_last)

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(x).to("cuda").half().contiguous(memory_format=torch.channels_last)
            return module(batch).float().cpu().numpy()

    return infer


def backends(ctx: BenchContext, work: Path) -> tuple[dict[str, Infer], dict[str, str]]:
    """The runnable backends by label, and why each missing one is missing."""
    import onnxruntime as ort

    from export.fp16 import convert_fp16
    from export.onnx_export import export_onnx
    from export.tensorrt import build_plan, tensorrt_status
    from modelrepo.names import INPUT_NAME, OUTPUT_NAME
    from models import load_model

    loaded = load_model(MODEL, weights="random")
    work.mkdir(parents=True, exist_ok=True)
    fp32, fp16 = work / f"{MODEL}.onnx", work / f"{MODEL}_fp16.onnx"
    with ctx.console.status(f"exporting {MODEL} to ONNX FP32 and FP16"):
        export_onnx(loaded.model, loaded.input_spec, fp32)
        convert_fp16(fp32, fp16)
    found: dict[str, Infer] = {"torch cuda fp16 eager": _torch_fp16(loaded.model)}
    missing: dict[str, str] = {}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        from service.backends.onnxruntime_backend import OnnxRuntimeBackend

        for precision, path in (("fp32", fp32), ("fp16", fp16)):
            backend = OnnxRuntimeBackend(
                path, path.read_bytes(), input_name=INPUT_NAME, output_name=OUTPUT_NAME, device="cuda:0"
            )
            found[f"onnxruntime cuda {precision}"] = backend.infer
        if "TensorrtExecutionProvider" in providers:
            with ctx.console.status("building onnxruntime's TensorRT engine (FP16)"):
                backend = OnnxRuntimeBackend(
                    fp32,
                    fp32.read_bytes(),
                    input_name=INPUT_NAME,
                    output_name=OUTPUT_NAME,
                    device="cuda:0",
                    accelerator="tensorrt",
                    fp16=True,
                    cache_key=f"bench-{MODEL}",
                )
            found["onnxruntime tensorrt fp16"] = backend.infer
        else:
            missing["onnxruntime tensorrt"] = f"no TensorrtExecutionProvider (providers: {providers})"
    else:
        missing["onnxruntime cuda"] = f"onnxruntime has no CUDAExecutionProvider (providers: {providers})"
    status = tensorrt_status()
    if status.available:
        from service.backends.tensorrt_backend import TensorRTBackend

        plan = work / f"{MODEL}_fp16.plan"
        with ctx.console.status("building the TensorRT FP16 plan"):
            build_plan(
                fp16,
                plan,
                precision="fp16",
                spec=loaded.input_spec,
                max_batch_size=max(BATCH_SIZES),
                fp32_onnx=fp32,
            )
        found["tensorrt plan fp16"] = TensorRTBackend(
            plan, plan.read_bytes(), input_name=INPUT_NAME, output_name=OUTPUT_NAME, device="cuda:0"
        ).infer
    else:
        missing["tensorrt plan"] = status.reason
    return found, missing


@register_section(
    "gpu",
    f"{MODEL} on a CUDA GPU: torch CUDA FP16 eager and the CUDA backends that run here, in-process and "
    "served",
)
def gpu(ctx: BenchContext) -> SectionResult:
    reason = no_gpu_reason()
    if reason is not None:
        return SectionResult.skip(reason)
    import torch

    rounds = 5 if ctx.quick else 50
    run, missing = backends(ctx, ctx.work_dir / "gpu-bench")
    shape = (3, 224, 224)
    inprocess = {}
    for batch in BATCH_SIZES:
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        with ctx.console.status(f"{MODEL} batch {batch}: {rounds} interleaved rounds"):
            inprocess[str(batch)] = measure(run, x, rounds, warmup=3)
    served: dict[str, dict] = {}
    fmt, served_backend = served_format()
    timing = window_settings(ctx, seconds_per_request=0.003)
    with cnnserve(ctx, [MODEL], "--device", "cuda", fmt=fmt) as server:
        endpoint = server.endpoint(MODEL, f"cnnserve {MODEL} ({served_backend})")
        for c in SERVED_CONCURRENCIES:
            served[str(c)] = median_point([closed_loop(ctx, endpoint, c, **timing)])
    labels = list(run)
    plot = ctx.out_dir / "gpu.png"
    panels = {
        "in-process images/s": (
            [f"batch {b}" for b in BATCH_SIZES],
            {label: [inprocess[str(b)][label]["images_per_s"] for b in BATCH_SIZES] for label in labels},
        ),
        f"served images/s ({served_backend})": (
            [f"c={c}" for c in served],
            {"cnnserve": [p["images_per_s"] for p in served.values()]},
        ),
    }
    grouped_bars(plot, panels, f"{MODEL} on {torch.cuda.get_device_name(0)}")
    rows = [
        [
            label,
            f"batch {b}",
            f"{inprocess[str(b)][label]['images_per_s']:.0f}",
            f"{inprocess[str(b)][label]['batch_ms']:.2f}",
        ]
        for b in BATCH_SIZES
        for label in labels
    ] + [
        [
            f"served ({served_backend}) c={c}",
            f"max_batch_size {MAX_BATCH}",
            f"{p['images_per_s']:.0f}",
            f"p50 {p['p50_ms']:.2f}",
        ]
        for c, p in served.items()
    ]
    return SectionResult(
        columns=["backend", "batch", "images/s", "ms (batch median or request p50)"],
        rows=rows,
        figures={
            "model": MODEL,
            "gpu": torch.cuda.get_device_name(0),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "rounds": rounds,
            "inprocess": inprocess,
            "served": served,
            "served_backend": served_backend,
            "missing": missing,
        },
        plots=[plot],
        notes=[f"not measured: {k}: {v}" for k, v in missing.items()],
    )
