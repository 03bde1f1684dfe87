"""``python -m bench --section inputs``: what each input kind costs. resnet18 at concurrency 8 with the
FP32 ``input`` tensor (602 kB a row), UINT8 ``pixels`` (a quarter of that, normalized by the server) and
JPEG ``image`` rows (decoded, resized and normalized by the server): images/s and the server's CPU per
image, in interleaved rounds."""

from __future__ import annotations

import io

import numpy as np

from bench import BenchContext, SectionResult, register_section
from bench.charts import bar_chart
from bench.serving import Endpoint, closed_loop, exported_repository, median_point, window_settings

MODEL = "resnet18"
CONCURRENCY = 8
PHOTO_SIZE = (500, 375)  # a typical photo's size, resized by the server to 256 then cropped to 224


def _jpegs(ctx: BenchContext, count: int = 16):
    from PIL import Image

    folder = ctx.work_dir / "jpegs" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i}.jpg"
        if not path.exists():  # smooth random blobs compress like photos, not like noise
            small = rng.integers(0, 256, (PHOTO_SIZE[1] // 25, PHOTO_SIZE[0] // 25, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            path.write_bytes(buffer.getvalue())
    return folder


@register_section("inputs", f"{MODEL} at c={CONCURRENCY}: FP32 input vs UINT8 pixels vs JPEG image")
def inputs(ctx: BenchContext) -> SectionResult:
    from harness.server import start_server

    repo = exported_repository(ctx, [MODEL], "inputs-repo")
    payloads = {
        "input (FP32)": {"input_name": "input"},
        "pixels (UINT8)": {"input_name": "pixels"},
        "image (JPEG)": {"images": _jpegs(ctx)},
    }
    rounds = 1 if ctx.quick else 3
    logs = ctx.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = start_server(repo, logs)
    measured: dict[str, list[dict]] = {label: [] for label in payloads}
    try:
        endpoint = Endpoint(MODEL, server.address, MODEL, server.proc.pid, server.metrics_url)
        timing = window_settings(ctx, 0.05)
        for r in range(rounds):
            order = list(payloads) if r % 2 == 0 else list(reversed(payloads))
            for label in order:
                measured[label].append(
                    closed_loop(ctx, endpoint, CONCURRENCY, payload=payloads[label], **timing)
                )
    finally:
        server.terminate()
    medians = {label: median_point(points) for label, points in measured.items()}
    rows = [
        [
            label,
            f"{m['images_per_s']:.1f}",
            f"{m['server_cpu_us_per_request'] / 1e3:.1f}" if m.get("server_cpu_us_per_request") else "-",
            f"{m['p50_ms']:.0f}",
        ]
        for label, m in medians.items()
    ]
    plot = ctx.out_dir / "inputs.png"
    bar_chart(
        plot,
        list(medians),
        {
            "images/s": [m["images_per_s"] for m in medians.values()],
            "server CPU ms / image": [
                (m.get("server_cpu_us_per_request") or 0) / 1e3 for m in medians.values()
            ],
        },
        f"{MODEL}, concurrency {CONCURRENCY}, one image per request",
    )
    return SectionResult(
        columns=["input", "images/s", "server CPU ms/image", "p50 ms"],
        rows=rows,
        figures={"points": medians},
        plots=[plot],
    )
