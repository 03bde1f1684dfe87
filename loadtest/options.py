"""The settings of one load test, shared by the command line and the benchmarks."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.errors import TargetError, UsageError
from loadtest.security import TlsSettings, check_header
from protos.wire import NUMPY_DTYPES

__all__ = ["CLOSED_LOOP", "GRPC", "HTTP", "OPEN_LOOP", "LoadTestOptions", "TargetError", "UsageError"]

CLOSED_LOOP = "closed"
OPEN_LOOP = "open"
GRPC = "grpc"
HTTP = "http"
# The KServe v2 datatypes a random tensor can be drawn for (BYTES inputs take files: --images).
RANDOM_DATATYPES = tuple(NUMPY_DTYPES)


@dataclass(frozen=True)
class LoadTestOptions:
    url: str
    model: str
    model_version: str = ""
    mode: str = CLOSED_LOOP
    levels: tuple[float, ...] = (1,)  # concurrencies (closed loop) or request rates per second (open loop)
    batch: int = 1
    input_name: str | None = None
    images: Path | None = None
    window_s: float = 2.0
    windows: int = 3
    duration_s: float = 30.0
    warmup_s: float = 1.0
    stability: float = 0.1
    max_requests: int | None = None
    workers: int = 1
    metrics_url: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    max_inflight: int = 1024
    late_threshold_s: float = 0.005
    seed: int = 0
    protocol: str = GRPC
    http_json: bool = False  # HTTP: plain JSON tensors instead of Triton's binary tensor extension
    # Inputs the server does not describe, or described otherwise: name -> shape (without the batch
    # dimension when the model batches) and name -> datatype.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)
    tls: bool = False  # TLS with the system's trusted roots; implied by any tls_* setting or https://
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # sent with every call: gRPC metadata or HTTP headers

    @property
    def max_windows(self) -> int:
        return int(self.duration_s / self.window_s + 1e-9)

    @property
    def address(self) -> str:
        """gRPC: HOST:PORT; HTTP: the base URL, scheme://HOST:PORT."""
        return target_address(self.url, self.protocol, self.tls_settings() is not None)

    def tls_settings(self) -> TlsSettings | None:
        asked = self.tls or any((self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name))
        if not asked and not self.url.startswith("https://"):
            return None
        return TlsSettings(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name)

    def validate(self) -> None:
        """Raise UsageError naming the first setting that cannot work."""
        if self.mode not in (CLOSED_LOOP, OPEN_LOOP):
            raise UsageError(f"mode must be {CLOSED_LOOP!r} or {OPEN_LOOP!r}, got {self.mode!r}")
        flag = "--concurrency" if self.mode == CLOSED_LOOP else "--rate"
        if not self.levels:
            raise UsageError(f"{flag}: expected at least one value")
        if any(level <= 0 for level in self.levels):
            raise UsageError(f"{flag}: values must be positive, got {list(self.levels)}")
        if self.mode == CLOSED_LOOP and any(int(level) != level for level in self.levels):
            raise UsageError(f"--concurrency: values must be whole numbers, got {list(self.levels)}")
        positives = {
            "--batch": self.batch,
            "--window": self.window_s,
            "--windows": self.windows,
            "--duration": self.duration_s,
            "--stability": self.stability,
            "--workers": self.workers,
            "--timeout": self.timeout_s,
            "--connect-timeout": self.connect_timeout_s,
            "--max-inflight": self.max_inflight,
        }
        for flag_name, value in positives.items():
            if value <= 0:
                raise UsageError(f"{flag_name}: must be positive, got {value}")
        if self.warmup_s < 0:
            raise UsageError(f"--warmup: must be zero or positive, got {self.warmup_s}")
        if self.max_requests is not None and self.max_requests <= 0:
            raise UsageError(f"--max-requests: must be positive, got {self.max_requests}")
        if self.max_windows < self.windows:
            raise UsageError(
                f"--duration {self.duration_s:g} s is shorter than --windows {self.windows} x "
                f"--window {self.window_s:g} s; raise --duration or shorten the windows"
            )
        if self.metrics_url is not None and not self.metrics_url.startswith(("http://", "https://")):
            raise UsageError(f"--metrics-url: expected http://HOST:PORT/metrics, got {self.metrics_url!r}")
        self._validate_inputs()
        self._validate_connection()

    def _validate_inputs(self) -> None:
        if self.images is not None and self.input_name is not None:
            raise UsageError("--images sends the BYTES input 'image'; leave out --input")
        if self.images is not None and (self.shapes or self.datatypes):
            raise UsageError(
                "--shape and --datatype describe a random tensor input; leave them out with --images"
            )
        for name, dims in self.shapes.items():
            check_shape(name, dims)
        for name, datatype in self.datatypes.items():
            check_datatype(name, datatype)
        if self.http_json and self.images is not None:
            raise UsageError(
                "--http-json cannot carry image files (KServe v2 JSON has no binary strings); leave out "
                "--http-json to send them with the binary tensor extension"
            )

    def _validate_connection(self) -> None:
        if self.protocol not in (GRPC, HTTP):
            raise UsageError(f"--protocol: expected {GRPC} or {HTTP}, got {self.protocol!r}")
        if self.http_json and self.protocol != HTTP:
            raise UsageError("--http-json needs --protocol http")
        tls = self.tls_settings()
        if tls is not None:
            if self.url.startswith("http://"):
                raise UsageError(f"--url {self.url}: TLS was asked for (--tls*); use an https:// URL")
            tls.check()
        for name, value in self.headers:
            check_header(name, value)
        target_address(self.url, self.protocol, tls is not None)


def check_shape(name: str, dims: tuple[int, ...]) -> None:
    if not name or not dims or any(dim <= 0 for dim in dims):
        shown = ",".join(map(str, dims))
        raise UsageError(f"--shape {name}:{shown}: expected NAME:d1,d2,... with positive dimensions")


def check_datatype(name: str, datatype: str) -> None:
    if datatype == "BYTES":
        raise UsageError(f"--datatype {name}:BYTES: BYTES inputs take encoded files; use --images DIR")
    if not name or datatype not in RANDOM_DATATYPES:
        raise UsageError(
            f"--datatype {name}:{datatype}: unknown datatype; expected one of {', '.join(RANDOM_DATATYPES)}"
        )


def validate_url(url: str) -> None:
    """gRPC --url: HOST:PORT."""
    host, sep, port = url.rpartition(":")
    if "://" in url or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        hint = (
            "; for KServe v2 over HTTP add --protocol http" if url.startswith(("http://", "https://")) else ""
        )
        raise UsageError(
            f"--url: expected HOST:PORT of the gRPC endpoint (e.g. 127.0.0.1:8001), got {url!r}{hint}"
        )


def target_address(url: str, protocol: str, tls: bool) -> str:
    if protocol != HTTP:
        validate_url(url)
        return url
    if "://" not in url:
        url = f"{'https' if tls else 'http'}://{url}"
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or not port_ok:
        raise UsageError(
            f"--url: expected http(s)://HOST:PORT (or HOST:PORT) of the HTTP endpoint "
            f"(e.g. http://127.0.0.1:8000), got {url!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"
