"""``python -m loadtest.bench [--section NAME ...] [--out docs/bench] [--quick] [--list]``."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.bench import BenchContext, load_sections


def machine() -> dict:
    import grpc

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    sections = load_sections()
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--section", action="append", choices=sorted(sections), help="default: all")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for JSON and PNG files")
    parser.add_argument("--quick", action="store_true", help="short smoke run; figures not for publishing")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    console = Console()
    if args.list:
        for section in sections.values():
            console.print(f"{section.name}: {section.description}", highlight=False)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    context = BenchContext(out_dir=args.out, quick=args.quick, console=console)
    for name in args.section or sorted(sections):
        section = sections[name]
        console.rule(f"{name}: {section.description}")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat()
        result = section.run(context)
        record = {
            "section": name,
            "description": section.description,
            "started_at": started,
            "command": "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick,
            "machine": machine(),
            "figures": result.figures,
            "plots": [str(p) for p in result.plots],
            "notes": result.notes,
        }
        json_path = args.out / f"{name}.json"
        json_path.write_text(json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
        table = Table(*result.columns, title=name)
        for row in result.rows:
            table.add_row(*row)
        console.print(table)
        for note in result.notes:
            console.print(note, highlight=False)
        console.print(f"wrote {json_path}" + "".join(f", {p}" for p in result.plots), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
