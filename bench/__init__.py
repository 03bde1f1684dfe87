"""Benchmarks behind every figure in BENCHMARKS.md: ``python -m bench [--section NAME ...]``.

A benchmark is a *section*: a function ``run(ctx: BenchContext) -> SectionResult`` registered under a
name with ``@register_section(name, description)`` in the module ``SECTION_MODULES`` names for it. Only
the modules of the sections asked for are imported (the gpu section's machine has no Starlette or
uvicorn, which the client sections' do-nothing server needs). The runner
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

# section name -> the module that registers it, in the order `python -m bench` runs them
SECTION_MODULES = {
    "client": "bench.client",
    "client-api": "bench.client",
    "export": "bench.export",
    "export-times": "bench.export_times",
    "serve-compute": "bench.serve",
    "batching": "bench.serve",
    "peers": "bench.peers",
    "delay": "bench.delay",
    "inputs": "bench.inputs",
    "protocols": "bench.protocols",
    "gpu": "bench.gpu",
    "health": "bench.health",
    "reload": "bench.reload",
    "soak": "bench.soak",
    "hostile": "bench.hostile",
    "image": "bench.image",
}


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


def load_sections(names: list[str] | None = None) -> dict[str, Section]:
    """Import the modules of the sections ``names`` (all: None), which register themselves, and return
    those sections by name, in ``SECTION_MODULES`` order."""
    wanted = list(SECTION_MODULES) if names is None else [n for n in SECTION_MODULES if n in names]
    unknown = sorted(set(names or ()) - set(SECTION_MODULES))
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {unknown}; known: {list(SECTION_MODULES)}")
    for name in wanted:
        importlib.import_module(SECTION_MODULES[name])
        if name not in _SECTIONS:
            raise RuntimeError(f"{SECTION_MODULES[name]} did not register section {name!r}")
    return {name: _SECTIONS[name] for name in wanted}
