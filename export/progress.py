"""Stage progress for the export pipeline: silent for the Python API, rich on the command line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Advance = Callable[[int], None]


class Reporter:
    """Silent reporter; subclasses show progress. ``stage`` yields a function that advances a bar."""

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Advance]:
        yield lambda n=1: None

    def note(self, message: str) -> None:
        """A one-line remark the user should see (e.g. why TensorRT plans were skipped)."""


class RichReporter(Reporter):
    """One line per stage: a spinner (or a bar where the total is known) that ends with its seconds."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Advance]:
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        started = time.perf_counter()
        if self.console.is_terminal:
            with Progress(*columns, console=self.console, transient=True) as progress:
                task = progress.add_task(escape(description), total=total)
                yield lambda n=1: progress.advance(task, n)
        else:  # logs and pipes get one line per finished stage, no redraws
            yield lambda n=1: None
        seconds = time.perf_counter() - started
        self.console.print(f"[green]✓[/green] {escape(description)} [dim]({seconds:.1f} s)[/dim]")

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]•[/yellow] {escape(message)}")
