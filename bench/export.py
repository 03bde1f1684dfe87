"""The export benchmark: images/s of PyTorch eager vs onnxruntime FP32 vs onnxruntime INT8 on CPU.

Random weights (speed does not depend on their values); INT8 is what ``python -m export --int8`` serves
(Q/DQ, uint8 activations, per-channel int8 weights), calibrated with minmax on a few digits images.
Backends are measured in interleaved rounds, one batch each per round, so that load from other
processes hits all of them alike; the figure is the batch size over the median batch time, and ratios
are against PyTorch eager measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import BenchContext, SectionResult, register_section
from bench.charts import grouped_bars

BACKENDS = ("pytorch eager", "onnxruntime fp32", "onnxruntime int8")
MODELS = ("resnet50", "vgg19")
QUICK_MODELS = ("lenet5",)
BATCH_SIZES = (1, 8)
CALIBRATION_SAMPLES = 16


def runners(name: str, work: Path) -> dict[str, Callable[[np.ndarray], object]]:
    """The three ways to run ``name``: PyTorch eager, and the exported FP32 and INT8 ONNX files."""
    import torch

    from export.calibration import calibration_inputs
    from export.int8 import quantize_int8
    from export.onnx_export import export_onnx
    from export.validate import ort_session
    from modelrepo.names import INPUT_NAME
    from models import load_model

    loaded = load_model(name, weights="random")
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    export_onnx(loaded.model, loaded.input_spec, fp32)
    calib, _ = calibration_inputs("digits", loaded.input_spec, CALIBRATION_SAMPLES)
    quantize_int8(fp32, int8, calib, method="minmax", work_dir=work)  # speed does not depend on the method
    sessions = {"onnxruntime fp32": ort_session(fp32), "onnxruntime int8": ort_session(int8)}
    model = loaded.model.eval()

    def eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    out: dict[str, Callable[[np.ndarray], object]] = {"pytorch eager": eager}
    for label, session in sessions.items():
        out[label] = lambda x, s=session: s.run(None, {INPUT_NAME: x})
    return out


def measure(
    run: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, rounds: int, warmup: int = 1
) -> dict:
    """Per backend: images/s (batch size / median batch time) and the median batch milliseconds, over
    ``rounds`` interleaved rounds (one batch per backend each) after ``warmup`` batches each."""
    times: dict[str, list[float]] = {k: [] for k in run}
    for fn in run.values():
        for _ in range(warmup):
            fn(x)
    for _ in range(rounds):
        for label, fn in run.items():
            started = time.perf_counter()
            fn(x)
            times[label].append(time.perf_counter() - started)
    return {
        label: {"images_per_s": len(x) / statistics.median(t), "batch_ms": statistics.median(t) * 1e3}
        for label, t in times.items()
    }


@register_section(
    "export", "CPU images/s: PyTorch eager vs onnxruntime FP32 vs INT8, resnet50 and vgg19, batch 1 and 8"
)
def export_speed(ctx: BenchContext) -> SectionResult:
    import torch

    models, rounds = (QUICK_MODELS, 2) if ctx.quick else (MODELS, 10)
    from models import get_model_entry

    measured = []
    for name in models:
        with ctx.console.status(f"exporting and quantizing {name}"):
            run = runners(name, ctx.work_dir / "export-bench")
        shape = get_model_entry(name).input_spec.shape
        for batch in BATCH_SIZES:
            x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
            with ctx.console.status(f"{name} batch {batch}: {rounds} interleaved rounds"):
                ips = {k: v["images_per_s"] for k, v in measure(run, x, rounds).items()}
            base = ips["pytorch eager"]
            measured.append(
                {
                    "model": name,
                    "batch": batch,
                    "images_per_s": ips,
                    "vs_pytorch_eager": {k: v / base for k, v in ips.items()},
                }
            )
            ctx.console.print(
                f"  {name} batch {batch}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in ips.items()),
                highlight=False,
            )
    plot = ctx.out_dir / "export.png"
    categories = [f"{m['model']}\nbatch {m['batch']}" for m in measured]
    grouped_bars(
        plot,
        {
            "images/s": (categories, {b: [m["images_per_s"][b] for m in measured] for b in BACKENDS}),
            "ratio to PyTorch eager": (
                categories,
                {b: [m["vs_pytorch_eager"][b] for m in measured] for b in BACKENDS},
            ),
        },
        "CPU inference, random weights: PyTorch eager vs onnxruntime FP32 vs INT8",
    )
    return SectionResult(
        columns=["model", "batch", *BACKENDS],
        rows=[
            [m["model"], str(m["batch"])]
            + [f"{m['images_per_s'][b]:.1f} ({m['vs_pytorch_eager'][b]:.2f}x)" for b in BACKENDS]
            for m in measured
        ],
        figures={
            "rounds": rounds,
            "torch_threads": torch.get_num_threads(),
            "calibration": f"minmax on {CALIBRATION_SAMPLES} digits images",
            "results": measured,
        },
        plots=[plot],
    )
