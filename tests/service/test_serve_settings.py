"""Server settings: defaults, SERVE_* environment variables, flags (flag wins), and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import OPTIONS, Settings, SettingsError, load_settings


def test_defaults_match_the_contract():
    s = load_settings([], env={})
    assert s == Settings()
    assert (s.repo, s.host, s.grpc_port, s.metrics_port) == (Path("model_repository"), "0.0.0.0", 8001, 8002)
    assert (s.model_control_mode, s.load_model, s.poll_interval, s.grace_period) == ("none", (), 5.0, 30.0)
    assert (s.max_message_bytes, s.device, s.log_level) == (67108864, "auto", "info")


def test_env_names_match_the_contract():
    assert {name: opt.env for name, opt in OPTIONS.items()} == {
        "repo": "SERVE_REPO",
        "host": "SERVE_HOST",
        "grpc_port": "SERVE_GRPC_PORT",
        "metrics_port": "SERVE_METRICS_PORT",
        "model_control_mode": "SERVE_MODEL_CONTROL_MODE",
        "load_model": "SERVE_LOAD_MODEL",
        "poll_interval": "SERVE_POLL_INTERVAL_SECONDS",
        "grace_period": "SERVE_GRACE_PERIOD_SECONDS",
        "max_message_bytes": "SERVE_MAX_MESSAGE_BYTES",
        "device": "SERVE_DEVICE",
        "log_level": "SERVE_LOG_LEVEL",
    }


def test_env_then_flags():
    env = {
        "SERVE_REPO": "/models",
        "SERVE_GRPC_PORT": "9001",
        "SERVE_LOAD_MODEL": "a, b,,c",
        "SERVE_MODEL_CONTROL_MODE": "explicit",
        "SERVE_GRACE_PERIOD_SECONDS": "2.5",
    }
    s = load_settings([], env=env)
    assert (s.repo, s.grpc_port, s.load_model, s.model_control_mode, s.grace_period) == (
        Path("/models"),
        9001,
        ("a", "b", "c"),
        "explicit",
        2.5,
    )
    s = load_settings(["--grpc-port", "7001", "--load-model", "x", "--load-model", "y,z"], env=env)
    assert s.grpc_port == 7001 and s.load_model == ("x", "y", "z")
    assert s.repo == Path("/models")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"SERVE_GRPC_PORT": "abc"}, "SERVE_GRPC_PORT must be an integer, got 'abc'"),
        (["--grpc-port", "70000"], {}, "--grpc-port / SERVE_GRPC_PORT must be a port number"),
        (["--model-control-mode", "auto"], {}, "must be one of none, poll, explicit; got 'auto'"),
        ([], {"SERVE_DEVICE": "tpu"}, "--device / SERVE_DEVICE must be one of auto, cpu, cuda"),
        (["--poll-interval", "0"], {}, "must be > 0 seconds"),
        (["--max-message-bytes", "10"], {}, "at least 1024 bytes"),
    ],
)
def test_errors_name_the_setting(argv, env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(argv, env=env)
