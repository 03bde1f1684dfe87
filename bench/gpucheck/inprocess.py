"""In-process throughput of the backend the server picks, built by the server's own loader (same artifact,
device, precision, graphs and buffers), so that served/in-process compares like with like."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.gpucheck.nvml import GpuSampler

WARMUP_RUNS = 3


def load(repo: Path, name: str, device: str, backend: str = "auto"):
    """The served version of ``name`` as ``python -m service --device DEVICE --backend BACKEND`` builds it
    (blocking; raises ModelLoadError with the reason where it cannot load)."""
    from service.cpus import cpu_budget
    from service.serving.loader import load_versions
    from service.settings import Settings
    from service.telemetry.prometheus import ServerMetrics

    versions = load_versions(
        Settings(repo=repo, device=device, backend=backend),
        ServerMetrics(gpu=False),
        name,
        {},
        cpu_budget().cpus,
    )
    return versions[max(versions)]


def close(served) -> None:
    from service.serving.served import close_backends

    close_backends(served.backends)


def throughput(run: Callable[[object], object], batch, rows: int, seconds: float) -> dict:
    """Rows over the median call time, after a warm-up, calls repeated for ``seconds`` (at least 3)."""
    for _ in range(WARMUP_RUNS):
        run(batch)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"batch": rows, "images_per_s": rows / median, "batch_ms": median * 1e3, "runs": len(times)}


def measure(
    served, batch_sizes: Sequence[int], seconds: float, sampler: GpuSampler, images: Sequence[bytes]
) -> dict:
    """Images/s of ``served``'s first instance per input kind and batch size (``image``: decoding
    included, the way the data plane decodes for this backend, at the largest batch size up to 32 that
    the version serves). A batch the instance refuses as larger than it takes is recorded under
    ``refused``, with the reason, and the rest go on."""
    from service.backends.base import BatchTooLarge
    from service.dataplane.images import decode_images

    backend, io = served.backends[0], served.io
    rng = np.random.default_rng(0)
    results: dict[str, list[dict]] = {"input": [], "pixels": [], "image": []}
    refused: list[dict] = []

    def point(kind: str, run: Callable[[object], object], batch, rows: int) -> None:
        try:
            with sampler.sampling() as sampling:
                measured = throughput(run, batch, rows, seconds)
        except BatchTooLarge as e:
            refused.append({"kind": kind, "batch": rows, "reason": str(e)})
            return
        results[kind].append({**measured, "gpu_utilization": sampling.summary()})

    for rows in batch_sizes:
        point("input", backend.run, rng.standard_normal((rows, *io.input_shape), dtype=np.float32), rows)
        pixels = rng.integers(0, 256, (rows, *io.input_spec.pixels_shape), dtype=np.uint8)
        point("pixels", backend.run, pixels, rows)
    decoder = backend.image_decoder() or decode_images
    rows = max([b for b in batch_sizes if b <= min(32, io.max_batch_size)] or [1])

    def decode_and_run(batch: Sequence[bytes]) -> object:
        return backend.run(decoder(batch, io.input_spec, 25_000_000))

    point("image", decode_and_run, [images[i % len(images)] for i in range(rows)], rows)
    return {
        "backend": backend.describe(),
        "label": backend.label,
        "artifact": served.choice.path.name,
        "precision": served.precision,
        "image_decoding": "on the device" if backend.image_decoder() else "Pillow on the CPU",
        "skipped": list(served.choice.skipped),
        "max_batch_size": io.max_batch_size,
        "points": results,
        "refused": refused,
    }


def best(points: Sequence[dict]) -> float:
    return max((p["images_per_s"] for p in points), default=0.0)
