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
    assert (s.health_port, s.max_inflight, s.max_inflight_bytes) == (8003, 1024, 256 << 20)
    assert (s.max_image_pixels, s.tls_cert, s.restricted_protocol) == (25_000_000, None, ())
    assert (s.max_json_bytes, s.body_timeout) == (1 << 20, 30.0)


def test_tls_and_restriction_settings(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    s = load_settings(["--tls-cert", str(cert), "--tls-key", str(key)], env={})
    assert (s.tls_cert, s.tls_key, s.tls_client_ca) == (cert, key, None)
    with pytest.raises(
        SettingsError, match="--tls-cert / SERVE_TLS_CERT and --tls-key / SERVE_TLS_KEY go together"
    ):
        load_settings(["--tls-cert", str(cert)], env={})
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing")], env={})
    env = {"SERVE_RESTRICTED_PROTOCOL": "model-repository:admin=1; statistics,model-config:ops=2"}
    flags = ["--restricted-protocol", "inference:k=v"]
    assert load_settings([], env=env).restricted_protocol == (
        "model-repository:admin=1",
        "statistics,model-config:ops=2",
    )
    assert load_settings(flags, env=env).restricted_protocol == ("inference:k=v",)


def test_env_names_match_the_contract():
    assert {name: opt.env for name, opt in OPTIONS.items()} == {
        "repo": "SERVE_REPO",
        "host": "SERVE_HOST",
        "http_port": "SERVE_HTTP_PORT",
        "grpc_port": "SERVE_GRPC_PORT",
        "metrics_port": "SERVE_METRICS_PORT",
        "model_control_mode": "SERVE_MODEL_CONTROL_MODE",
        "load_model": "SERVE_LOAD_MODEL",
        "poll_interval": "SERVE_POLL_INTERVAL_SECONDS",
        "grace_period": "SERVE_GRACE_PERIOD_SECONDS",
        "max_message_bytes": "SERVE_MAX_MESSAGE_BYTES",
        "max_json_bytes": "SERVE_MAX_JSON_BYTES",
        "device": "SERVE_DEVICE",
        "backend": "SERVE_BACKEND",
        "log_level": "SERVE_LOG_LEVEL",
        "health_port": "SERVE_HEALTH_PORT",
        "max_inflight": "SERVE_MAX_INFLIGHT",
        "max_inflight_bytes": "SERVE_MAX_INFLIGHT_BYTES",
        "body_timeout": "SERVE_BODY_TIMEOUT_SECONDS",
        "max_active_http_requests": "SERVE_MAX_ACTIVE_HTTP_REQUESTS",
        "max_image_pixels": "SERVE_MAX_IMAGE_PIXELS",
        "tls_cert": "SERVE_TLS_CERT",
        "tls_key": "SERVE_TLS_KEY",
        "tls_client_ca": "SERVE_TLS_CLIENT_CA",
        "restricted_protocol": "SERVE_RESTRICTED_PROTOCOL",
        "tune": "SERVE_TUNE",
        "repo_wait": "SERVE_REPO_WAIT",
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
        (["--backend", "triton"], {}, "SERVE_BACKEND must be one of auto, onnxruntime, torch, tensorrt"),
        (["--poll-interval", "0"], {}, "must be > 0 seconds"),
        (["--max-message-bytes", "10"], {}, "at least 1024 bytes"),
        (["--body-timeout", "0"], {}, "--body-timeout / SERVE_BODY_TIMEOUT_SECONDS must be > 0 seconds"),
        ([], {"SERVE_MAX_JSON_BYTES": "0"}, "--max-json-bytes / SERVE_MAX_JSON_BYTES must be >= 1"),
        (["--repo-wait"], {}, "--repo-wait / SERVE_REPO_WAIT needs --model-control-mode"),
    ],
)
def test_errors_name_the_setting(argv, env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(argv, env=env)
