"""``python -m models``: the registered family with input specs and parameter counts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from models import get_model_entry, list_models


def main() -> None:
    table = Table(title="Registered models")
    for col in ("name", "family", "input", "classes", "published parameters", "ImageNet weights"):
        table.add_column(col)
    for name in list_models():
        e = get_model_entry(name)
        spec = e.input_spec
        table.add_row(
            name,
            e.family,
            f"{spec.color} {spec.channels}x{spec.height}x{spec.width}",
            str(e.num_classes),
            f"{e.published_params:,}" if e.published_params else "-",
            e.torchvision_weights or "-",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
