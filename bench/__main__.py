"""``python -m bench [--section NAME ...] [--out docs/bench] [--quick] [--list] [--work DIR]``."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import SECTION_MODULES, BenchContext, load_sections
from bench.report import finite


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict:
    import grpc
    import numpy

    info = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "numpy": numpy.__version__,
    }
    for package in ("onnxruntime", "torch"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--section", action="append", choices=list(SECTION_MODULES), help="default: all, in order"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for JSON and PNG files")
    parser.add_argument("--quick", action="store_true", help="short smoke run; figures not for publishing")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--work", type=Path, help="keep exported models and server logs here (default: temp)")
    args = parser.parse_args(argv)
    console = Console()
    if args.list:
        for name in SECTION_MODULES:
            try:
                description = load_sections([name])[name].description
            except ImportError as e:  # a section whose dependencies this machine lacks
                description = f"(cannot import {SECTION_MODULES[name]}: {e})"
            console.print(f"{name}: {description}", highlight=False)
        return 0
    sections = load_sections(args.section)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="loadtest-bench-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        context = BenchContext(out_dir=args.out, quick=args.quick, console=console, work_dir=work)
        for section in sections.values():
            run_section(section, context, command.strip(), args.quick)
    return 0


def run_section(section, context: BenchContext, command: str, quick: bool) -> None:
    console = context.console
    console.rule(f"{section.name}: {section.description}")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before, clock = load_average(), time.monotonic()
    result = section.run(context)
    if result.skipped:
        console.print(f"{section.name}: skipped: {result.skipped}", highlight=False)
        return
    record = {
        "section": section.name,
        "description": section.description,
        "started_at": started,
        "seconds": round(time.monotonic() - clock, 1),
        "command": command,
        "reproduce": f"python -m bench --section {section.name}" + (" --quick" if quick else ""),
        "quick": quick,
        "machine": machine(),
        "load_average_before": load_before,  # 1, 5 and 15 minutes
        "load_average_after": load_average(),
        "figures": result.figures,
        "plots": [str(p) for p in result.plots],
        "notes": result.notes,
    }
    json_path = context.out_dir / f"{section.name}.json"
    json_path.write_text(json.dumps(finite(record), indent=2, allow_nan=False) + "\n")
    table = Table(*result.columns, title=section.name)
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(
        f"load average {load_before} -> {record['load_average_after']}; wrote {json_path}"
        + "".join(f", {p}" for p in result.plots),
        highlight=False,
    )


if __name__ == "__main__":
    sys.exit(main())
