"""Soak: ``python -m bench --section soak`` (about 10 minutes; not in CI).

One ``python -m service`` in poll mode serves lenet5 and resnet18 (exported with random weights) for ten
minutes under a steady open-loop mix of good and bad requests from a driver process of its own
(``python -m bench.soak drive``): FP32 tensors, pixels, PNG images and top-k classification, beside
unknown models, wrong shapes and datatypes, bytes that do not parse, broken images and hostile names.
Halfway through, both models reload: a new lenet5 version is renamed into the repository (the old one
retires) and resnet18's config is rewritten (all its versions rebuilt).

Measured from outside the server: RSS, CPU, open files and threads every 5 s (/proc); per request its
kind, status, latency and answering version (the driver). Reported: RSS over time and its slope, p99 per
minute and its drift (the last three minutes against minutes 1-3), every status by kind (good requests
must all succeed, bad ones must get the status their kind calls for).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench import BenchContext, SectionResult, register_section
from bench.charts import save

ROOT = Path(__file__).resolve().parents[1]
DRIVE_S, QUICK_DRIVE_S = 600.0, 40.0
RATE = 80.0  # requests per second, Poisson arrivals
MAX_INFLIGHT = 64  # the driver's own cap: past it, arrivals wait (and are counted late)
SAMPLE_S = 5.0
INFER = "/inference.GRPCInferenceService/ModelInfer"
OK = "OK"

# kind -> (share of arrivals, the status it must get)
KINDS: dict[str, tuple[float, str]] = {
    "lenet5 tensor": (0.35, OK),
    "lenet5 pixels": (0.08, OK),
    "lenet5 image": (0.10, OK),
    "lenet5 top-3": (0.07, OK),
    "resnet18 tensor": (0.20, OK),
    "unknown model": (0.04, "NOT_FOUND"),
    "wrong shape": (0.04, "INVALID_ARGUMENT"),
    "wrong datatype": (0.03, "INVALID_ARGUMENT"),
    "unparseable bytes": (0.03, "INVALID_ARGUMENT"),
    "broken image": (0.03, "INVALID_ARGUMENT"),
    "hostile name": (0.03, "NOT_FOUND"),
}
GOOD = [kind for kind, (_, status) in KINDS.items() if status == OK]


def payloads(seed: int = 0) -> dict[str, list[bytes]]:
    """A few serialized requests of each kind (rows and values vary)."""
    from PIL import Image

    from protos import grpc_service_pb2 as pb
    from protos.wire import add_input

    rng = np.random.default_rng(seed)

    def request(model: str, name: str, array, **fields) -> bytes:
        message = pb.ModelInferRequest(model_name=model, **fields)
        add_input(message, name, array)
        return message

    def png(size: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, "PNG")
        return buf.getvalue()

    def lenet(rows: int) -> np.ndarray:
        return rng.normal(size=(rows, 1, 32, 32)).astype(np.float32)

    out: dict[str, list] = {kind: [] for kind in KINDS}
    for rows in (1, 2, 4):
        out["lenet5 tensor"].append(request("lenet5", "input", lenet(rows)))
        out["lenet5 pixels"].append(
            request("lenet5", "pixels", rng.integers(0, 256, (rows, 32, 32, 1), dtype=np.uint8))
        )
        out["lenet5 image"].append(request("lenet5", "image", [png(28) for _ in range(rows)]))
        top = request("lenet5", "input", lenet(rows))
        top.outputs.add(name="logits").parameters["classification"].int64_param = 3
        out["lenet5 top-3"].append(top)
        out["unknown model"].append(request(f"resnet{rows}000", "input", lenet(rows)))
        out["wrong shape"].append(
            request("lenet5", "input", rng.normal(size=(rows, 3, 32, 32)).astype(np.float32))
        )
        out["wrong datatype"].append(request("lenet5", "input", lenet(rows).astype(np.float64)))
        out["broken image"].append(request("lenet5", "image", [png(28)[: 40 * rows]]))
        out["hostile name"].append(request("m" * (20_000 * rows), "input", lenet(1)))
    out["resnet18 tensor"].append(
        request("resnet18", "input", rng.normal(size=(1, 3, 224, 224)).astype(np.float32))
    )
    serialized = {kind: [m.SerializeToString() for m in messages] for kind, messages in out.items()}
    serialized["unparseable bytes"] = [
        bytes(rng.integers(0, 256, n, dtype=np.uint8)) + b"\xff" for n in (7, 300, 5000)
    ]
    return serialized


async def drive(address: str, seconds: float, rate: float, seed: int) -> dict:
    """Open-loop Poisson arrivals of the kinds' mix for ``seconds``; returns the records as columns."""
    import grpc

    from protos import grpc_service_pb2 as pb

    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    bodies = payloads(seed)
    records: dict[str, list] = {"t": [], "kind": [], "status": [], "latency": [], "version": [], "late": []}
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        slots = asyncio.Semaphore(MAX_INFLIGHT)
        tasks: set[asyncio.Task] = set()
        start = time.monotonic()

        async def one(kind_index: int, body: bytes, due: float) -> None:
            sent = time.monotonic()
            version = ""
            try:
                response = await call(body, timeout=10)
                status = OK
                if kinds[kind_index] != "resnet18 tensor":
                    version = pb.ModelInferResponse.FromString(response).model_version
            except grpc.aio.AioRpcError as e:
                status = e.code().name
            finally:
                slots.release()
            records["t"].append(round(sent - start, 4))
            records["kind"].append(kind_index)
            records["status"].append(status)
            records["latency"].append(time.monotonic() - sent)
            records["version"].append(version)
            records["late"].append(round(sent - due, 4))

        due = start
        while True:
            due += rng.expovariate(rate)
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival schedule itself
            await slots.acquire()
            index = rng.choices(range(len(kinds)), weights)[0]
            task = asyncio.get_running_loop().create_task(one(index, rng.choice(bodies[kinds[index]]), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    records["kinds"] = kinds
    records["start_monotonic"] = start  # CLOCK_MONOTONIC: the same clock in every process of this machine
    return records


# ------------------------------------------------------------------------------------------ the section


class Sampler(threading.Thread):
    """The server's RSS, CPU seconds, open files and threads every ``SAMPLE_S`` seconds (/proc)."""

    def __init__(self, pid: int, start: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.start_time = pid, start
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def sample(self) -> dict | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "t": round(time.monotonic() - self.start_time, 2),
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
            "load1": os.getloadavg()[0],
            "fds": fds,
            "threads": int(fields["Threads"]),
        }

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            sample = self.sample()
            if sample is not None:
                self.samples.append(sample)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def reload_models(repo: Path) -> None:
    """A new lenet5 version renamed into place (the old one retires), and resnet18's config rewritten (its
    versions rebuilt): what a rollout does to a running server in poll mode."""
    lenet = repo / "lenet5"
    newest = max(int(p.name) for p in lenet.iterdir() if p.name.isdigit())
    staging = repo / f".staging-lenet5-{newest + 1}"
    shutil.copytree(lenet / str(newest), staging)
    staging.rename(lenet / str(newest + 1))
    config = repo / "resnet18" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text)
    os.utime(config)


@register_section(
    "soak", "10 minutes of mixed good and bad requests, two models, a reload halfway: RSS, p99 drift"
)
def run(ctx: BenchContext) -> SectionResult:
    from bench.report import update_benchmarks_block
    from bench.serving import repository
    from harness.server import start_server

    seconds = QUICK_DRIVE_S if ctx.quick else DRIVE_S
    source = repository(ctx, ["lenet5", "resnet18"])
    repo = ctx.work_dir / "repo-soak"
    shutil.rmtree(repo, ignore_errors=True)
    for name in ("lenet5", "resnet18"):
        shutil.copytree(source / name, repo / name)
    logs = ctx.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = ctx.work_dir / "soak-requests.json"
    server = start_server(repo, logs, "--model-control-mode", "poll", "--poll-interval", "2")
    started = time.monotonic()
    sampler = Sampler(server.proc.pid, started)
    first = sampler.sample()
    sampler.samples.append(first)
    sampler.start()
    driver = None
    try:
        driver = _start_driver(server.address, seconds, out)
        reload_at = None
        while driver.poll() is None:
            elapsed = time.monotonic() - started
            if reload_at is None and elapsed >= seconds / 2:
                reload_models(repo)
                reload_at = round(elapsed, 2)
                ctx.console.print(
                    f"  {elapsed:.0f} s: reload (lenet5 version 2 in, resnet18 config rewritten)"
                )
            elif int(elapsed) % 60 == 0 and sampler.samples:
                s = sampler.samples[-1]
                ctx.console.print(
                    f"  {elapsed:.0f} s: RSS {s['rss_mb']:.0f} MB, {s['threads']} threads", highlight=False
                )
            time.sleep(1.0)  # the section's own clock: the driver runs for its fixed time
        if driver.returncode != 0:
            raise RuntimeError(f"the soak driver failed with {driver.returncode}")
        alive = server.proc.poll() is None
        index = [(m.name, m.version, m.state) for m in server.client(timeout=30).repository_index()]
        reload_log = [line for line in server.log().splitlines() if "loaded " in line or "unloaded " in line]
    finally:
        sampler.stop.set()
        if driver is not None and driver.poll() is None:
            driver.kill()
        exit_code = server.terminate()
    records = json.loads(out.read_text())
    offset = records["start_monotonic"] - started  # the driver's times on the section's clock
    records["t"] = [round(t + offset, 4) for t in records["t"]]
    figures = summarize(records, sampler.samples, seconds, reload_at)
    figures.update(alive=alive, exit_code=exit_code, index_after=index, reload_log=reload_log[-6:])
    columns = [
        "kind",
        "requests",
        "must get",
        "statuses",
        "p50 ms",
        "p99 ms",
        "p99 min 1-3",
        "p99 last 3 min",
    ]
    rows = []
    for kind, k in figures["kinds"].items():
        statuses = ", ".join(f"{name} {n}" for name, n in sorted(k["statuses"].items()))
        rows.append(
            [
                kind,
                str(k["requests"]),
                KINDS[kind][1],
                statuses,
                *(_ms(k[key]) for key in ("p50_ms", "p99_ms", "p99_early_ms", "p99_late_ms")),
            ]
        )
    rss, reload, threads, fds = figures["rss"], figures["reload"], figures["threads"], figures["fds"]
    notes = [
        f"{seconds / 60:.0f} minutes at {RATE:.0f} requests/s (Poisson, open loop, at most {MAX_INFLIGHT} "
        f"in flight) from `python -m bench.soak drive`; {figures['requests']} requests, "
        f"{figures['good_failed']} good ones failed, {figures['bad_wrong_status']} bad ones got another "
        "status than their kind's; the driver fell behind its schedule by more than 100 ms for "
        f"{figures['late_fraction'] * 100:.1f}% of arrivals.",
        f"Server RSS (MB): {rss['first']:.0f} at start, {rss['before_reload']:.0f} before the reload, "
        f"{rss['after_reload']:.0f} a minute after it, {rss['last']:.0f} at the end, {rss['max']:.0f} at "
        f"most; median over minutes 1-3 {_ms(rss['median_early'])}, over the last three minutes "
        f"{_ms(rss['median_late'])}; least-squares slope after the first minute "
        f"{rss['slope_mb_per_hour']:+.0f} MB/hour. Threads "
        f"{threads['first']} -> {threads['last']}, open files {fds['first']} -> {fds['last']}; server CPU "
        f"{figures['server_cpu_per_request_ms']:.2f} ms per request.",
        f"Reload at {reload_at:.0f} s: lenet5 version 2 answered from {reload['v2_first_answer_s']} s; good "
        f"requests failed within 30 s of it: {reload['good_failed_around']}. The server was "
        f"{'alive' if alive else 'DEAD'} at the end and exited {exit_code} on SIGTERM.",
        "p99 per kind over minutes 1-3 and over the last three minutes (successful requests; minute 0 "
        f"warms up): the drift is their ratio, {figures['p99_drift']}. Read it against the machine's load "
        f"average, plotted beside RSS (1-minute average {figures['load_average']['min']:.1f} to "
        f"{figures['load_average']['max']:.1f} on {os.cpu_count()} shared cores during the run).",
    ]
    plot = ctx.out_dir / "soak.png"
    _plot(plot, records, sampler.samples, reload_at)
    update_benchmarks_block(
        "soak", columns, rows, notes, command="python -m bench --section soak", quick=ctx.quick
    )
    return SectionResult(columns=columns, rows=rows, figures=figures, plots=[plot], notes=notes)


def _start_driver(address: str, seconds: float, out: Path):
    import subprocess

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "drive",
            "--address",
            address,
            "--seconds",
            str(seconds),
            "--out",
            str(out),
        ],
        cwd=ROOT,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summarize(records: dict, samples: list[dict], seconds: float, reload_at: float | None) -> dict:
    kinds = records["kinds"]
    t = np.asarray(records["t"])
    latency = np.asarray(records["latency"]) * 1e3
    status = np.asarray(records["status"])
    kind = np.asarray(records["kind"])
    begin = float(t.min()) if len(t) else 0.0  # the driver starts a second or two after the server
    early = (begin + 60, begin + 240)  # minutes 1-3 (minute 0 warms up)
    late = (begin + seconds - 180, begin + seconds)
    out_kinds = {}
    drift = {}
    for i, name in enumerate(kinds):
        mine = kind == i
        ok = mine & (status == OK)
        statuses = {s: int(n) for s, n in zip(*np.unique(status[mine], return_counts=True), strict=True)}
        first = latency[ok & (t >= early[0]) & (t < early[1])].tolist()
        last = latency[ok & (t >= late[0]) & (t < late[1])].tolist()
        minutes = np.floor((t - begin) / 60)
        entry = {
            "requests": int(mine.sum()),
            "statuses": statuses,
            "p50_ms": percentile(latency[ok].tolist(), 50),
            "p99_ms": percentile(latency[ok].tolist(), 99),
            "p99_early_ms": percentile(first, 99),
            "p99_late_ms": percentile(last, 99),
            "p99_per_minute_ms": [
                percentile(latency[ok & (minutes == m)].tolist(), 99) for m in range(int(seconds // 60))
            ],
        }
        out_kinds[name] = entry
        if entry["p99_early_ms"] and entry["p99_late_ms"] and KINDS[name][1] == OK:
            drift[name] = round(entry["p99_late_ms"] / entry["p99_early_ms"], 2)
    must = np.asarray([KINDS[kinds[k]][1] for k in kind])
    good = np.isin(kind, [kinds.index(k) for k in GOOD])
    reload = {"v2_first_answer_s": None, "good_failed_around": None}
    if reload_at is not None:
        versions = np.asarray(records["version"])
        v2 = t[(versions == "2") & (status == OK)]
        reload["v2_first_answer_s"] = round(float(v2.min()), 1) if len(v2) else None
        around = good & (np.abs(t - reload_at) < 30)
        reload["good_failed_around"] = int((around & (status != OK)).sum())
    rss = [s["rss_mb"] for s in samples]
    times = [s["t"] for s in samples]
    settled = [(ti, r) for ti, r in zip(times, rss, strict=True) if ti >= 60]

    def at(when: float) -> float:
        return min(samples, key=lambda s: abs(s["t"] - when))["rss_mb"]

    slope = float(np.polyfit(*zip(*settled, strict=True), 1)[0]) * 3600 if len(settled) > 2 else 0.0
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    return {
        "requests": len(t),
        "good_failed": int((good & (status != OK)).sum()),
        "bad_wrong_status": int((~good & (status != must)).sum()),
        "late_fraction": float(np.mean(np.asarray(records["late"]) > 0.1)) if len(t) else 0.0,
        "kinds": out_kinds,
        "p99_drift": drift,
        "reload": reload,
        "reload_at_s": reload_at,
        "rss": {
            "first": rss[0],
            "before_reload": at(reload_at - SAMPLE_S) if reload_at else rss[-1],
            "after_reload": at(reload_at + 60) if reload_at else rss[-1],
            "last": rss[-1],
            "max": max(rss),
            "slope_mb_per_hour": slope,
            "median_early": _median_between(samples, 60, 240),
            "median_late": _median_between(samples, seconds - 180, seconds + 60),
            "series": [[ti, round(r, 1)] for ti, r in zip(times, rss, strict=True)],
        },
        "threads": {"first": samples[0]["threads"], "last": samples[-1]["threads"]},
        "fds": {"first": samples[0]["fds"], "last": samples[-1]["fds"]},
        "server_cpu_per_request_ms": cpu / max(1, len(t)) * 1e3,
        "load_average": {
            "min": min(s["load1"] for s in samples),
            "max": max(s["load1"] for s in samples),
            "series": [[s["t"], s["load1"]] for s in samples],
        },
    }


def _median_between(samples: list[dict], start: float, stop: float) -> float | None:
    values = [s["rss_mb"] for s in samples if start <= s["t"] < stop]
    return statistics.median(values) if values else None


def _plot(path: Path, records: dict, samples: list[dict], reload_at: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    kinds = records["kinds"]
    t = np.asarray(records["t"])
    latency = np.asarray(records["latency"]) * 1e3
    status = np.asarray(records["status"])
    kind = np.asarray(records["kind"])
    figure, axes = pyplot.subplots(3, 1, figsize=(10, 9), sharex=True)
    axes[0].plot([s["t"] for s in samples], [s["rss_mb"] for s in samples], marker=".", label="server RSS")
    axes[0].set_ylabel("server RSS, MB")
    axes[0].set_ylim(bottom=0)
    load = axes[0].twinx()
    load.plot([s["t"] for s in samples], [s["load1"] for s in samples], color="grey", linewidth=0.8)
    load.set_ylabel("machine load average (1 min, grey)")
    load.set_ylim(bottom=0)
    window = 30.0
    edges = np.arange(t.min(), t.max(), window) if len(t) else np.array([0.0])  # whole windows only
    for name in ("lenet5 tensor", "lenet5 image", "resnet18 tensor"):
        i = kinds.index(name)
        ok = (kind == i) & (status == OK)
        p99 = [
            np.percentile(latency[ok & (t >= a) & (t < a + window)], 99)
            if np.any(ok & (t >= a) & (t < a + window))
            else np.nan
            for a in edges[:-1]
        ]
        axes[1].plot(edges[:-1] + window / 2, p99, marker=".", label=name)
    axes[1].set_ylabel(f"p99 per {window:.0f} s, ms")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    for code in sorted(set(status.tolist())):
        counts, _ = np.histogram(t[status == code], bins=edges)
        axes[2].plot(edges[:-1] + window / 2, counts / window, marker=".", label=code)
    axes[2].set_ylabel("requests/s by status")
    axes[2].set_xlabel("seconds")
    axes[2].legend(fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
        if reload_at is not None:
            axis.axvline(reload_at, color="grey", linestyle="--", linewidth=0.8)
    save(figure, path, "soak: lenet5 + resnet18, good and bad requests, a reload (dashed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    drive_parser = commands.add_parser("drive", help="send the soak's request mix, write the records as JSON")
    drive_parser.add_argument("--address", required=True, help="the server's gRPC HOST:PORT")
    drive_parser.add_argument("--seconds", type=float, default=DRIVE_S)
    drive_parser.add_argument("--rate", type=float, default=RATE, help="requests per second")
    drive_parser.add_argument("--seed", type=int, default=0)
    drive_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records = asyncio.run(drive(args.address, args.seconds, args.rate, args.seed))
    args.out.write_text(json.dumps(records))
    statuses: dict[str, int] = {}
    for s in records["status"]:
        statuses[s] = statuses.get(s, 0) + 1
    median = statistics.median(records["latency"]) * 1e3
    print(f"{len(records['t'])} requests: {statuses}; median latency {median:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
