"""Benchmarks behind every figure in BENCHMARKS.md: ``python -m bench [--section NAME ...]``.

A benchmark is a *section*: a function ``run(ctx: BenchContext) -> SectionResult`` registered under a
name with ``@register_section(name, description)`` in a module listed in ``SECTION_MODULES``. The runner
writes each section's figures to ``<out>/<name>.json`` (default ``docs/bench/``), prints its table, and
the section itself saves its plots under ``ctx.out_dir`` (returned in ``SectionResult.plots``) for the
README to embed.

Sections measure on a possibly shared machine, so each reports ratios against a baseline measured in
the same run, in interleaved rounds (``SectionResult.figures``), beside the absolute numbers. A section
that cannot run here (``gpu`` without a CUDA GPU) returns ``SectionResult.skip(reason)``: the runner
prints the reason and keeps the figures an earlier run wrote. Every server and load generator runs in a
process of its own: the servers as subprocesses, the closed loop (``loadtest.sweep.run_loadtest``) in
the benchmark's process, so that the client never shares a GIL with the server it measures.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

SECTION_MODULES = (
    "bench.client",
    "bench.export",
    "bench.serve",
    "bench.gpu",
    "bench.health",
    "bench.reload",
    "bench.soak",
)


@dataclass(frozen=True)
class BenchContext:
    out_dir: Path  # JSON and PNG files go here
    quick: bool  # short windows: a smoke run that checks the section works, not figures to publish
    console: Console
    work_dir: Path  # scratch space shared by the sections of one run (exported models, server logs)


@dataclass
class SectionResult:
    columns: list[str]
    rows: list[list]  # the printed table, one list per row
    figures: dict  # everything measured, written to <out>/<name>.json
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the section could not run here (nothing is written)

    @classmethod
    def skip(cls, reason: str) -> SectionResult:
        return cls(columns=[], rows=[], figures={}, skipped=reason)


SectionRunner = Callable[[BenchContext], SectionResult]


@dataclass(frozen=True)
class Section:
    name: str
    description: str
    run: SectionRunner


_SECTIONS: dict[str, Section] = {}


def register_section(name: str, description: str) -> Callable[[SectionRunner], SectionRunner]:
    def register(run: SectionRunner) -> SectionRunner:
        if name in _SECTIONS:
            raise ValueError(f"benchmark section {name!r} is already registered")
        _SECTIONS[name] = Section(name, description, run)
        return run

    return register


def load_sections() -> dict[str, Section]:
    """Import the section modules (which register themselves) and return the sections by name."""
    for module in SECTION_MODULES:
        importlib.import_module(module)
    return dict(_SECTIONS)
