"""``python -m export.bench``: images/s of PyTorch eager vs onnxruntime FP32 vs onnxruntime INT8 on CPU.

Not a test. Backends are measured in interleaved rounds (one batch each per round) so that load from
other processes on a shared machine hits all of them alike; the figure is the batch size over the
median batch time, and ratios are against PyTorch eager measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from export.calibration import calibration_inputs
from export.int8 import quantize_int8
from export.onnx_export import INPUT_NAME, export_onnx
from export.validate import ort_session
from models import get_model_entry, load_model

BACKENDS = ("pytorch eager", "onnxruntime fp32", "onnxruntime int8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def runners(name: str, work: Path, calib_samples: int) -> dict[str, Callable[[np.ndarray], object]]:
    loaded = load_model(name, weights="random")
    fp32, int8 = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    export_onnx(loaded.model, loaded.input_spec, fp32)
    calib, _ = calibration_inputs("digits", loaded.input_spec, calib_samples)
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


def measure(run: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, rounds: int) -> dict[str, float]:
    """images/s per backend: batch size / median batch time over interleaved rounds (after one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in run}
    for fn in run.values():
        fn(x)
    for _ in range(rounds):
        for label, fn in run.items():
            started = time.perf_counter()
            fn(x)
            times[label].append(time.perf_counter() - started)
    return {label: len(x) / statistics.median(t) for label, t in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "vgg19"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=10, help="timed batches per backend and batch size")
    p.add_argument("--calib-samples", type=int, default=16)
    args = p.parse_args(argv)

    console = Console()
    load = os.getloadavg()
    console.print(
        f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    table = Table(title="CPU inference, random weights (images/s; ratio vs PyTorch eager)")
    for col in ("model", "batch", *BACKENDS):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        for name in args.models:
            with console.status(f"exporting and quantizing {name}"):
                run = runners(name, Path(tmp), args.calib_samples)
            shape = get_model_entry(name).input_spec.shape
            for batch in args.batch_sizes:
                x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
                with console.status(f"{name} batch {batch}"):
                    ips = measure(run, x, args.rounds)
                base = ips["pytorch eager"]
                cells = [f"{ips[b]:.1f} ({ips[b] / base:.2f}x)" for b in BACKENDS]
                table.add_row(name, str(batch), *cells)
                rows.append((name, batch, *cells))
    console.print(table)
    console.print("markdown:")
    print("| model | batch | " + " | ".join(BACKENDS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in BACKENDS) + " |")
    for name, batch, *cells in rows:
        print(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    load = os.getloadavg()
    console.print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
