"""``python -m bench --section delay``: a configured queue delay of D µs must add D at concurrency 1, not
D plus the event loop's millisecond timer granularity. lenet5 with delays 0, 200, 500 and 2000 µs (no
preferred size, so a lone request always waits the whole delay), p50 at c=1 in interleaved rounds; the
excess is p50(D) - p50(0) - D, median over rounds. The goal: at most 100 µs."""

from __future__ import annotations

import statistics

from bench import BenchContext, SectionResult, register_section
from bench.charts import bar_chart
from bench.serving import Endpoint, closed_loop, median_point, repository

DELAYS_US = (0, 200, 500, 2000)
MAX_EXCESS_US = 100


def _repository(ctx: BenchContext):
    from harness.repository import copy_entry

    base = repository(ctx, ["lenet5"])
    repo = ctx.work_dir / "delay-repo"
    for delay in DELAYS_US:
        if not (repo / f"lenet5_d{delay}").is_dir():
            copy_entry(
                base / "lenet5",
                repo,
                f"lenet5_d{delay}",
                preferred_batch_sizes=(),
                max_queue_delay_microseconds=delay,
            )
    return repo


@register_section("delay", "lenet5 at c=1: the latency a queue delay of D µs adds, against D")
def delay(ctx: BenchContext) -> SectionResult:
    from harness.server import start_server

    rounds = 1 if ctx.quick else 5
    timing = {"window_s": 0.5, "windows": 2, "duration_s": 2.0, "warmup_s": 0.3, "stability": 0.5}
    repo = _repository(ctx)
    logs = ctx.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = start_server(repo, logs)
    measured: dict[int, list[dict]] = {d: [] for d in DELAYS_US}
    try:
        for r in range(rounds):
            order = DELAYS_US if r % 2 == 0 else tuple(reversed(DELAYS_US))
            for d in order:
                endpoint = Endpoint(f"delay {d}", server.address, f"lenet5_d{d}", server.proc.pid, None)
                measured[d].append(closed_loop(ctx, endpoint, 1, **timing))
    finally:
        server.terminate()
    excess = {
        d: statistics.median(
            (p["p50_ms"] - base["p50_ms"]) * 1e3 - d for p, base in zip(measured[d], measured[0], strict=True)
        )
        for d in DELAYS_US
    }
    medians = {d: median_point(points) for d, points in measured.items()}
    rows = [
        [
            f"{d}",
            f"{medians[d]['p50_ms']:.3f}",
            f"{excess[d]:+.0f}",
            "met" if excess[d] <= MAX_EXCESS_US else "NOT met",
        ]
        for d in DELAYS_US
    ]
    plot = ctx.out_dir / "delay.png"
    bar_chart(
        plot,
        [f"D={d} µs" for d in DELAYS_US],
        {
            "p50 at c=1 (ms)": [medians[d]["p50_ms"] for d in DELAYS_US],
            "excess over D (µs)": list(excess.values()),
        },
        "lenet5: what a configured queue delay costs at concurrency 1",
    )
    return SectionResult(
        columns=["delay µs", "p50 ms", "excess over D µs", f"excess <= {MAX_EXCESS_US} µs"],
        rows=rows,
        figures={
            "points": {str(d): medians[d] for d in DELAYS_US},
            "excess_us": {str(d): excess[d] for d in DELAYS_US},
        },
        plots=[plot],
    )
