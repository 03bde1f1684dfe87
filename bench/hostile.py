"""Issue 18's triggers against the real server: ``python -m bench --section hostile``.

One server (``python -m service``, explicit model control, a hand-made LeNet-shaped model, a short
``--body-timeout`` so the slow clients end) takes each trigger in turn. Per case the table gives what
the server answered, the time to answer, the worst event-loop lag it reported
(``cnnserve_event_loop_lag_seconds``, sampled from the metrics port, which runs on a thread of its own),
its RSS growth over the RSS before the case, and the worst ``GET /v2/health/live`` latency on the main
HTTP port, measured by a prober in a process of its own (``python -m bench.hostile probe``). Everything
is on loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from bench import BenchContext, SectionResult, register_section
from bench.charts import save
from service.protocol.health import HEARTBEAT_SECONDS

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lenet5"
RESNET = "resnet18"  # the 10x overload: a real ResNet-18 (random weights), batches of 8 at most
INFER = f"/v2/models/{MODEL}/infer"
BODY_TIMEOUT_S = 5  # --body-timeout for the run: the slow clients' bodies are dropped after this
SAMPLE_PERIOD_S = 0.05  # loop lag and RSS sampled this often during a case
SETTLE_S = 0.6  # sampled this long after a case too: the heartbeat reports a stall late
CASE_TIMEOUT_S = 60  # no case waits longer for an answer
PROBE_PERIOD_S = 0.05


# ------------------------------------------------------------------------------ request bodies


def gzip_bomb(inflated: int = 32 << 20) -> bytes:
    """``inflated`` zero bytes, gzip-compressed (about a thousandth of their size: 32 MiB fit the index's
    64 KiB body limit, so the server reads and inflates them)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(inflated >> 20)]
    return b"".join([*parts, compressor.flush()])


def json_infer_body(size: int = 30 << 20) -> bytes:
    """A JSON infer request of about ``size`` bytes: LeNet rows of zeros."""
    rows = max(1, size // (1024 * 4))
    data = b",".join([b"0.0"] * (rows * 1024))
    return b'{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,1,32,32],"data":[%s]}]}' % (rows, data)


def binary_infer(datatype: str, shape: list[int], blob: bytes, name: str) -> tuple[bytes, dict]:
    """An infer request with Triton's binary tensor extension: the body and its headers."""
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(blob)},
    }
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def png16(size: int = 5000) -> bytes:
    """A 16-bit greyscale ``size`` x ``size`` PNG of zeros (about 49 KB)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size), np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- the cases


def _status_line(answer) -> str:
    """The status code of the answer read from ``answer`` (a socket's file; "-" when none came)."""
    try:
        parts = answer.readline().split()
    except OSError:
        return "-"
    return parts[1].decode() if len(parts) > 1 else "-"


def send(server, path: str, body: bytes, headers: dict[str, str] | None = None) -> str:
    """POST ``body`` with ``Expect: 100-continue``, so that a server that refuses from the headers
    answers before the body is sent (as curl does for large bodies); the final status code."""
    port = int(server.http_url.rsplit(":", 1)[1])
    fields = {"host": "bench", "content-length": str(len(body)), "expect": "100-continue", **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        answer = sock.makefile("rb")
        status = answer.readline().split()
        if status[1:2] != [b"100"]:
            return status[1].decode() if len(status) > 1 else "-"
        while answer.readline() not in (b"\r\n", b""):
            pass
        with contextlib.suppress(OSError):  # refused part-way: the server closed its side
            sock.sendall(body)
        return _status_line(answer)


def case_gzip_bomb(server) -> Callable[[], str]:
    body = gzip_bomb()
    return lambda: send(server, "/v2/repository/index", body, {"content-encoding": "gzip"})


def case_json_body(server) -> Callable[[], str]:
    body = json_infer_body()
    return lambda: send(server, INFER, body, {"content-type": "application/json"})


def case_zero_shape(server) -> Callable[[], str]:
    import grpc

    from protos import grpc_service_pb2 as pb

    message = pb.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="input", datatype="FP32", shape=[0] * 8_000_000)
    message.raw_input_contents.append(bytes(4096))
    wire = message.SerializeToString()
    options = [("grpc.max_send_message_length", 1 << 26), ("grpc.max_receive_message_length", 1 << 26)]

    def call() -> str:
        with grpc.insecure_channel(server.address, options=options) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda wire: wire,  # serialized before the clock starts
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            try:
                infer(wire, timeout=CASE_TIMEOUT_S)
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

    return call


def _case_slow_bodies(server, clients: int = 20, declared: int = 64 << 20, sent: int = 60 << 20) -> str:
    """``clients`` connections each declare ``declared`` bytes, send ``sent`` and pause."""
    port = int(server.http_url.rsplit(":", 1)[1])
    # a JSON header of 100 bytes, the rest binary: past --max-json-bytes otherwise, refused from its headers
    head = (
        b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-length: %d\r\n" % (INFER.encode(), declared)
        + b"inference-header-content-length: 100\r\n\r\n"
    )
    statuses: list[str] = []
    chunk = bytes(1 << 20)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT_S) as sock:
            try:
                sock.sendall(head)
                for _ in range(sent >> 20):
                    sock.sendall(chunk)
            except OSError:
                pass  # refused unread: the server closed its side
            sock.settimeout(BODY_TIMEOUT_S + 10)
            statuses.append(_status_line(sock.makefile("rb")))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CASE_TIMEOUT_S)
    return _counts(statuses)


def _case_big_header(server, size: int = 1 << 20) -> str:
    port = int(server.http_url.rsplit(":", 1)[1])
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: bench\r\nx-big: " + b"a" * size + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT_S) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        return _status_line(sock.makefile("rb"))


def _case_typo_load(server) -> str:
    from harness.server import http_request

    load = http_request(server.http_url, "POST", f"/v2/repository/models/{MODEL}x/load", b"")
    ready = http_request(server.http_url, "GET", "/v2/health/ready")
    return f"{load.status}, ready {ready.status}"


def case_png16(server) -> Callable[[], str]:
    from protos.wire import serialize_bytes

    body, headers = binary_infer("BYTES", [1], serialize_bytes([png16()]), "image")
    return lambda: send(server, INFER, body, headers)


async def _flood(url: str, model: str, shape: list[int], requests: int) -> list[str]:
    """``requests`` binary FP32 infer requests of ``shape`` to ``model``, all at once, each on a connection
    of its own; their status codes (or the client error's name)."""
    import httpx

    blob = bytes(4 * math.prod(shape))
    body, headers = binary_infer("FP32", shape, blob, "input")
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=CASE_TIMEOUT_S) as http:

        async def one() -> str:
            try:
                answer = await http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
                return str(answer.status_code)
            except httpx.HTTPError as e:
                return type(e).__name__

        return await asyncio.gather(*(one() for _ in range(requests)))


def flooding(model: str, shape: list[int], requests: int = 600) -> Callable[[object], Callable[[], str]]:
    """The case: ``python -m bench.hostile flood`` in a process of its own at the load generator's lower
    priority (real clients run on other machines; here they share the server's two cores)."""

    def prepare(server) -> Callable[[], str]:
        def call() -> str:
            from bench.health import LOAD_NICE, niced

            command = [sys.executable, "-m", "bench.hostile", "flood", "--url", server.http_url]
            command += ["--model", model, "--shape", ",".join(map(str, shape)), "--requests", str(requests)]
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=CASE_TIMEOUT_S + 60,
                preexec_fn=niced(LOAD_NICE),
            )
            if done.returncode != 0:
                return f"flood failed: {done.stderr.strip().splitlines()[-1:]}"
            return _counts(json.loads(done.stdout))

        return call

    return prepare


def case_largest_json(server) -> Callable[[], str]:
    """The largest JSON body --max-json-bytes allows (1 MiB), its batch past the model's maximum."""
    body = json_infer_body(size=(1 << 20) // 5)  # "0.0," is 4 bytes a value: about 1 MiB of JSON
    assert len(body) <= 1 << 20, len(body)
    return lambda: send(server, INFER, body, {"content-type": "application/json"})


def prepared(case: Callable[..., str]) -> Callable[[object], Callable[[], str]]:
    """A case with nothing to prepare."""
    return lambda server: lambda: case(server)


def _counts(statuses: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{s} x{n}" for s, n in sorted(counts.items()))


# name -> prepare(server): builds what the case sends (not timed) and returns the call that sends it
CASES: list[tuple[str, Callable]] = [
    ("gzip bomb (32 KB inflating to 32 MiB) to the index", case_gzip_bomb),
    ("30 MiB JSON infer body", case_json_body),
    ("largest JSON body allowed (1 MiB), batch past the maximum", case_largest_json),
    ("8M-zero shape over gRPC", case_zero_shape),
    ("20 slow clients, 60 of 64 MiB each", prepared(_case_slow_bodies)),
    ("1 MiB header", prepared(_case_big_header)),
    ("typo'd load, explicit mode", prepared(_case_typo_load)),
    ("16-bit 5000x5000 PNG, 32x32 model", case_png16),
    ("600 concurrent LeNet HTTP requests", flooding(MODEL, [1, 1, 32, 32])),
    ("600 concurrent ResNet-18 HTTP requests (10x overload)", flooding(RESNET, [1, 3, 224, 224])),
]


# ---------------------------------------------------------------------------- measuring a case


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Loop lag (from the metrics port) and RSS of the server, sampled on a thread of this process. The
    lag gauge holds the last heartbeat's lateness until the next beat (every 0.1 s), so the value seen at
    the start, left by an earlier case, counts only once a beat has replaced it."""

    def __init__(self, server) -> None:
        self.server = server
        self.lag, self.rss = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        stale, started = None, time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                lag = self.server.metric("cnnserve_event_loop_lag_seconds")
                if stale is None:
                    stale = lag
                if lag != stale or time.monotonic() - started > HEARTBEAT_SECONDS:
                    self.lag = max(self.lag, lag)
            self.rss = max(self.rss, rss_bytes(self.server.proc.pid))
            self._stop.wait(SAMPLE_PERIOD_S)


def measure(server, prepare: Callable) -> dict:
    call = prepare(server)
    before = rss_bytes(server.proc.pid)
    with Sampler(server) as sampler:
        started = time.monotonic()
        status = call()
        answered = time.monotonic()
        time.sleep(SETTLE_S)  # the next heartbeat reports the lag a case caused
    return {
        "status": status,
        "seconds": answered - started,
        "window": [started, answered + SETTLE_S],
        "loop_lag_s": sampler.lag,
        "rss_growth_bytes": max(0, sampler.rss - before),
    }


# -------------------------------------------------------------------------------- the prober


def probe(url: str, duration_s: float, period_s: float, out: Path) -> None:
    """GET ``url`` on a fresh connection every ``period_s`` for up to ``duration_s``, one JSON line per
    probe: [time.monotonic() when sent (system-wide on Linux), latency seconds, outcome]."""
    from bench.health import Target, probe_once

    target = Target("live", "http", url)
    end = time.monotonic() + duration_s
    with out.open("w") as lines:
        while (now := time.monotonic()) < end:
            latency, outcome = probe_once(target)
            lines.write(json.dumps([now, latency, outcome]) + "\n")
            lines.flush()
            time.sleep(max(0.0, period_s - latency))  # the probe period, not a synchronisation


def worst_probe(samples: list[list], window: list[float]) -> float | None:
    """The worst latency of the probes sent within ``window`` (None: none were)."""
    inside = [latency for sent, latency, _ in samples if window[0] <= sent <= window[1]]
    return max(inside, default=None)


# ------------------------------------------------------------------------------------ the section


def _repository(ctx: BenchContext) -> Path:
    from bench.serving import repository
    from harness.repository import add_model, faulty_onnx
    from models import get_labels, get_model_entry
    from models.lenet import DIGIT_LABELS, DIGITS_INPUT

    work = ctx.work_dir
    repo = work / "repo-hostile"
    if not (repo / MODEL).is_dir():
        artifact = work / "hostile-lenet5.onnx"
        faulty_onnx(artifact, DIGITS_INPUT)
        add_model(repo, MODEL, artifact, spec=DIGITS_INPUT, labels=DIGIT_LABELS)
    if not (repo / RESNET).is_dir():
        repository(ctx, [RESNET])  # exports resnet18 once per benchmark run
        spec = get_model_entry(RESNET).input_spec
        artifact = work / "onnx" / f"{RESNET}.onnx"
        labels = get_labels(RESNET)
        add_model(repo, RESNET, artifact, spec=spec, labels=labels, source_model=RESNET, max_batch_size=8)
    return repo


def _cell(seconds: float | None, scale: float = 1e3) -> str:
    return "-" if seconds is None else f"{seconds * scale:.0f}"


@register_section(
    "hostile", "issue 18's triggers against the real server: status, time, loop lag, RSS, probes"
)
def run(ctx: BenchContext) -> SectionResult:
    from bench.health import PROBER_NICE, niced
    from harness.server import start_server

    work = ctx.work_dir / "hostile"
    work.mkdir(parents=True, exist_ok=True)
    repo = _repository(ctx)
    flags = ["--model-control-mode", "explicit", "--load-model", MODEL, "--load-model", RESNET]
    flags += ["--body-timeout", str(BODY_TIMEOUT_S)]
    server = start_server(repo, work, *flags)
    probes = work / "probes.jsonl"
    prober = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.hostile",
            "probe",
            "--url",
            f"{server.http_url}/v2/health/live",
            "--duration",
            "600",
            "--period",
            str(PROBE_PERIOD_S),
            "--out",
            str(probes),
        ],
        cwd=ROOT,
        preexec_fn=niced(PROBER_NICE),  # the kubelet has CPU reserved; the flood runs at LOAD_NICE
    )
    results = {}
    try:
        time.sleep(1.0)  # the prober's first probes (imports) before the first case
        for name, case in CASES:
            ctx.console.print(f"hostile: {name}", highlight=False)
            results[name] = measure(server, case)
    finally:
        prober.terminate()
        prober.wait(10)
        server.terminate()
    samples = [json.loads(line) for line in probes.read_text().splitlines() if line.strip()]
    columns = ["#", "case", "answer", "time to answer ms", "worst loop lag ms", "RSS growth MB"]
    columns.append("worst live ms")
    rows = []
    for name, r in results.items():
        r["worst_live_s"] = worst_probe(samples, r["window"])
        rows.append(
            [
                str(len(rows) + 1),
                name,
                r["status"],
                _cell(r["seconds"]),
                _cell(r["loop_lag_s"]),
                f"{r['rss_growth_bytes'] / 1e6:.0f}",
                _cell(r["worst_live_s"]),
            ]
        )
    notes = [
        f"One `python -m service` (explicit control, a LeNet-shaped linear model, --body-timeout "
        f"{BODY_TIMEOUT_S}), defaults otherwise; loop lag sampled every {SAMPLE_PERIOD_S * 1e3:.0f} ms from "
        f"the metrics port during each case and {SETTLE_S} s after; /v2/health/live probed every "
        f"{PROBE_PERIOD_S * 1e3:.0f} ms on a fresh connection from another process.",
    ]
    plot = ctx.out_dir / "hostile.png"
    timeline(plot, samples, results)
    return SectionResult(columns=columns, rows=rows, figures={"cases": results}, notes=notes, plots=[plot])


def timeline(path: Path, samples: list[list], results: dict[str, dict]) -> None:
    """Every live probe's latency over the run, each case's window shaded and numbered as in the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = samples[0][0] if samples else 0.0
    figure, axes = plt.subplots(figsize=(11, 4))
    axes.plot([t - start for t, _, _ in samples], [latency * 1e3 for _, latency, _ in samples], ".", ms=3)
    for number, r in enumerate(results.values(), 1):
        left, right = (t - start for t in r["window"])
        axes.axvspan(left, right, color="orange" if number % 2 else "gold", alpha=0.25)
        axes.text((left + right) / 2, 1.02, str(number), transform=axes.get_xaxis_transform(), ha="center")
    axes.axhline(50, color="red", lw=0.8)
    axes.set_yscale("log")
    axes.set_xlabel("seconds into the run")
    axes.set_ylabel("GET /v2/health/live, main port (ms)")
    title = "live probes during each hostile case (numbered as in the table); red: 50 ms"
    axes.set_title(title, fontsize=10, pad=18)
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prober = commands.add_parser("probe", help="probe an HTTP health URL, one JSON line per probe")
    prober.add_argument("--url", required=True)
    prober.add_argument("--duration", type=float, default=60.0, help="seconds at most")
    prober.add_argument("--period", type=float, default=PROBE_PERIOD_S, help="seconds between probes")
    prober.add_argument("--out", type=Path, required=True)
    flood = commands.add_parser("flood", help="send many infer requests at once; print their statuses")
    flood.add_argument("--url", required=True)
    flood.add_argument("--model", required=True)
    flood.add_argument("--shape", required=True, help="comma-separated, batch first")
    flood.add_argument("--requests", type=int, default=600)
    args = parser.parse_args(argv)
    if args.command == "probe":
        probe(args.url, args.duration, args.period, args.out)
    else:
        shape = [int(d) for d in args.shape.split(",")]
        print(json.dumps(asyncio.run(_flood(args.url, args.model, shape, args.requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
