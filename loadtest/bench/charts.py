"""Small matplotlib helpers for benchmark figures (Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path


def bar_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str) -> None:
    """One panel per series (each with its own unit), one bar per label."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(
        1, len(series), figsize=(max(3.2, 0.75 * len(labels)) * len(series), 4.2), squeeze=False
    )
    for axis, (name, values) in zip(axes[0], series.items(), strict=True):
        bars = axis.bar(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
        axis.bar_label(bars, fmt="%.3g", fontsize=7)
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_title(name)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
