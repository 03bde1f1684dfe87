"""Small matplotlib helpers for benchmark figures (Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path


def bar_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str) -> None:
    """Grouped bars: one group per label, one bar per series."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(max(6.0, 1.1 * len(labels) * len(series)), 4.2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        positions = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        bars = axis.bar(positions, values, width, label=name)
        axis.bar_label(bars, fmt="%.3g", fontsize=7)
    axis.set_xticks(range(len(labels)), labels)
    axis.set_title(title)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
