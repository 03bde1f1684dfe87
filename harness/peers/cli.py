"""``python -m harness.peers setup [PEER]...`` and ``python -m harness.peers serve PEER --onnx PATH``."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from harness.peers import mlserver, triton
from harness.peers.common import OnnxModel, PeerUnavailable
from harness.peers.install import cache_root

PEERS = {"triton": triton, "mlserver": mlserver}


def _setup(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.peers or list(PEERS):
        started = time.monotonic()
        try:
            install = PEERS[name].ensure(log=lambda line, name=name: print(f"{name}: {line}", flush=True))
        except PeerUnavailable as e:
            print(f"{name}: unavailable: {e.reason}", file=sys.stderr)
            failed += 1
            continue
        record = install.record
        took = time.monotonic() - started
        what = f"installed in {record['seconds']:.0f}s" if record["built_now"] else "already installed"
        print(f"{name}: {what} ({took:.1f}s now): {install.venv}")
        print(f"{name}: {', '.join(record['requirements'])} on Python {record['python']}")
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> int:
    model = OnnxModel.from_onnx(args.onnx, name=args.name, max_batch_size=args.max_batch_size)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix=f"cnnserve-{args.peer}-"))
    try:
        if args.peer == "triton":
            server = triton.serve_onnx(
                [model],
                work_dir,
                preferred_batch_sizes=args.preferred_batch_size,
                max_queue_delay_us=args.max_queue_delay_us,
                instances=args.instances,
                intra_op_threads=args.threads,
            )
        else:
            server = mlserver.serve_onnx(
                [model],
                work_dir,
                declare_inputs=not args.no_declared_inputs,
                adaptive_batch_size=args.adaptive_batch_size,
                adaptive_batch_time_s=args.adaptive_batch_time,
                intra_op_threads=args.threads,
                metrics=not args.no_metrics,
            )
    except PeerUnavailable as e:
        print(f"{args.peer}: unavailable: {e.reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on SIGTERM as on Ctrl-C
    with server:
        print(f"serving {model.name} ({model.path}): input {model.input_name} FP32 {[-1, *model.dims]}")
        print(server.describe(), flush=True)
        print("Ctrl-C stops it", flush=True)
        try:
            code = server.proc.wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
            return 0
    print(f"{args.peer} exited with {code}; log {server.log_path}:\n{server.log_tail()}", file=sys.stderr)
    return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.peers",
        description=f"Real Triton and MLServer peers for interop tests and benchmarks (cache {cache_root()})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="install the peers' venvs into the cache (once)")
    setup.add_argument("peers", nargs="*", metavar="{triton,mlserver}", help="default: both")
    serve = sub.add_parser("serve", help="serve one ONNX file until Ctrl-C")
    serve.add_argument("peer", choices=list(PEERS))
    serve.add_argument("--onnx", required=True, type=Path, help="model.onnx, e.g. model_repository/lenet5/1/")
    serve.add_argument("--name", help="model name (default: the entry's folder name)")
    serve.add_argument("--max-batch-size", type=int, default=32)
    serve.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: available CPUs)")
    serve.add_argument(
        "--work-dir", type=Path, help="where the repository and the log go (default: a temp dir)"
    )
    t = serve.add_argument_group("triton")
    t.add_argument("--preferred-batch-size", type=int, action="append", default=[], help="repeatable")
    t.add_argument("--max-queue-delay-us", type=int, default=0)
    t.add_argument("--instances", type=int, default=1, help="model instances (one Python stub each)")
    m = serve.add_argument_group("mlserver")
    m.add_argument("--adaptive-batch-size", type=int, default=0, help="> 1 with --adaptive-batch-time: on")
    m.add_argument("--adaptive-batch-time", type=float, default=0.0, help="seconds")
    m.add_argument("--no-declared-inputs", action="store_true", help="ModelMetadata lists no tensors")
    m.add_argument("--no-metrics", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    unknown = [name for name in getattr(args, "peers", []) if name not in PEERS]
    if unknown:
        p.error(f"unknown peer {', '.join(unknown)} (choose from {', '.join(PEERS)})")
    return _setup(args) if args.command == "setup" else _serve(args)
