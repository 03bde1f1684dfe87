"""Command line: ``python -m loadtest --url HOST:PORT --model NAME [--concurrency 1,2,4 | --rate 50,100]``
(``--protocol http --url http(s)://HOST:PORT`` for KServe v2 over HTTP).

Exit status: 0 done; 1 the target failed (unreachable, not ready, a step with no successful request);
2 a bad argument (also one only the server can judge: unknown model, batch over its max, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from loadtest.options import (
    CLOSED_LOOP,
    GRPC,
    HTTP,
    OPEN_LOOP,
    RANDOM_DATATYPES,
    LoadTestOptions,
    TargetError,
    UsageError,
    check_datatype,
    check_shape,
)
from loadtest.progress import LiveProgress, QuietProgress
from loadtest.security import check_header

PROG = "python -m loadtest"
DEFAULT_WINDOW_S = 2.0  # seconds per measurement window unless --window says otherwise


def number_list(kind, what: str):
    """argparse type: comma-separated positive ``kind`` values, e.g. ``1,2,4,8``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if any(value <= 0 for value in values):
            raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
        return values

    return parse


def positive(kind, allow_zero: bool = False):
    """argparse type: one positive (or, with ``allow_zero``, non-negative) ``kind`` value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be {'zero or ' if allow_zero else ''}positive, got {text!r}"
            )
        return value

    return parse


def _usage_to_argparse(check, *args) -> None:
    try:
        check(*args)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def named_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type: ``NAME:d1,d2,...`` (a name may itself hold colons; dimensions never do)."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(dim) for dim in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME:d1,d2,... (e.g. input:3,224,224), got {text!r}"
        ) from None
    _usage_to_argparse(check_shape, name, shape)
    return name, shape


def named_datatype(text: str) -> tuple[str, str]:
    """argparse type: ``NAME:TYPE`` with a KServe v2 datatype."""
    name, _, datatype = text.rpartition(":")
    _usage_to_argparse(check_datatype, name, datatype.upper())
    return name, datatype.upper()


def header(text: str) -> tuple[str, str]:
    """argparse type: ``KEY=VALUE``."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    _usage_to_argparse(check_header, name, value)
    return name, value


def by_name(pairs: list[tuple[str, object]] | None, flag: str) -> dict:
    named: dict = {}
    for name, value in pairs or ():
        if name in named:
            raise UsageError(f"{flag} {name}: given twice")
        named[name] = value
    return named


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Load-test any KServe v2 server over gRPC or HTTP (cnnserve, Triton, MLServer).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url", required=True, help="gRPC: HOST:PORT; HTTP: http(s)://HOST:PORT (or HOST:PORT)"
    )
    target.add_argument("--protocol", choices=(GRPC, HTTP), default=GRPC, help="KServe v2 over gRPC or HTTP")
    target.add_argument(
        "--http-json",
        action="store_true",
        help="HTTP: plain JSON tensors instead of Triton's binary tensor extension (MLServer needs this)",
    )
    target.add_argument("--model", required=True, help="model name")
    target.add_argument("--model-version", default="", help="model version (empty: the server's choice)")
    target.add_argument("--metrics-url", help="the target's Prometheus endpoint, for the server-side split")
    target.add_argument("--timeout", type=positive(float), default=30.0, help="per-request deadline, seconds")
    target.add_argument(
        "--connect-timeout", type=positive(float), default=3.0, help="seconds to reach the server"
    )

    security = parser.add_argument_group("security")
    security.add_argument(
        "--tls", action="store_true", help="TLS, verifying the server with the system's trusted roots"
    )
    security.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="TLS: verify the server with this CA (PEM)"
    )
    security.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="mutual TLS: client certificate (PEM)"
    )
    security.add_argument("--tls-key", type=Path, metavar="FILE", help="mutual TLS: client private key (PEM)")
    security.add_argument(
        "--tls-server-name", metavar="NAME", help="TLS: the name to expect in the server's certificate"
    )
    security.add_argument(
        "--header",
        type=header,
        action="append",
        metavar="KEY=VALUE",
        help="sent with every call (gRPC metadata, HTTP header); repeatable",
    )

    load = parser.add_argument_group("load")
    levels = load.add_mutually_exclusive_group()
    levels.add_argument(
        "--concurrency",
        type=number_list(int, "integers"),
        help="closed loop: clients in flight, e.g. 1,2,4,8",
    )
    levels.add_argument(
        "--rate", type=number_list(float, "numbers"), help="open loop: Poisson requests/s, e.g. 50,100,200"
    )
    load.add_argument("--batch", type=positive(int), default=1, help="rows (images) per request")
    load.add_argument("--input", dest="input_name", help="input to randomize (default: the FP32 one)")
    load.add_argument(
        "--shape",
        type=named_shape,
        action="append",
        metavar="NAME:d1,d2,...",
        help="an input's shape, without the batch dimension when the model batches (the full shape when "
        "it does not); for inputs the server does not describe or leaves variable (-1); repeatable",
    )
    load.add_argument(
        "--datatype",
        type=named_datatype,
        action="append",
        metavar="NAME:TYPE",
        help=f"an input's datatype ({', '.join(RANDOM_DATATYPES)}); repeatable",
    )
    load.add_argument("--images", type=Path, help="folder of images to send as the BYTES input 'image'")
    load.add_argument("--workers", type=positive(int), default=1, help="client processes")
    load.add_argument("--max-inflight", type=positive(int), default=1024, help="open loop: cap per worker")
    load.add_argument("--seed", type=int, default=0, help="seed for random tensors and arrivals")

    measure = parser.add_argument_group("measurement")
    measure.add_argument(
        "--warmup", type=positive(float, allow_zero=True), default=1.0, help="seconds per step"
    )
    measure.add_argument(
        "--window",
        type=positive(float),
        help=f"seconds per measurement window (default {DEFAULT_WINDOW_S:g}, shortened so that --windows "
        "fit in a shorter --duration)",
    )
    measure.add_argument(
        "--windows", type=positive(int), default=3, help="consecutive windows that must agree"
    )
    measure.add_argument(
        "--stability", type=positive(float), default=0.1, help="relative tolerance of agreement"
    )
    measure.add_argument(
        "--duration", type=positive(float), default=30.0, help="most seconds measured per step"
    )
    measure.add_argument("--max-requests", type=positive(int), help="most requests measured per step")
    measure.add_argument(
        "--late-threshold",
        type=positive(float),
        default=0.005,
        help="open loop: seconds behind schedule = late",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, help="write results as JSON")
    output.add_argument("--csv", type=Path, help="write one CSV row per step")
    output.add_argument("--plot", type=Path, help="write a PNG plot")
    output.add_argument("--quiet", action="store_true", help="no live display")
    return parser


def fitted_window(args: argparse.Namespace) -> tuple[float, str | None]:
    """--window, or the default shortened so that --windows of it fit in --duration (and a note saying so)."""
    if args.window is not None:
        return args.window, None
    if args.windows * DEFAULT_WINDOW_S <= args.duration:
        return DEFAULT_WINDOW_S, None
    window = args.duration / args.windows
    return window, (
        f"{PROG}: --duration {args.duration:g} s holds {args.windows} windows of {window:.3g} s (not the "
        f"default {DEFAULT_WINDOW_S:g} s); short windows agree less often: raise --duration for steadier "
        "figures"
    )


def options_from_args(args: argparse.Namespace) -> LoadTestOptions:
    mode = OPEN_LOOP if args.rate else CLOSED_LOOP
    return LoadTestOptions(
        url=args.url,
        model=args.model,
        model_version=args.model_version,
        mode=mode,
        levels=tuple(args.rate or args.concurrency or (1,)),
        batch=args.batch,
        input_name=args.input_name,
        images=args.images,
        window_s=fitted_window(args)[0],
        windows=args.windows,
        duration_s=args.duration,
        warmup_s=args.warmup,
        stability=args.stability,
        max_requests=args.max_requests,
        workers=args.workers,
        metrics_url=args.metrics_url,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        max_inflight=args.max_inflight,
        late_threshold_s=args.late_threshold,
        seed=args.seed,
        protocol=args.protocol,
        http_json=args.http_json,
        shapes=by_name(args.shape, "--shape"),
        datatypes=by_name(args.datatype, "--datatype"),
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        headers=tuple(args.header or ()),
    )


def _check_outputs(args: argparse.Namespace) -> None:
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot}: expected a .png file name")
    for flag in ("json", "csv", "plot"):
        path = getattr(args, flag)
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"--{flag} {path}: folder {path.parent} does not exist")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        options.validate()
        _check_outputs(args)
    except UsageError as error:
        parser.error(str(error))
    note = fitted_window(args)[1]
    if note:
        print(note, file=sys.stderr)

    # Imported here so that `--help` and argument errors stay fast.
    from loadtest.sweep import run_loadtest

    errors = Console(stderr=True)
    progress = (
        QuietProgress()
        if args.quiet
        else LiveProgress(options.mode, options.windows, options.stability, errors)
    )
    try:
        result = run_loadtest(options, progress)
    except UsageError as error:
        progress.close()
        parser.exit(2, f"{PROG}: error: {error}\n")
    except TargetError as error:
        progress.close()
        parser.exit(1, f"{PROG}: error: {error}\n")
    except KeyboardInterrupt:
        progress.close()
        parser.exit(130, f"{PROG}: interrupted\n")
    _write_outputs(result, args, errors)
    failed = [step for step in result.steps if step.requests == 0]
    for step in failed:
        errors.print(f"[red]step {step.step + 1} measured no successful request ({step.stop_reason})[/red]")
    return 1 if failed else 0


def _write_outputs(result, args: argparse.Namespace, errors: Console) -> None:
    from loadtest.report import print_results, write_csv, write_json

    print_results(result)
    if args.json is not None:
        write_json(result, args.json)
        errors.print(f"wrote {args.json}", highlight=False)
    if args.csv is not None:
        write_csv(result, args.csv)
        errors.print(f"wrote {args.csv}", highlight=False)
    if args.plot is not None:
        from loadtest.plot import plot_run

        plot_run(result, args.plot)
        errors.print(f"wrote {args.plot}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
