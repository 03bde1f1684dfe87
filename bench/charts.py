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
    save(figure, path, title)


def stacked_bars(
    path: Path, labels: list[str], series: dict[str, list[float]], title: str, unit: str
) -> None:
    """One bar per label, its height the sum of the series stacked in order (e.g. seconds per stage)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(max(5.0, 0.55 * len(labels) + 2), 4.5))
    bottoms = [0.0] * len(labels)
    for i, (name, values) in enumerate(series.items()):
        axis.bar(range(len(labels)), values, bottom=bottoms, label=name, color=f"C{i % 10}")
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for x, total in enumerate(bottoms):
        axis.annotate(f"{total:.0f}", (x, total), ha="center", va="bottom", fontsize=7)
    axis.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    axis.set_ylabel(unit)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(title, fontsize=10)
    save(figure, path)


def grouped_bars(
    path: Path, panels: dict[str, tuple[list[str], dict[str, list[float]]]], title: str, note: str = ""
) -> None:
    """One panel per entry ``title: (categories, {series: one value per category})``: bars grouped by
    category, one colour per series (the same series keep the same colour across panels)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    widest = max(len(categories) * max(1, len(series)) for categories, series in panels.values())
    figure, axes = pyplot.subplots(
        1, len(panels), figsize=(max(3.4, 0.45 * widest + 1.5) * len(panels), 4.4), squeeze=False
    )
    colours: dict[str, str] = {}
    for axis, (name, (categories, series)) in zip(axes[0], panels.items(), strict=True):
        width = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(categories))]
            bars = axis.bar(xs, values, width, label=label, color=colour)
            axis.bar_label(bars, labels=[_short(v) for v in values], fontsize=7)
        axis.set_xticks(range(len(categories)), categories, fontsize=8)
        axis.set_title(name, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    if note:
        figure.text(0.5, 0.01, note, ha="center", fontsize=7, color="0.3")
    figure.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _short(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def save(figure, path: Path, title: str | None = None) -> None:
    """Give ``figure`` its title, lay it out, write it as a PNG and free it."""
    from matplotlib import pyplot

    if title is not None:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
