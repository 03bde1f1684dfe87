"""Results as a terminal table, JSON and CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.options import CLOSED_LOOP
from loadtest.sweep import RunResult, StepResult

CSV_COLUMNS = (
    "step",
    "mode",
    "level",
    "workers",
    "stable",
    "stop_reason",
    "requests",
    "requests_per_s",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "error_count",
    "errors",
    "sent_total",
    "ok_total",
    "client_cpu_utilization",
    "late_fraction",
    "lag_p99_ms",
    "lag_max_ms",
    "fell_behind",
    "server_requests",
    "server_queue_ms",
    "server_compute_ms",
    "server_batch_mean",
)


def _blank_nan(value):
    return "" if isinstance(value, float) and not math.isfinite(value) else value


def csv_row(step: StepResult) -> dict:
    latency = step.latency.as_ms()
    row = {
        "step": step.step,
        "mode": step.mode,
        "level": step.level,
        "workers": step.workers,
        "stable": step.stable,
        "stop_reason": step.stop_reason,
        "requests": step.requests,
        "requests_per_s": round(step.requests_per_s, 3),
        "images_per_s": round(step.images_per_s, 3),
        **{f"{k}_ms": latency[k] for k in ("p50", "p90", "p95", "p99", "max", "mean")},
        "error_count": sum(step.errors.values()),
        "errors": ";".join(f"{code}:{count}" for code, count in sorted(step.errors.items())),
        "sent_total": step.totals.sent,
        "ok_total": step.totals.ok,
        "client_cpu_utilization": round(step.client_cpu_utilization, 3),
    }
    if step.lateness is not None:
        row.update(
            late_fraction=step.lateness.late_fraction,
            lag_p99_ms=step.lateness.p99_s * 1e3,
            lag_max_ms=step.lateness.max_s * 1e3,
            fell_behind=step.fell_behind,
        )
    if step.server is not None:
        row.update(
            server_requests=step.server.requests,
            server_queue_ms=step.server.queue_mean_s * 1e3,
            server_compute_ms=step.server.compute_mean_s * 1e3,
            server_batch_mean=step.server.batch_mean,
        )
    return {k: _blank_nan(v) for k, v in row.items()}


def write_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        for step in result.steps:
            writer.writerow(csv_row(step))


def write_json(result: RunResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")


def _ms(seconds: float) -> str:
    return "-" if not math.isfinite(seconds) else f"{seconds * 1e3:.2f}"


def results_table(result: RunResult) -> Table:
    options = result.options
    open_loop = options.mode != CLOSED_LOOP
    with_server = any(step.server is not None for step in result.steps)
    title = (
        f"{options.model} on {options.url}: {result.payloads.source}, batch {result.payloads.rows}, "
        f"{options.workers} worker{'s' if options.workers > 1 else ''}"
    )
    table = Table(title=title)
    table.add_column("rate/s" if open_loop else "concurrency", justify="right")
    for column in ("req/s", "img/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "errors", "stable"):
        table.add_column(column, justify="right")
    if open_loop:
        for column in ("late", "max lag ms"):
            table.add_column(column, justify="right")
    if with_server:
        for column in ("srv queue ms", "srv compute ms", "srv batch", "srv requests"):
            table.add_column(column, justify="right")
    for step in result.steps:
        latency = step.latency
        cells = [
            f"{step.level:g}",
            f"{step.requests_per_s:.1f}",
            f"{step.images_per_s:.1f}",
            *(_ms(v) for v in (latency.p50, latency.p90, latency.p95, latency.p99, latency.max)),
            str(sum(step.errors.values())),
            "yes" if step.stable else "[yellow]no[/yellow]",
        ]
        if open_loop:
            late = f"{step.lateness.late_fraction:.1%}"
            cells += [f"[yellow]{late}[/yellow]" if step.fell_behind else late, _ms(step.lateness.max_s)]
        if with_server:
            server = step.server
            cells += (
                [
                    _ms(server.queue_mean_s),
                    _ms(server.compute_mean_s),
                    f"{server.batch_mean:.2f}",
                    str(server.requests),
                ]
                if server is not None
                else ["-"] * 4
            )
        table.add_row(*cells)
    return table


def print_results(result: RunResult, console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=200, file=console.file)
    console.print(results_table(result))
