"""``python -m bench.gpucheck [--dry-run] [--model resnet50] [--out DIR]`` (``scripts/gpu-check.sh``).

Exit status: 0 done and every check passed; 1 a check failed (a model that cannot load, answers that
disagree with PyTorch, errors under load, or any error, its traceback in the record); 2 the machine lacks
what the check needs (named first). The record (gpu-check.json) is written after every step and when the
check stops, and the server's logs are kept beside it (logs/).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.gpucheck import CheckFailed, dry_plan, failures, full_plan, run_check


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpucheck", description=__doc__)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (lenet5): what CI runs")
    p.add_argument("--model", help="the family member to check (default: resnet50; dry run: lenet5)")
    p.add_argument(
        "--weights", default="random", help="random (no network), imagenet (cached), or a checkpoint"
    )
    p.add_argument("--out", type=Path, help="results folder (default: $OUT, else ./gpu-check)")
    p.add_argument("--work", type=Path, help="keep the repository, images and logs here (default: temporary)")
    p.add_argument("--budget", type=float, metavar="S", help="seconds for the whole check (default: 450)")
    p.add_argument("--request-batch", type=int, metavar="N", help="rows per gRPC request (default: 8)")
    p.add_argument("--workers", type=int, metavar="N", help="load-test client processes")
    p.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
        help="the server's --backend (default: auto; dry run: torch, the GPU's code path on the CPU)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    plan = dry_plan() if args.dry_run else full_plan()
    overrides = {
        "model": args.model,
        "budget_s": args.budget,
        "request_batch": args.request_batch,
        "workers": args.workers,
        "backend": args.backend,
    }
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    out = args.out or Path(os.environ.get("OUT") or "gpu-check")
    console = Console(stderr=True)
    command = "scripts/gpu-check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = args.work or Path(scratch)
        try:
            record = run_check(plan, out, work, console, weights=args.weights, command=command.strip())
        except CheckFailed as e:
            console.print(f"gpu-check FAILED: {e} (record: {out / 'gpu-check.json'})", highlight=False)
            return 2 if str(e).startswith("missing:") else 1
        except Exception as e:  # a bug or a library's error: recorded with its traceback by run_check
            console.print_exception()
            console.print(f"gpu-check FAILED: {type(e).__name__}: {e} (record: {out / 'gpu-check.json'})")
            return 1
    found = failures(record)
    print((out / "gpu-check.md").read_text())
    for name, verdict in record["goal"].items():
        print(f"goal ({name}): {verdict}")
    for note in record["notes"]:
        print(f"note: {note}")
    for failure in found:
        print(f"FAILED: {failure}")
    written = ", ".join(str(out / f"gpu-check.{suffix}") for suffix in ("json", "png", "md"))
    print(f"wrote {written} in {record['seconds']} s")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
