"""The check's results: a JSON record, a PNG (in-process by batch size, served by concurrency, per input
kind) and a Markdown table ready for BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import finite

KINDS = ("input", "pixels", "image")


def write_json(record: dict, path: Path) -> None:
    path.write_text(json.dumps(finite(record), indent=2, allow_nan=False) + "\n")


def write_plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(record["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        figures = record["models"][model]
        left, right = axes[row]
        for kind in KINDS:
            points = figures["inprocess"]["points"].get(kind, [])
            if points:
                left.plot([p["batch"] for p in points], [p["images_per_s"] for p in points], "o-", label=kind)
            served = figures.get("served", {}).get(kind, [])
            if served:
                right.plot(
                    [p["concurrency"] for p in served], [p["images_per_s"] for p in served], "o-", label=kind
                )
        left.set(
            title=f"{model}: in-process ({figures['inprocess']['label']})", xlabel="batch", ylabel="images/s"
        )
        right.set(title=f"{model}: served through gRPC", xlabel="concurrency", ylabel="images/s")
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.grid(alpha=0.3)
            if axis.get_lines():
                axis.legend()
    fig.suptitle(f"{record['model']} on {record['environment']['gpu'].get('name', 'the CPU (dry run)')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(record: dict) -> str:
    """The table BENCHMARKS.md's GPU section takes."""
    lines = [
        f"{record['model']} on {record['environment']['gpu'].get('name', 'CPU (dry run)')}, "
        f"{record['started_at']}, `{record['command']}`",
        "",
        "| served model | backend | input | in-process img/s (best batch) | served img/s (best c) "
        "| served / in-process | GPU util (served) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, figures in record["models"].items():
        for kind in KINDS:
            inprocess = max(figures["inprocess"]["points"].get(kind, []), key=_ips, default=None)
            served = max(figures.get("served", {}).get(kind, []), key=_ips, default=None)
            if inprocess is None or served is None:
                continue
            utilization = (served.get("gpu_utilization_whole_sweep") or {}).get("mean")
            lines.append(
                f"| {model} | {figures['inprocess']['label']} | {kind} | {inprocess['images_per_s']:.0f} "
                f"(batch {inprocess['batch']}) | {served['images_per_s']:.0f} (c={served['concurrency']}) "
                f"| {figures['ratios'].get(kind, float('nan')):.2f} | "
                + ("-" if utilization is None else f"{utilization:.0%}")
                + " |"
            )
    return "\n".join(lines) + "\n"


def _ips(point: dict) -> float:
    return point["images_per_s"]
