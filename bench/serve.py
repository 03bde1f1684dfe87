"""The server's benchmarks (issue 3's targets): overhead against the protocol's floor, compute against
onnxruntime in-process, and dynamic batching on vs off. Every point is measured in several interleaved
rounds (the order of the targets alternates), and the tables show medians over rounds."""

from __future__ import annotations

import statistics

from bench import BenchContext, SectionResult, null_server, register_section
from bench.charts import grouped_bars
from bench.inprocess import run as run_inprocess
from bench.serving import (
    MAX_BATCH,
    NOBATCH,
    Endpoint,
    closed_loop,
    cnnserve,
    median_point,
    window_settings,
)

OVERHEAD_MODEL = "lenet5"
COMPUTE_MODEL = "resnet18"
CONCURRENCIES = (1, 8)
# The targets
MIN_REQUESTS_VS_FLOOR = 0.75
MAX_P50_OVER_FLOOR_MS = 0.5
MIN_SERVED_VS_INPROCESS = 0.9


def _verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _interleaved(ctx: BenchContext, rounds: int, jobs: list[tuple[str, object]]) -> dict[str, list]:
    """Run every job once per round, reversing the order in every other round, so that a drift in the
    machine's load or a warm-up effect hits all of them alike. ``jobs``: (key, callable)."""
    results: dict[str, list] = {key: [] for key, _ in jobs}
    for r in range(rounds):
        ctx.console.print(f"round {r + 1}/{rounds}", highlight=False)
        for key, job in jobs if r % 2 == 0 else list(reversed(jobs)):
            results[key].append(job())
    return results


# ---------------------------------------------------------------------------------------- overhead


def round_ratios(ours: list[dict], base: list[dict], key: str) -> list[float]:
    """``ours[r][key] / base[r][key]`` for each round ``r``: the two were measured side by side."""
    return [o[key] / b[key] for o, b in zip(ours, base, strict=True)]


def overhead_ratios(floor: dict[int, list[dict]], ours: dict[int, list[dict]]) -> dict:
    """The overhead figures the issue sets targets for, per concurrency: the median over rounds of
    cnnserve against the floor measured right beside it in the same round (so that a change in the
    machine's speed between rounds cancels out)."""
    out: dict = {}
    for c in sorted(set(floor) & set(ours)):
        pairs = list(zip(floor[c], ours[c], strict=True))
        out[f"c{c}_requests_per_s_vs_floor"] = statistics.median(
            round_ratios(ours[c], floor[c], "requests_per_s")
        )
        out[f"c{c}_p50_minus_floor_ms"] = statistics.median(o["p50_ms"] - f["p50_ms"] for f, o in pairs)
        cpu = [
            f["server_cpu_us_per_request"] / o["server_cpu_us_per_request"]
            for f, o in pairs
            if f.get("server_cpu_us_per_request") and o.get("server_cpu_us_per_request")
        ]
        out[f"c{c}_server_cpu_floor_over_ours"] = statistics.median(cpu) if cpu else None
    return out


@register_section(
    "serve-overhead",
    f"{OVERHEAD_MODEL} on cnnserve vs the do-nothing KServe v2 server (the protocol's floor): "
    "req/s and p50 at concurrency 1 and 8",
)
def serve_overhead(ctx: BenchContext) -> SectionResult:
    rounds = 1 if ctx.quick else 7
    timing = window_settings(ctx)
    if not ctx.quick:  # short steps, many rounds: more floor/cnnserve pairs measured side by side
        timing.update(window_s=0.5, duration_s=3.0, warmup_s=0.5)
    with (
        null_server.running(
            model=OVERHEAD_MODEL, shape=(1, 32, 32), classes=10, max_batch_size=MAX_BATCH
        ) as null,
        cnnserve(ctx, [OVERHEAD_MODEL]) as server,
    ):
        targets = {
            "floor": Endpoint("floor", null.grpc, OVERHEAD_MODEL, null.pid, null.metrics_url),
            "cnnserve": server.endpoint(OVERHEAD_MODEL, "cnnserve"),
        }
        jobs = [
            (f"{label}@{c}", lambda t=target, c=c: closed_loop(ctx, t, c, **timing))
            for c in CONCURRENCIES
            for label, target in targets.items()
        ]
        measured = _interleaved(ctx, rounds, jobs)
    medians = {key: median_point(points) for key, points in measured.items()}
    floor = {c: medians[f"floor@{c}"] for c in CONCURRENCIES}
    ours = {c: medians[f"cnnserve@{c}"] for c in CONCURRENCIES}
    ratios = overhead_ratios(
        {c: measured[f"floor@{c}"] for c in CONCURRENCIES},
        {c: measured[f"cnnserve@{c}"] for c in CONCURRENCIES},
    )
    per_round = {
        f"c{c}_requests_per_s_vs_floor": [
            round(r, 3)
            for r in round_ratios(measured[f"cnnserve@{c}"], measured[f"floor@{c}"], "requests_per_s")
        ]
        for c in CONCURRENCIES
    }
    targets_met = {
        "c1_requests_per_s_vs_floor >= 0.75": _verdict(
            ratios["c1_requests_per_s_vs_floor"], MIN_REQUESTS_VS_FLOOR
        ),
        "c1_p50_minus_floor_ms <= 0.5": _verdict(
            ratios["c1_p50_minus_floor_ms"], MAX_P50_OVER_FLOOR_MS, higher_is_better=False
        ),
        "c8_requests_per_s_vs_floor >= 0.75": _verdict(
            ratios["c8_requests_per_s_vs_floor"], MIN_REQUESTS_VS_FLOOR
        ),
    }
    categories = [f"c={c}" for c in CONCURRENCIES]
    plot = ctx.out_dir / "serve-overhead.png"
    grouped_bars(
        plot,
        {
            "requests/s": (
                categories,
                {
                    k: [m[c]["requests_per_s"] for c in CONCURRENCIES]
                    for k, m in (("floor", floor), ("cnnserve", ours))
                },
            ),
            "p50 ms": (
                categories,
                {
                    k: [m[c]["p50_ms"] for c in CONCURRENCIES]
                    for k, m in (("floor", floor), ("cnnserve", ours))
                },
            ),
            "server CPU µs/request": (
                categories,
                {
                    k: [m[c]["server_cpu_us_per_request"] or 0.0 for c in CONCURRENCIES]
                    for k, m in (("floor", floor), ("cnnserve", ours))
                },
            ),
        },
        f"{OVERHEAD_MODEL}: cnnserve vs the do-nothing KServe v2 server (medians of {rounds} rounds)",
        note=", ".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in ratios.items() if "cpu" not in k),
    )
    rows = []
    for c in CONCURRENCIES:
        for label, m in (("floor", floor[c]), ("cnnserve", ours[c])):
            rows.append(
                [
                    label,
                    str(c),
                    f"{m['requests_per_s']:.0f}",
                    f"{m['p50_ms']:.2f}",
                    f"{m['p99_ms']:.2f}",
                    _fmt(m["server_cpu_us_per_request"], "{:.0f}"),
                    str(m["errors"]),
                    ", ".join(f"{v:.0f}" for v in m["requests_per_s_by_round"]),
                ]
            )
    notes = [f"{name}: {_fmt(ratios[name.split()[0]])} ({verdict})" for name, verdict in targets_met.items()]
    notes.append(
        f"server CPU floor/ours: c=1 {_fmt(ratios['c1_server_cpu_floor_over_ours'])}, "
        f"c=8 {_fmt(ratios['c8_server_cpu_floor_over_ours'])}"
    )
    return SectionResult(
        columns=[
            "target",
            "conc.",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "errors",
            "req/s by round",
        ],
        rows=rows,
        figures={
            "model": OVERHEAD_MODEL,
            "rounds": rounds,
            "floor": {str(c): floor[c] for c in CONCURRENCIES},
            "cnnserve": {str(c): ours[c] for c in CONCURRENCIES},
            "ratios": ratios,
            "ratios_by_round": per_round,
            "targets": targets_met,
        },
        plots=[plot],
        notes=notes,
    )


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
