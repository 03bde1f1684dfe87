"""Stage progress for the export pipeline: silent for the Python API, rich on the command line."""

from __future__ import annotations

import threading
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
# Where the console is a log or a pipe (no redraws): a line at most this often inside a long stage.
LOG_PROGRESS_SECONDS = 15.0


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
        else:  # logs and pipes: a progress line every LOG_PROGRESS_SECONDS, one line per finished stage
            with _LogProgress(self.console, description, total, started) as advance:
                yield advance
        seconds = time.perf_counter() - started
        self.console.print(
            f"[green]✓[/green] {escape(description)} [dim]({seconds:.1f} s)[/dim]", soft_wrap=True
        )

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]•[/yellow] {escape(message)}", soft_wrap=True)


class _LogProgress:
    """Progress of one stage as plain lines: done/total where the total is known, else the time so far."""

    def __init__(self, console: Console, description: str, total: int | None, started: float) -> None:
        self.console, self.description, self.total, self.started = console, description, total, started
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-progress", daemon=True)

    def __enter__(self) -> Advance:
        self._thread.start()
        return self.advance

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def advance(self, n: int = 1) -> None:
        self.done += n

    def _run(self) -> None:
        while not self._stop.wait(LOG_PROGRESS_SECONDS):
            elapsed = time.perf_counter() - self.started
            done = f" {self.done}/{self.total}" if self.total else ""
            self.console.print(
                f"  … {escape(self.description)}{done} [dim]({elapsed:.0f} s)[/dim]", soft_wrap=True
            )
