"""``python -m service.bench``: the server against the protocol's floor and against onnxruntime in-process.

- lenet5 (overhead-bound): requests/s and p50 of the real server vs a do-nothing KServe v2 server
  (:mod:`service.null_server`, same framework) answering the same requests;
- resnet18 (compute-bound): served images/s vs onnxruntime's own throughput on the same ONNX file;
- dynamic batching on vs off, both models.

Closed-loop clients (:mod:`service.loadgen`) run in their own process. Every figure is a median over
``--rounds`` interleaved rounds, and only ratios measured in the same run are meant to be compared: absolute
numbers depend on the machine and on whatever else it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.loadgen import LoadResult, infer_payload, run_in_subprocess
from service.testing import ServerProcess, add_model, export_onnx, free_port, start_process, start_server

MAX_BATCH = 8


@dataclass
class Row:
    model: str
    target: str  # "null server", "server (batching)", "server (no batching)", "onnxruntime in-process"
    concurrency: int
    rows_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    samples: list[float] = field(default_factory=list)  # rows/s of each round
    cpu_us_per_row: float | None = None  # CPU time of the serving process (all threads) per row


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server: ServerProcess, payload: bytes, concurrency: int, duration: float
) -> tuple[LoadResult, float | None]:
    """One closed-loop run against ``server``, and the server's CPU microseconds per row during it."""
    before = process_cpu_seconds(server.proc.pid)
    result = run_in_subprocess(server.address, payload, concurrency=concurrency, duration=duration)
    after = process_cpu_seconds(server.proc.pid)
    if before is None or after is None or not result.total_requests:
        return result, None
    return result, (after - before) * 1e6 / (result.total_requests * result.rows_per_request)


def median_row(model: str, target: str, results: list[LoadResult], cpu: list[float | None] = ()) -> Row:
    known = [c for c in cpu if c is not None]
    return Row(
        model=model,
        target=target,
        concurrency=results[0].concurrency,
        rows_per_s=statistics.median(r.rows_per_s for r in results),
        requests_per_s=statistics.median(r.requests_per_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        samples=[round(r.rows_per_s, 1) for r in results],
        cpu_us_per_row=statistics.median(known) if known else None,
    )


def build_repository(repo: Path, models: list[str], work: Path) -> dict[str, Path]:
    """Each model twice: `<model>` with dynamic batching (delay 0), `<model>_nobatch` without."""
    from models import get_labels, get_model_entry

    artifacts = {}
    for name in models:
        onnx_path = work / f"{name}.onnx"
        print(f"exporting {name} to ONNX ...", file=sys.stderr, flush=True)
        export_onnx(name, onnx_path)
        spec, labels = get_model_entry(name).input_spec, get_labels(name)
        add_model(
            repo, name, onnx_path, spec=spec, labels=labels, source_model=name, max_batch_size=MAX_BATCH
        )
        add_model(
            repo,
            f"{name}_nobatch",
            onnx_path,
            spec=spec,
            labels=labels,
            source_model=name,
            max_batch_size=MAX_BATCH,
            dynamic_batching=False,
        )
        artifacts[name] = onnx_path
    return artifacts


def start_null_server(classes: int, log_dir: Path) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "service.null_server", "--port", str(port), "--classes", str(classes)]
    return start_process(cmd, f"127.0.0.1:{port}", "", log_dir / f"null-{port}.log", ready_service=None)


ORT_SCRIPT = """
import json, sys, time, numpy as np, onnxruntime as ort
path, batch, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
session = ort.InferenceSession(path, providers=ort.get_available_providers())
name = session.get_inputs()[0].name
shape = [batch] + [d for d in session.get_inputs()[0].shape[1:]]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(3):
    session.run(None, {name: x})
times, end, cpu = [], time.perf_counter() + duration, time.process_time()
while time.perf_counter() < end:
    t = time.perf_counter(); session.run(None, {name: x}); times.append(time.perf_counter() - t)
print(json.dumps({"runs": len(times), "seconds": sum(times), "p50_ms": float(np.median(times) * 1e3),
                  "p99_ms": float(np.percentile(times, 99) * 1e3), "cpu_s": time.process_time() - cpu}))
"""


def onnxruntime_in_process(path: Path, batch: int, duration: float) -> tuple[LoadResult, float]:
    """onnxruntime's own throughput: one process calling session.run back to back (default options)."""
    done = subprocess.run(
        [sys.executable, "-c", ORT_SCRIPT, str(path), str(batch), str(duration)],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 300,
    )
    r = json.loads(done.stdout)
    result = LoadResult(
        concurrency=1,
        requests=r["runs"],
        errors=0,
        seconds=r["seconds"],
        rows_per_request=batch,
        p50_ms=r["p50_ms"],
        p90_ms=r["p50_ms"],
        p99_ms=r["p99_ms"],
    )
    return result, r["cpu_s"] * 1e6 / (r["runs"] * batch)


def random_input(name: str, rows: int = 1) -> np.ndarray:
    from models import get_model_entry

    shape = get_model_entry(name).input_spec.shape
    return np.random.default_rng(0).standard_normal((rows, *shape)).astype(np.float32)


def run_bench(
    models: list[str], concurrencies: list[int], duration: float, rounds: int, work: Path
) -> list[Row]:
    """Every point of every round, interleaved so that a change in the machine's load hits all alike."""
    repo, logs = work / "repo", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    artifacts = build_repository(repo, models, work)
    rows: list[Row] = []
    server = start_server(repo, logs)
    null = start_null_server(10, logs) if "lenet5" in models else None
    try:
        for name in models:
            targets = {
                "server (batching)": (server, name),
                "server (no batching)": (server, f"{name}_nobatch"),
            }
            if name == "lenet5" and null is not None:
                targets = {"null server": (null, name), **targets}
            for c in concurrencies:
                results: dict[str, list[LoadResult]] = {t: [] for t in targets}
                cpu: dict[str, list[float | None]] = {t: [] for t in targets}
                for r in range(rounds):
                    for target, (process, model) in targets.items():
                        print(f"{name} c={c} round {r + 1}/{rounds}: {target}", file=sys.stderr, flush=True)
                        payload = infer_payload(model, random_input(name))
                        result, cpu_per_row = measure(process, payload, c, duration)
                        results[target].append(result)
                        cpu[target].append(cpu_per_row)
                rows += [median_row(name, t, results[t], cpu[t]) for t in targets]
            # onnxruntime alone, while the servers idle (they do not spin): same machine, same moment
            for batch in sorted({1, min(MAX_BATCH, max(concurrencies))}):
                print(f"{name}: onnxruntime in-process, batch {batch}", file=sys.stderr, flush=True)
                measured = [onnxruntime_in_process(artifacts[name], batch, duration) for _ in range(rounds)]
                row = median_row(
                    name, f"onnxruntime in-process (batch {batch})", *zip(*measured, strict=True)
                )
                row.concurrency = 0
                rows.append(row)
    finally:
        server.terminate()
        if null is not None:
            null.terminate()
    return rows


def ratios(rows: list[Row]) -> dict[str, float]:
    """The figures the issue sets targets for."""
    by = {(r.model, r.target, r.concurrency): r for r in rows}
    out: dict[str, float] = {}
    for c in sorted({r.concurrency for r in rows if r.concurrency}):
        floor, ours = by.get(("lenet5", "null server", c)), by.get(("lenet5", "server (batching)", c))
        if floor and ours:
            out[f"lenet5 c={c}: requests/s vs floor"] = ours.requests_per_s / floor.requests_per_s
            out[f"lenet5 c={c}: p50 minus floor (ms)"] = ours.p50_ms - floor.p50_ms
            if floor.cpu_us_per_row and ours.cpu_us_per_row:
                out[f"lenet5 c={c}: server CPU per request, floor/ours"] = (
                    floor.cpu_us_per_row / ours.cpu_us_per_row
                )
        for model in ("lenet5", "resnet18"):
            on, off = by.get((model, "server (batching)", c)), by.get((model, "server (no batching)", c))
            if on and off:
                out[f"{model} c={c}: batching on/off (rows/s)"] = on.rows_per_s / off.rows_per_s
    ort_rows = [r for r in rows if r.model == "resnet18" and r.target.startswith("onnxruntime")]
    served = [r for r in rows if r.model == "resnet18" and r.target.startswith("server")]
    if ort_rows and served:
        best_ort = max(r.rows_per_s for r in ort_rows)
        out["resnet18: best served images/s vs best onnxruntime in-process"] = (
            max(r.rows_per_s for r in served) / best_ort
        )
        best_cpu = min((r.cpu_us_per_row for r in ort_rows if r.cpu_us_per_row), default=None)
        for c in sorted({r.concurrency for r in served}):
            row = by.get(("resnet18", "server (batching)", c))
            if row:
                out[f"resnet18 c={c}: served images/s vs best onnxruntime in-process"] = (
                    row.rows_per_s / best_ort
                )
                batch = min(MAX_BATCH, c)
                same = by.get(("resnet18", f"onnxruntime in-process (batch {batch})", 0))
                if same:
                    key = f"resnet18 c={c}: served images/s vs onnxruntime in-process at batch {batch}"
                    out[key] = row.rows_per_s / same.rows_per_s
                if best_cpu and row.cpu_us_per_row:
                    out[f"resnet18 c={c}: CPU per image, onnxruntime/server"] = best_cpu / row.cpu_us_per_row
    return out


def print_table(rows: list[Row], figures: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cnnserve benchmark (medians; compare ratios, not absolute numbers)")
    for column in (
        "model",
        "target",
        "conc.",
        "rows/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server CPU µs/row",
        "errors",
        "rows/s per round",
    ):
        table.add_column(column, justify="left" if column in ("model", "target") else "right")
    for r in rows:
        table.add_row(
            r.model,
            r.target,
            str(r.concurrency or "-"),
            f"{r.rows_per_s:.1f}",
            f"{r.requests_per_s:.1f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.cpu_us_per_row:.0f}" if r.cpu_us_per_row else "-",
            str(r.errors),
            ", ".join(f"{s:.0f}" for s in r.samples),
        )
    summary = Table(title="ratios")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for key, value in figures.items():
        summary.add_row(key, f"{value:.3f}")
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet18", help="comma-separated registry names")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated closed-loop concurrencies")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per point and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument(
        "--workdir", type=Path, help="keep the repository and logs here (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and ratios to this file")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as tmp:
        work = args.workdir or Path(tmp)
        rows = run_bench(models, concurrencies, args.duration, args.rounds, work)
    figures = ratios(rows)
    print_table(rows, figures)
    print(f"took {time.monotonic() - started:.0f}s", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "ratios": figures}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
