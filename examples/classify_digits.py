"""``python -m examples.classify_digits --repo model_repository``: serve the digits models, classify digits.

The end of the README's main job (``scripts/demo.sh``, after ``models.train`` and ``export``): start
``python -m service`` on free local ports, send the 360 held-out digits of the fixed split
(``models.datasets.digits_split``, never seen in training) to each served model through gRPC, twice:

- ``image``: each digit as PNG bytes, decoded and preprocessed by the server with the manifest's spec,
  answered through Triton's classification extension (top-1 label);
- ``input``: the same digits preprocessed here into FP32 tensors, answered with ``logits``.

Per model and input it prints the accuracy (beside the accuracy ``export`` recorded for the artifact),
client-side latency percentiles and images/s, and the server's own view of the same requests from
/metrics (requests, mean batch size). Then it stops the server with SIGTERM and checks it exits 0.
Exit status: 0 done, 1 the server or an accuracy failed, 2 a bad argument.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.server import ServerProcess, start_server
from loadtest.scrape import ServerSplit, scrape, server_split
from modelrepo.layout import versions
from modelrepo.manifest import Manifest, ManifestError
from modelrepo.preprocess import InputSpec
from service.client import InferenceClient, InferenceServerError

DEFAULT_MODELS = ("lenet5", "lenet5_int8")
INPUTS = ("image", "input")
DIGIT_CLASSES = 10


class DemoError(Exception):
    """Why the demo cannot run; ``exit_code`` 2 for bad arguments, 1 for a failure."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class HeldOut:
    """The held-out digits of one preprocessing spec: PNG bytes, FP32 tensors and labels."""

    pngs: tuple[bytes, ...]
    tensors: np.ndarray  # [N, C, H, W], preprocessed with the spec
    labels: np.ndarray  # [N] class indices


@dataclass
class RunResult:
    """One model classifying every held-out digit through one input."""

    model: str
    input: str
    images: int
    correct: int
    recorded_accuracy: float | None  # what export measured on the same images with onnxruntime
    latency_ms: dict[str, float]  # p50, p90, p99 per request, client side
    images_per_s: float
    server_requests: int | None  # from /metrics, around the run
    server_batch_mean: float | None

    @property
    def accuracy(self) -> float:
        return self.correct / self.images


def heldout_digits(spec: InputSpec) -> HeldOut:
    from models.datasets import digits_split  # imports torch's registry: only once the demo runs

    heldout = digits_split(spec).heldout
    pngs = []
    for image in heldout.images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    tensors, labels = heldout.arrays()
    return HeldOut(tuple(pngs), tensors, labels)


def served_manifest(repo: Path, model: str) -> Manifest:
    """The manifest of the version the server will serve (the latest), checked to be a digits model."""
    found = versions(repo / model)
    if not found:
        raise DemoError(f"--models: {repo / model} holds no version folder (run `python -m export`)", 2)
    try:
        manifest = Manifest.read(repo / model / str(found[-1]))
    except (ManifestError, OSError, ValueError) as e:
        raise DemoError(f"--models: cannot read the manifest of {model}: {e}", 2) from None
    classes = len(manifest.labels or [])
    if classes != DIGIT_CLASSES:
        raise DemoError(
            f"--models: {model} has {classes} classes; the demo classifies digits (10 classes), "
            f"e.g. a model trained by `python -m models.train MODEL --dataset digits`",
            2,
        )
    return manifest


def _timed(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    predictions = call()
    return time.perf_counter() - started, predictions


def _requests(client: InferenceClient, model: str, kind: str, data: HeldOut, batch: int) -> list[Callable]:
    """One callable per request, returning the predicted class index of each row it carries."""
    calls = []
    for start in range(0, len(data.labels), batch):
        stop = min(start + batch, len(data.labels))
        if kind == "image":
            rows = list(data.pngs[start:stop])

            def call(rows=rows):
                return np.asarray([top[0].index for top in client.classify(model, rows, top_k=1)])

        else:
            rows = data.tensors[start:stop]

            def call(rows=rows):
                return client.infer(model, rows).argmax(axis=1)

        calls.append(call)
    return calls


def run_model(
    client: InferenceClient,
    server: ServerProcess,
    model: str,
    kind: str,
    data: HeldOut,
    manifest: Manifest,
    *,
    batch: int,
    concurrency: int,
) -> RunResult:
    """Every held-out digit through ``kind``, ``concurrency`` requests in flight (closed loop)."""
    calls = _requests(client, model, kind, data, batch)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda call: call(), calls[:concurrency]))  # warm the channel and the model up
        before = scrape(server.metrics_url)
        started = time.perf_counter()
        timed = list(pool.map(_timed, calls))
        seconds = time.perf_counter() - started
        after = scrape(server.metrics_url)
    predictions = np.concatenate([p for _, p in timed])
    latencies_ms = np.asarray([t for t, _ in timed]) * 1e3
    split: ServerSplit | None = server_split(before, after, model)
    recorded = (manifest.validation or {}).get("accuracy")
    return RunResult(
        model=model,
        input=kind,
        images=len(data.labels),
        correct=int((predictions == data.labels).sum()),
        recorded_accuracy=recorded,
        latency_ms={f"p{q}": float(np.percentile(latencies_ms, q)) for q in (50, 90, 99)},
        images_per_s=len(data.labels) / seconds,
        server_requests=split.requests if split else None,
        server_batch_mean=split.batch_mean if split else None,
    )


HEADER = (
    f"{'model':<14} {'input':<6} {'images':>6} {'accuracy':>9} {'at export':>10} "
    f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'images/s':>9} {'server requests':>16} {'mean batch':>10}"
)


def format_row(r: RunResult) -> str:
    recorded = f"{r.recorded_accuracy:.2%}" if r.recorded_accuracy is not None else "-"
    requests = str(r.server_requests) if r.server_requests is not None else "-"
    batch = f"{r.server_batch_mean:.2f}" if r.server_batch_mean is not None else "-"
    lat = r.latency_ms
    return (
        f"{r.model:<14} {r.input:<6} {r.images:>6} {r.accuracy:>9.2%} {recorded:>10} "
        f"{lat['p50']:>7.2f} {lat['p90']:>7.2f} {lat['p99']:>7.2f} {r.images_per_s:>9.0f} "
        f"{requests:>16} {batch:>10}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.classify_digits",
        description="Serve digits models with python -m service and classify the held-out digits over gRPC.",
    )
    parser.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository")
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="served models to classify with"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per request (1)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument(
        "--min-accuracy", type=float, default=0.97, help="fail (exit 1) below this accuracy (0.97)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.concurrency < 1:
        parser.error("--batch and --concurrency must be >= 1")
    if not args.repo.is_dir():
        parser.error(f"--repo {args.repo}: no such directory (scripts/demo.sh builds model_repository)")
    return args


def demo(args: argparse.Namespace) -> int:
    manifests = {model: served_manifest(args.repo, model) for model in args.models}
    print("==> preparing the held-out digits (models.datasets.digits_split)", flush=True)
    heldout: dict[InputSpec, HeldOut] = {}
    for manifest in manifests.values():
        if manifest.input_spec not in heldout:
            heldout[manifest.input_spec] = heldout_digits(manifest.input_spec)
    load = [arg for model in args.models for arg in ("--load-model", model)]
    with tempfile.TemporaryDirectory(prefix="cnnserve-demo-") as logs:
        print(f"==> starting python -m service --repo {args.repo} {' '.join(load)}", flush=True)
        try:
            server = start_server(args.repo.resolve(), Path(logs), *load)
        except RuntimeError as e:
            raise DemoError(f"the server did not become ready: {e}") from None
        results: list[RunResult] = []
        try:
            print(f"    gRPC {server.address}, metrics {server.metrics_url}", flush=True)
            client = server.client()
            images = len(next(iter(heldout.values())).labels)
            print(
                f"==> classifying {images} held-out digits per model and input through gRPC "
                f"({args.batch} image(s) per request, {args.concurrency} in flight):\n"
                "    image = PNG bytes the server decodes and preprocesses, input = FP32 tensors\n",
                flush=True,
            )
            print(HEADER, flush=True)
            for model in args.models:
                data = heldout[manifests[model].input_spec]
                for kind in INPUTS:
                    result = run_model(
                        client,
                        server,
                        model,
                        kind,
                        data,
                        manifests[model],
                        batch=args.batch,
                        concurrency=args.concurrency,
                    )
                    results.append(result)
                    print(format_row(result), flush=True)
        except InferenceServerError as e:
            raise DemoError(f"the server answered {e}\n--- server log ---\n{server.log()}") from None
        finally:
            exit_code = server.terminate()
        print(f"\n==> server stopped (SIGTERM): exit {exit_code}", flush=True)
        if exit_code != 0:
            raise DemoError(f"the server exited with {exit_code}\n--- server log ---\n{server.log()}")
    if args.json:
        args.json.write_text(
            json.dumps({"server_exit_code": exit_code, "runs": [asdict(r) for r in results]}, indent=2)
        )
    low = [f"{r.model} ({r.input}): {r.accuracy:.2%}" for r in results if r.accuracy < args.min_accuracy]
    if low:
        raise DemoError(f"accuracy below --min-accuracy {args.min_accuracy:.0%}: {', '.join(low)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return demo(args)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
