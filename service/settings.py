"""One typed settings object for the server: CLI flags over ``SERVE_*`` environment variables over defaults.

The names are a contract (docs/ARCHITECTURE.md): deploy manifests set only the environment variables.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protos.wire import MAX_MESSAGE_BYTES

CONTROL_MODES = ("none", "poll", "explicit")
DEVICES = ("auto", "cpu", "cuda")
BACKEND_PREFERENCES = ("auto", "onnxruntime", "torch", "tensorrt")
LOG_LEVELS = ("debug", "info", "warning", "error")
CHOICES = {
    "model_control_mode": CONTROL_MODES,
    "device": DEVICES,
    "backend": BACKEND_PREFERENCES,
    "log_level": LOG_LEVELS,
}


class SettingsError(ValueError):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    repo: Path = Path("model_repository")
    host: str = "0.0.0.0"
    http_port: int = 8000  # KServe v2 HTTP/REST (0: off)
    grpc_port: int = 8001
    metrics_port: int = 8002  # 0: pick a free port (logged); == http_port: /metrics on the HTTP port
    model_control_mode: str = "none"
    load_model: tuple[str, ...] = ()  # empty: all models (none/poll), no model (explicit)
    poll_interval: float = 5.0  # seconds between repository scans in poll mode
    grace_period: float = 30.0  # seconds SIGTERM waits for queued and in-flight requests
    max_message_bytes: int = MAX_MESSAGE_BYTES  # gRPC receive and send limit, HTTP request body limit
    # The JSON part of an HTTP infer request, parsed on the event loop while it holds the GIL (json.loads
    # and numpy's conversion keep it, so no thread helps): measured at about 2 MiB of FP32 tensor JSON per
    # 50 ms on a 2-core host under load, so 1 MiB keeps a request's stall near 25 ms. Larger tensors
    # travel as binary data (Triton's binary tensor extension) or over gRPC.
    max_json_bytes: int = 1 << 20
    device: str = "auto"
    backend: str = "auto"  # the runtime tried first where a version has its artifact (auto: the ranking)
    log_level: str = "info"
    health_port: int = 8003  # gRPC health on a thread of its own, for probes (0: pick a free port)
    max_inflight: int = 1024  # requests accepted and not yet answered, server-wide
    # Request bytes held in flight, every front end: HTTP bodies (reserved before they are read), then the
    # checked tensors of every inference request. 256 MiB leaves a 2 GiB pod room for models and batches.
    max_inflight_bytes: int = 256 << 20
    body_timeout: float = 30.0  # seconds an HTTP request body may stall between chunks before it is dropped
    # HTTP requests worked on at once (routed, read, inferred, answered); more wait unread in their
    # connections, so a burst cannot hold the event loop (service.protocol.http_admission). 0: no limit.
    max_active_http_requests: int = 128
    max_image_pixels: int = 25_000_000  # per encoded image, checked from its header before decoding
    tls_cert: Path | None = None  # PEM server certificate (chain): TLS on the gRPC and HTTP ports
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_client_ca: Path | None = None  # PEM CA bundle: clients must present a certificate it signed
    restricted_protocol: tuple[str, ...] = ()  # "GROUP[,GROUP...]:KEY=VALUE" each
    tune: bool = False  # re-fit each model's batching to latencies measured at warm-up
    repo_wait: bool = False  # start though `repo` does not exist yet (a volume that mounts late)

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        for name in ("http_port", "grpc_port", "metrics_port", "health_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{_describe(name)} must be a port number 0..65535, got {port}")
        if self.poll_interval <= 0:
            raise SettingsError(f"{_describe('poll_interval')} must be > 0 seconds, got {self.poll_interval}")
        if self.body_timeout <= 0:
            raise SettingsError(f"{_describe('body_timeout')} must be > 0 seconds, got {self.body_timeout}")
        if self.grace_period < 0:
            raise SettingsError(f"{_describe('grace_period')} must be >= 0 seconds, got {self.grace_period}")
        if self.max_message_bytes < 1024:
            raise SettingsError(
                f"{_describe('max_message_bytes')} must be at least 1024 bytes, got {self.max_message_bytes}"
            )
        for name in ("max_inflight", "max_inflight_bytes", "max_image_pixels", "max_json_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_describe(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_active_http_requests < 0:
            raise SettingsError(
                f"{_describe('max_active_http_requests')} must be >= 0 (0: no limit), "
                f"got {self.max_active_http_requests}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError(f"{_describe('tls_cert')} and {_describe('tls_key')} go together")
        if self.repo_wait and self.model_control_mode == "none":
            raise SettingsError(
                f"{_describe('repo_wait')} needs {_describe('model_control_mode')} poll (or explicit): "
                "with none, a repository that appears later would never be loaded"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError(f"{_describe('tls_client_ca')} needs {_describe('tls_cert')} and its key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise SettingsError(f"{_describe(name)}: no such file {path}")


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(value)
    return lowered in ("1", "true", "yes", "on")


def _restrictions(value: str) -> tuple[str, ...]:
    """';'-separated restriction specs (each checked by service.protocol.security)."""
    return tuple(n.strip() for n in value.split(";") if n.strip())


OPTIONS: dict[str, _Option] = {
    "repo": _Option("--repo", "SERVE_REPO", Path, "model repository folder"),
    "host": _Option("--host", "SERVE_HOST", str, "address to bind (every port)"),
    "http_port": _Option("--http-port", "SERVE_HTTP_PORT", int, "KServe v2 HTTP/REST port (0: off)"),
    "grpc_port": _Option("--grpc-port", "SERVE_GRPC_PORT", int, "gRPC port"),
    "metrics_port": _Option(
        "--metrics-port",
        "SERVE_METRICS_PORT",
        int,
        "Prometheus port (0: any free; the HTTP port's number: /metrics on the HTTP port)",
    ),
    "model_control_mode": _Option(
        "--model-control-mode", "SERVE_MODEL_CONTROL_MODE", str, "none | poll | explicit"
    ),
    "load_model": _Option(
        "--load-model", "SERVE_LOAD_MODEL", _names, "model to load at startup (repeatable)", repeatable=True
    ),
    "poll_interval": _Option(
        "--poll-interval", "SERVE_POLL_INTERVAL_SECONDS", float, "seconds between repository scans (poll)"
    ),
    "grace_period": _Option(
        "--grace-period", "SERVE_GRACE_PERIOD_SECONDS", float, "seconds to drain requests on SIGTERM"
    ),
    "max_message_bytes": _Option(
        "--max-message-bytes",
        "SERVE_MAX_MESSAGE_BYTES",
        int,
        "largest gRPC message received or sent, and largest HTTP request body",
    ),
    "max_json_bytes": _Option(
        "--max-json-bytes",
        "SERVE_MAX_JSON_BYTES",
        int,
        "largest JSON part of an HTTP infer request (larger: 413; send binary tensor data or use gRPC)",
    ),
    "device": _Option("--device", "SERVE_DEVICE", str, "auto | cpu | cuda"),
    "backend": _Option(
        "--backend",
        "SERVE_BACKEND",
        str,
        "auto | onnxruntime | torch | tensorrt: the runtime tried first, where a version has its artifact",
    ),
    "log_level": _Option("--log-level", "SERVE_LOG_LEVEL", str, "debug | info | warning | error"),
    "health_port": _Option(
        "--health-port",
        "SERVE_HEALTH_PORT",
        int,
        "gRPC health port answered apart from inference (0: any free)",
    ),
    "max_inflight": _Option(
        "--max-inflight", "SERVE_MAX_INFLIGHT", int, "requests in flight before RESOURCE_EXHAUSTED"
    ),
    "max_inflight_bytes": _Option(
        "--max-inflight-bytes",
        "SERVE_MAX_INFLIGHT_BYTES",
        int,
        "request bytes in flight (HTTP bodies before they are read, then tensors) before "
        "RESOURCE_EXHAUSTED / 429",
    ),
    "body_timeout": _Option(
        "--body-timeout",
        "SERVE_BODY_TIMEOUT_SECONDS",
        float,
        "seconds an HTTP request body may stall between chunks before it is dropped (408)",
    ),
    "max_active_http_requests": _Option(
        "--max-active-http-requests",
        "SERVE_MAX_ACTIVE_HTTP_REQUESTS",
        int,
        "HTTP requests worked on at once; more wait unread in their connections, health probes never "
        "(0: no limit)",
    ),
    "max_image_pixels": _Option(
        "--max-image-pixels", "SERVE_MAX_IMAGE_PIXELS", int, "largest image (width x height) decoded"
    ),
    "tls_cert": _Option(
        "--tls-cert", "SERVE_TLS_CERT", Path, "PEM server certificate: TLS on the gRPC and HTTP ports"
    ),
    "tls_key": _Option("--tls-key", "SERVE_TLS_KEY", Path, "PEM private key of --tls-cert"),
    "tls_client_ca": _Option(
        "--tls-client-ca", "SERVE_TLS_CLIENT_CA", Path, "PEM CA: require client certificates it signed (mTLS)"
    ),
    "restricted_protocol": _Option(
        "--restricted-protocol",
        "SERVE_RESTRICTED_PROTOCOL",
        _restrictions,
        "GROUP[,GROUP]:KEY=VALUE: those RPC groups need that header (repeatable; env: ';'-separated)",
        repeatable=True,
    ),
    "tune": _Option(
        "--tune",
        "SERVE_TUNE",
        _boolean,
        "re-fit batching (max batch, preferred size, delay) to latencies measured at warm-up",
        extra={"action": "store_const", "const": "1"},
    ),
    "repo_wait": _Option(
        "--repo-wait",
        "SERVE_REPO_WAIT",
        _boolean,
        "start though --repo does not exist yet, and load it once it appears (poll); without it the "
        "server refuses to start",
        extra={"action": "store_const", "const": "1"},
    ),
}


def _describe(name: str) -> str:
    opt = OPTIONS[name]
    return f"{opt.flag} / {opt.env}"


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SettingsError(f"{_describe(name)} must be one of {', '.join(choices)}; got {value!r}")


def build_parser(prog: str = "python -m service") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model repository over KServe v2, gRPC and HTTP/REST (Triton-compatible).",
        epilog="Every flag also reads the environment variable shown; the flag wins.",
    )
    defaults = Settings()
    for name, opt in OPTIONS.items():
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{opt.help} [{opt.env}; {shown}]"}
        if opt.repeatable:
            kwargs["action"] = "append"
        parser.add_argument(opt.flag, **kwargs, **opt.extra)
    return parser


def _convert(name: str, raw: str, source: str) -> Any:
    opt = OPTIONS[name]
    try:
        return opt.parse(raw)
    except ValueError:
        kind = {int: "an integer", float: "a number", _boolean: "true or false"}.get(
            opt.parse, "a valid value"
        )
        raise SettingsError(f"{source} must be {kind}, got {raw!r}") from None


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (flags) and ``env`` (``SERVE_*``); raises :class:`SettingsError`."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        opt = OPTIONS[f.name]
        given = getattr(args, f.name)
        if given is not None:
            if opt.repeatable:
                values[f.name] = tuple(n for raw in given for n in _convert(f.name, raw, opt.flag))
            else:
                values[f.name] = _convert(f.name, given, opt.flag)
        elif env.get(opt.env, "").strip():
            values[f.name] = _convert(f.name, env[opt.env].strip(), opt.env)
    return Settings(**values)
