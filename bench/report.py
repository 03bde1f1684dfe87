"""BENCHMARKS.md blocks that a section writes itself: a markdown table and notes between markers
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` (appended as a new section when absent).
Quick (smoke) runs write nothing: their figures are not for publishing."""

from __future__ import annotations

import datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def update_benchmarks_block(
    name: str,
    columns: list[str],
    rows: list[list[str]],
    notes: list[str],
    *,
    command: str,
    quick: bool,
    path: Path = BENCHMARKS,
) -> bool:
    """Replace (or append) the block of section ``name``; returns whether the file was written."""
    if quick:
        return False
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        [
            begin,
            f"Written by `{command}` on {stamp} "
            f"(JSON and plot: `docs/bench/{name}.json`, `docs/bench/{name}.png`).",
            "",
            markdown_table(columns, rows),
            "",
            *[f"- {note}" for note in notes],
            end,
        ]
    )
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + f"\n\n## `{name}`\n\n{body}\n"
    path.write_text(text)
    return True
