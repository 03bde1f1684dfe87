"""onnxruntime's own throughput on a served model's artifact, in a process of its own:
``python -m bench.inprocess --repo REPO --model resnet18 --batch 8 --seconds 8 [--defaults]``.

By default the session is built exactly as the server builds it (``service.backends.create_backend``
with the model's config.pbtxt: same intra-op threads, spinning and graph optimizations), so the
comparison with the served figure isolates what serving adds; ``--defaults`` uses a plain
``onnxruntime.InferenceSession`` instead. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _server_backend(repo: Path, model: str):
    from modelrepo.config import read_config
    from modelrepo.layout import versions
    from modelrepo.manifest import Manifest
    from service.backends import choose_artifact, create_backend
    from service.cpus import cpu_budget

    config = read_config(repo / model)
    version_dir = repo / model / str(versions(repo / model)[-1])
    choice = choose_artifact(Manifest.read(version_dir), version_dir, "cpu")
    backend = create_backend(choice, config, "cpu", choice.path.read_bytes(), threads=cpu_budget().cpus)
    return backend.infer, list(config.input[0].dims), backend.describe()


def _default_session(repo: Path, model: str):
    import onnxruntime as ort

    from modelrepo.config import read_config
    from modelrepo.layout import versions
    from modelrepo.manifest import Manifest

    config = read_config(repo / model)
    version_dir = repo / model / str(versions(repo / model)[-1])
    path = version_dir / Manifest.read(version_dir).artifact
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), list(config.input[0].dims), "onnxruntime defaults"


def measure(infer, shape: list[int], batch: int, seconds: float) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    for _ in range(3):
        infer(x)
    times = []
    cpu, end = time.process_time(), time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        infer(x)
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    total = sum(times)
    return {
        "batch": batch,
        "runs": len(times),
        "images_per_s": len(times) * batch / total,
        "p50_ms": float(np.median(times)) * 1e3,
        "p99_ms": float(np.percentile(times, 99)) * 1e3,
        "cpu_us_per_image": cpu / (len(times) * batch) * 1e6,
    }


def run(repo: Path, model: str, batch: int, seconds: float, defaults: bool = False) -> dict:
    """:func:`main` in a fresh process (its own CPU and GIL, no server threads beside it)."""
    command = [sys.executable, "-m", "bench.inprocess", f"--repo={repo}", f"--model={model}"]
    command += [f"--batch={batch}", f"--seconds={seconds}"] + (["--defaults"] if defaults else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--defaults", action="store_true", help="a plain InferenceSession, default options")
    args = parser.parse_args(argv)
    build = _default_session if args.defaults else _server_backend
    infer, shape, described = build(args.repo, args.model)
    result = measure(infer, shape, args.batch, args.seconds)
    print(json.dumps({**result, "session": described}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
