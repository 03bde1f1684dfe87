"""PNG plots of a load test: latency percentiles and throughput against concurrency or rate, and the
server's batch-size distribution per step when its metrics were scraped."""

from __future__ import annotations

import math
from pathlib import Path

from loadtest.options import CLOSED_LOOP
from loadtest.sweep import RunResult

PERCENTILE_STYLES = (("p50", "o-"), ("p90", "s--"), ("p95", "^--"), ("p99", "v-"))


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    return pyplot, figure, list(axes[0])


def _bucket_label(low: float, high: float) -> str:
    if not math.isfinite(high):
        return f">{low:g}"
    if high - low <= 1 and float(high).is_integer():
        return f"{high:g}"
    return f"{low:g}-{high:g}"


def plot_run(result: RunResult, path: Path) -> None:
    steps = result.steps
    open_loop = result.options.mode != CLOSED_LOOP
    x_label = "target rate (requests/s)" if open_loop else "concurrency"
    levels = [step.level for step in steps]
    with_server = any(step.server is not None and step.server.batches for step in steps)
    pyplot, figure, axes = _figure(3 if with_server else 2)

    latency_axis = axes[0]
    for name, style in PERCENTILE_STYLES:
        latency_axis.plot(levels, [getattr(step.latency, name) * 1e3 for step in steps], style, label=name)
    latency_axis.set(xlabel=x_label, ylabel="latency (ms)", title="latency percentiles")
    latency_axis.set_ylim(bottom=0)
    latency_axis.legend()

    throughput_axis = axes[1]
    throughput_axis.plot(levels, [step.requests_per_s for step in steps], "o-", label="requests/s")
    if result.payloads.rows > 1:
        throughput_axis.plot(levels, [step.images_per_s for step in steps], "s--", label="images/s")
    if open_loop:
        throughput_axis.plot(levels, levels, ":", color="grey", label="target")
    throughput_axis.set(xlabel=x_label, ylabel="per second", title="throughput")
    throughput_axis.set_ylim(bottom=0)
    throughput_axis.legend()
    for axis in axes[:2]:
        axis.set_xticks(levels)
        axis.grid(alpha=0.3)
        axis.set_xlim(left=0)

    if with_server:
        _plot_batches(axes[2], result, x_label)
    figure.suptitle(f"{result.options.model} on {result.options.url} ({result.payloads.source})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _plot_batches(axis, result: RunResult, x_label: str) -> None:
    """Stacked share of executed batches per batch-size bucket, one bar per step."""
    labels: dict[tuple[float, float], str] = {}
    for step in result.steps:
        if step.server is not None:
            for bucket in step.server.batch_buckets:
                labels.setdefault((bucket.low, bucket.high), _bucket_label(bucket.low, bucket.high))
    positions = range(len(result.steps))
    bottoms = [0.0] * len(result.steps)
    for key, label in sorted(labels.items()):
        shares = []
        for step in result.steps:
            server = step.server
            if server is None or not server.batches:
                shares.append(0.0)
                continue
            count = next((b.count for b in server.batch_buckets if (b.low, b.high) == key), 0)
            shares.append(count / server.batches)
        if any(shares):
            axis.bar(positions, shares, bottom=bottoms, label=label)
            bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    axis.set_xticks(list(positions), [f"{step.level:g}" for step in result.steps])
    axis.set(xlabel=x_label, ylabel="share of executed batches", title="server batch size", ylim=(0, 1.05))
    axis.legend(title="rows", fontsize=8)
