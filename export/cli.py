"""``python -m export MODEL [options]``: write checked ONNX / torch.export / TensorRT entries into a model
repository."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from export import calibration as cal
from export.errors import ExportError
from export.int8 import CALIBRATION_METHODS
from export.onnx_export import DEFAULT_OPSET
from export.options import DEFAULT_CALIB_SAMPLES, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_INT8_DROP
from export.pipeline import ExportResult, export_model
from export.progress import Reporter, RichReporter
from export.tensorrt import TENSORRT_MODES
from modelrepo.batching import DEFAULT_LATENCY_BUDGET_MS
from models import UnknownModelError, WeightsError, list_models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a CNN of the family to ONNX fp32 (+ fp16, int8), torch.export programs (fp32, "
        "fp16) and TensorRT plans where TensorRT and a GPU exist, check every artifact against PyTorch, and "
        "write Triton-layout entries <model>, <model>_fp16, <model>_int8.",
    )
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--weights", default="random", help="random (seeded), imagenet, or a checkpoint path")
    p.add_argument("--fp16", action="store_true", help="also write <model>_fp16 (and a TensorRT fp16 plan)")
    p.add_argument("--int8", action="store_true", help="also write <model>_int8 (Q/DQ, calibrated)")
    p.add_argument(
        "--calib",
        default=cal.DIGITS,
        help="int8 calibration images: digits, random or an ImageFolder DIR (default: digits)",
    )
    p.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES, metavar="N")
    p.add_argument("--calib-method", default="entropy", choices=list(CALIBRATION_METHODS))
    p.add_argument(
        "--eval",
        dest="eval_data",
        default="auto",
        metavar="auto|digits|random|DIR",
        help="images for agreement/accuracy; auto: the checkpoint's dataset, else the "
        "calibration source with --int8, else random",
    )
    p.add_argument("--eval-samples", type=int, metavar="N", help="at most N evaluation images (default: all)")
    p.add_argument("--repo", default="model_repository", help="model repository (default: model_repository)")
    p.add_argument("--version", type=int, default=1, help="version folder to write (default: 1)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument(
        "--tensorrt",
        default="auto",
        choices=TENSORRT_MODES,
        help="TensorRT plans for fp16/int8: auto (where TensorRT and a GPU exist), on, off",
    )
    p.add_argument(
        "--no-torch",
        dest="torch",
        action="store_false",
        help="no torch.export programs (model.pt2: the GPU path that needs only CUDA torch)",
    )
    p.add_argument(
        "--max-int8-drop",
        type=float,
        default=DEFAULT_MAX_INT8_DROP,
        metavar="POINTS",
        help="fail when int8 accuracy drops more (trained weights, labelled data)",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        default=DEFAULT_LATENCY_BUDGET_MS,
        metavar="MS",
        help="fit the batching (max_batch_size, preferred size, queue delay) to latencies measured here",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs")
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    return p


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def summary_table(result: ExportResult) -> Table:
    table = Table(title=f"{result.model} -> {result.repo} (version {result.version})")
    for col in (
        "served model",
        "artifact",
        "MiB",
        "max abs err",
        "max rel err",
        "top-1 agree",
        "accuracy",
        "s",
    ):
        table.add_column(col, justify="left" if col in ("served model", "artifact") else "right")
    for e in result.entries:
        for i, artifact in enumerate(e.manifest.artifacts):  # one row per artifact, the primary first
            v = artifact.validation
            parity = v.get("parity") or {}
            acc = _fmt(v.get("accuracy"), ".1%")
            if v.get("accuracy_drop_points") is not None:
                acc += f" ({0.0 - v['accuracy_drop_points']:+.1f})"  # 0.0 - x: no "-0.0"
            table.add_row(
                e.name if i == 0 else "",
                artifact.file,
                f"{(e.version_dir / artifact.file).stat().st_size / 2**20:.1f}",
                _fmt(parity.get("max_abs_error"), ".1e"),
                _fmt(parity.get("max_rel_error"), ".1e"),
                _fmt(v.get("top1_agreement"), ".1%"),
                acc,
                f"{e.seconds:.1f}" if i == 0 else "",
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = Reporter() if args.quiet else RichReporter()
    try:
        result = export_model(
            args.model,
            weights=args.weights,
            fp16=args.fp16,
            int8=args.int8,
            calib=args.calib,
            calib_samples=args.calib_samples,
            calib_method=args.calib_method,
            eval_data=args.eval_data,
            eval_samples=args.eval_samples,
            repo=args.repo,
            version=args.version,
            max_batch_size=args.max_batch_size,
            opset=args.opset,
            force=args.force,
            tensorrt=args.tensorrt,
            torch=args.torch,
            max_int8_drop=args.max_int8_drop,
            seed=args.seed,
            latency_budget_ms=args.latency_budget_ms,
            reporter=reporter,
        )
    except ExportError as e:
        print(f"error: {e.cli_message()}", file=sys.stderr)
        return e.exit_code
    except (UnknownModelError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    console = Console()
    if not console.is_terminal:  # logs: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(summary_table(result))
    for note in result.notes if args.quiet else ():
        print(note)
    for e in result.entries:
        for note in e.manifest.notes:
            print(f"{e.name}: {note}")
    return 0
