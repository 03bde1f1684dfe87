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
LOG_LEVELS = ("debug", "info", "warning", "error")
CHOICES = {"model_control_mode": CONTROL_MODES, "device": DEVICES, "log_level": LOG_LEVELS}


class SettingsError(ValueError):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    repo: Path = Path("model_repository")
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002  # 0: pick a free port (logged)
    model_control_mode: str = "none"
    load_model: tuple[str, ...] = ()  # empty: all models (none/poll), no model (explicit)
    poll_interval: float = 5.0  # seconds between repository scans in poll mode
    grace_period: float = 30.0  # seconds SIGTERM waits for queued and in-flight requests
    max_message_bytes: int = MAX_MESSAGE_BYTES  # gRPC receive and send limit
    device: str = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        for name in ("grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{_describe(name)} must be a port number 0..65535, got {port}")
        if self.poll_interval <= 0:
            raise SettingsError(f"{_describe('poll_interval')} must be > 0 seconds, got {self.poll_interval}")
        if self.grace_period < 0:
            raise SettingsError(f"{_describe('grace_period')} must be >= 0 seconds, got {self.grace_period}")
        if self.max_message_bytes < 1024:
            raise SettingsError(
                f"{_describe('max_message_bytes')} must be at least 1024 bytes, got {self.max_message_bytes}"
            )


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


OPTIONS: dict[str, _Option] = {
    "repo": _Option("--repo", "SERVE_REPO", Path, "model repository folder"),
    "host": _Option("--host", "SERVE_HOST", str, "address to bind (gRPC and metrics)"),
    "grpc_port": _Option("--grpc-port", "SERVE_GRPC_PORT", int, "gRPC port"),
    "metrics_port": _Option("--metrics-port", "SERVE_METRICS_PORT", int, "Prometheus port (0: any free)"),
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
        "--max-message-bytes", "SERVE_MAX_MESSAGE_BYTES", int, "largest gRPC message received or sent"
    ),
    "device": _Option("--device", "SERVE_DEVICE", str, "auto | cpu | cuda"),
    "log_level": _Option("--log-level", "SERVE_LOG_LEVEL", str, "debug | info | warning | error"),
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
        description="Serve a model repository over the KServe v2 gRPC protocol (Triton-compatible).",
        epilog="Every flag also reads the environment variable shown; the flag wins.",
    )
    defaults = Settings()
    for name, opt in OPTIONS.items():
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{opt.help} [{opt.env}; {shown}]"}
        if opt.repeatable:
            kwargs["action"] = "append"
        parser.add_argument(opt.flag, **kwargs)
    return parser


def _convert(name: str, raw: str, source: str) -> Any:
    opt = OPTIONS[name]
    try:
        return opt.parse(raw)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(opt.parse, "a valid value")
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
