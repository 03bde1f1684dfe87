"""The settings of one load test, shared by the command line and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLOSED_LOOP = "closed"
OPEN_LOOP = "open"


class UsageError(Exception):
    """A bad argument, also one found out only by asking the server (unknown model, batch too big)."""


class TargetError(Exception):
    """The target misbehaved: unreachable, not ready, failing, or its metrics could not be read."""


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

    @property
    def max_windows(self) -> int:
        return int(self.duration_s / self.window_s + 1e-9)

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
        if self.images is not None and self.input_name is not None:
            raise UsageError("--images sends the BYTES input 'image'; leave out --input")
        if self.metrics_url is not None and not self.metrics_url.startswith(("http://", "https://")):
            raise UsageError(f"--metrics-url: expected http://HOST:PORT/metrics, got {self.metrics_url!r}")
        validate_url(self.url)


def validate_url(url: str) -> None:
    host, sep, port = url.rpartition(":")
    if "://" in url or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--url: expected HOST:PORT of the gRPC endpoint (e.g. 127.0.0.1:8001), got {url!r}")
