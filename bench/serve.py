"""The server's benchmarks: compute against onnxruntime in-process, and dynamic batching on vs off (its
overhead against the protocol's floor and against other servers: ``bench.peers``). Every point is
measured in several interleaved rounds (the order of the targets alternates), and the tables show medians
over rounds."""

from __future__ import annotations

import statistics

from bench import BenchContext, SectionResult, register_section
from bench.charts import grouped_bars
from bench.inprocess import run as run_inprocess
from bench.serving import (
    MAX_BATCH,
    NOBATCH,
    closed_loop,
    cnnserve,
    median_point,
    window_settings,
)

OVERHEAD_MODEL = "lenet5"
COMPUTE_MODEL = "resnet18"
CONCURRENCIES = (1, 8)
MIN_SERVED_VS_INPROCESS = 0.9  # served images/s against onnxruntime in-process on the same artifact


def _verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def round_ratios(ours: list[dict], base: list[dict], key: str) -> list[float]:
    """``ours[r][key] / base[r][key]`` for each round ``r``: the two were measured side by side."""
    return [o[key] / b[key] for o, b in zip(ours, base, strict=True)]


def _interleaved(ctx: BenchContext, rounds: int, jobs: list[tuple[str, object]]) -> dict[str, list]:
    """Run every job once per round, reversing the order in every other round, so that a drift in the
    machine's load or a warm-up effect hits all of them alike. ``jobs``: (key, callable)."""
    results: dict[str, list] = {key: [] for key, _ in jobs}
    for r in range(rounds):
        ctx.console.print(f"round {r + 1}/{rounds}", highlight=False)
        for key, job in jobs if r % 2 == 0 else list(reversed(jobs)):
            results[key].append(job())
    return results


# ----------------------------------------------------------------------------------------- compute


def compute_ratios(served: dict[int, list[dict]], inprocess: dict[str, list[dict]]) -> dict:
    """Served images/s against onnxruntime in-process, per round then the median over rounds: at the
    batch the server forms at each concurrency (session built like the server's), and best against best
    (over every in-process configuration measured)."""
    rounds = len(next(iter(served.values())))
    out: dict = {}
    for c, points in served.items():
        batch = min(c, MAX_BATCH)
        same = inprocess.get(f"server options, batch {batch}")
        if same:
            out[f"c{c}_vs_inprocess_batch{batch}"] = statistics.median(
                round_ratios(points, same, "images_per_s")
            )
    out["best_served_vs_best_inprocess"] = statistics.median(
        max(points[r]["images_per_s"] for points in served.values())
        / max(points[r]["images_per_s"] for points in inprocess.values())
        for r in range(rounds)
    )
    return out


@register_section(
    "serve-compute",
    f"{COMPUTE_MODEL} served images/s vs onnxruntime in-process throughput on the same artifact",
)
def serve_compute(ctx: BenchContext) -> SectionResult:
    rounds = 1 if ctx.quick else 3
    timing = window_settings(ctx, seconds_per_request=0.03)
    seconds = 1.0 if ctx.quick else timing["window_s"] * timing["windows"]
    with cnnserve(ctx, [COMPUTE_MODEL]) as server:
        endpoint = server.endpoint(COMPUTE_MODEL, "cnnserve")
        jobs = [(f"served@{c}", lambda c=c: closed_loop(ctx, endpoint, c, **timing)) for c in CONCURRENCIES]
        for defaults in (False, True):
            for batch in sorted({min(c, MAX_BATCH) for c in CONCURRENCIES}):
                key = f"{'onnxruntime defaults' if defaults else 'server options'}, batch {batch}"
                jobs.append(
                    (key, lambda b=batch, d=defaults, k=key: _inprocess(ctx, server.repo, b, seconds, d, k))
                )
        measured = _interleaved(ctx, rounds, jobs)
    served_rounds = {c: measured[f"served@{c}"] for c in CONCURRENCIES}
    inprocess_rounds = {k: v for k, v in measured.items() if not k.startswith("served@")}
    ratios = compute_ratios(served_rounds, inprocess_rounds)
    served = {c: median_point(points) for c, points in served_rounds.items()}
    inprocess = {k: median_point(points) for k, points in inprocess_rounds.items()}
    best = ratios["best_served_vs_best_inprocess"]
    verdict = _verdict(best, MIN_SERVED_VS_INPROCESS)
    plot = ctx.out_dir / "serve-compute.png"
    labels = [f"served c={c}" for c in CONCURRENCIES] + [f"in-process {k}" for k in inprocess]
    values = [served[c]["images_per_s"] for c in CONCURRENCIES] + [
        p["images_per_s"] for p in inprocess.values()
    ]
    grouped_bars(
        plot,
        {"images/s": ([label.replace(", ", "\n") for label in labels], {COMPUTE_MODEL: values})},
        f"{COMPUTE_MODEL} on CPU: served vs onnxruntime in-process (medians of {rounds} rounds)",
        note=", ".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in ratios.items()),
    )
    rows = [
        [
            f"served, concurrency {c}",
            f"{p['images_per_s']:.1f}",
            f"{p['p50_ms']:.1f}",
            _fmt(p["server_cpu_us_per_request"], "{:.0f}"),
            _fmt(p.get("batch_mean")),
        ]
        for c, p in served.items()
    ] + [
        [
            f"in-process, {k}",
            f"{p['images_per_s']:.1f}",
            f"{p['p50_ms']:.1f}",
            f"{p['cpu_us_per_image'] * p['batch']:.0f}",
            str(p["batch"]),
        ]
        for k, p in inprocess.items()
    ]
    return SectionResult(
        columns=["what", "images/s", "p50 ms (request or batch)", "CPU µs/request or batch", "mean batch"],
        rows=rows,
        figures={
            "model": COMPUTE_MODEL,
            "rounds": rounds,
            "served": {str(c): p for c, p in served.items()},
            "inprocess": inprocess,
            "ratios": ratios,
            "targets": {"best_served_vs_best_inprocess >= 0.9": verdict},
        },
        plots=[plot],
        notes=[
            f"best served vs best in-process: {_fmt(best)} ({verdict}); "
            + ", ".join(f"{k}: {_fmt(v)}" for k, v in ratios.items() if k.startswith("c"))
        ],
    )


def _inprocess(ctx: BenchContext, repo, batch: int, seconds: float, defaults: bool, label: str) -> dict:
    point = run_inprocess(repo, COMPUTE_MODEL, batch, seconds, defaults)
    ctx.console.print(
        f"  in-process {label}: {point['images_per_s']:.1f} img/s, {point['p50_ms']:.1f} ms per batch",
        highlight=False,
    )
    return point


# ---------------------------------------------------------------------------------------- batching


@register_section(
    "batching",
    "dynamic batching on vs off at concurrency 8, lenet5 and resnet18, with the batch sizes formed",
)
def batching(ctx: BenchContext) -> SectionResult:
    rounds = 1 if ctx.quick else 3
    models = (OVERHEAD_MODEL, COMPUTE_MODEL)
    concurrency = 8
    with cnnserve(ctx, list(models)) as server:
        jobs = []
        for model in models:
            timing = window_settings(ctx, seconds_per_request=0.03 if model == COMPUTE_MODEL else 0.001)
            for variant, name in (("on", model), ("off", f"{model}{NOBATCH}")):
                endpoint = server.endpoint(name, f"{model} batching {variant}")
                jobs.append(
                    (f"{model}/{variant}", lambda e=endpoint, t=timing: closed_loop(ctx, e, concurrency, **t))
                )
        measured = _interleaved(ctx, rounds, jobs)
    medians = {key: median_point(points) for key, points in measured.items()}
    figures: dict = {"concurrency": concurrency, "rounds": rounds, "models": {}}
    rows, notes = [], []
    for model in models:
        on, off = medians[f"{model}/on"], medians[f"{model}/off"]
        by_round = round_ratios(measured[f"{model}/on"], measured[f"{model}/off"], "images_per_s")
        gain = statistics.median(by_round)  # each round's on/off pair was measured side by side
        figures["models"][model] = {
            "on": on,
            "off": off,
            "images_per_s_on_over_off": gain,
            "on_over_off_by_round": [round(g, 3) for g in by_round],
        }
        notes.append(f"{model}: batching on/off {_fmt(gain)} (mean batch {_fmt(on.get('batch_mean'))})")
        for variant, m in (("on", on), ("off", off)):
            rows.append(
                [
                    model,
                    variant,
                    f"{m['images_per_s']:.1f}",
                    f"{m['p50_ms']:.2f}",
                    f"{m['p99_ms']:.2f}",
                    _fmt(m.get("batch_mean")),
                    _batch_text(m.get("batches", {})),
                ]
            )
    plot = ctx.out_dir / "batching.png"
    panels = {
        "images/s at concurrency 8": (
            list(models),
            {v: [medians[f"{m}/{v}"]["images_per_s"] for m in models] for v in ("on", "off")},
        )
    }
    for model in models:
        sizes = sorted(
            {b for v in ("on", "off") for b in medians[f"{model}/{v}"].get("batches", {})}, key=_bucket_key
        )
        panels[f"{model}: share of batches by size"] = (
            sizes,
            {v: _shares(medians[f"{model}/{v}"].get("batches", {}), sizes) for v in ("on", "off")},
        )
    title = f"dynamic batching on vs off (medians of {rounds} rounds; sizes from /metrics)"
    grouped_bars(plot, panels, title)
    return SectionResult(
        columns=["model", "batching", "images/s", "p50 ms", "p99 ms", "mean batch", "batches by size"],
        rows=rows,
        figures=figures,
        plots=[plot],
        notes=notes,
    )


def _bucket_key(bucket: str) -> float:
    return float(bucket.lstrip(">").split("<")[0])


def _shares(batches: dict[str, int], sizes: list[str]) -> list[float]:
    total = sum(batches.values()) or 1
    return [batches.get(size, 0) / total for size in sizes]


def _batch_text(batches: dict[str, int]) -> str:
    total = sum(batches.values()) or 1
    return ", ".join(
        f"{k}: {v / total:.0%}" for k, v in sorted(batches.items(), key=lambda kv: _bucket_key(kv[0]))
    )
