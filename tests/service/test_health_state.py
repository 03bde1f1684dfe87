"""Health answered from a state the event loop writes and any thread reads; restrictions and redaction."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.errors import PermissionDenied, Unauthenticated, redact_paths
from service.protocol.health import NOT_SERVING, SERVING, HealthState, http_probe
from service.protocol.security import headers_of, parse_restrictions


def test_readiness_liveness_and_models():
    state = HealthState(stall_seconds=5)
    assert state.live and not state.ready
    assert state.status("") == NOT_SERVING and state.status("liveness") == SERVING
    assert state.status("lenet5") is None  # an unknown service: NOT_FOUND on Check
    state.set_ready(True)
    state.set_model("lenet5", ("1", "2"))
    assert state.status("inference.GRPCInferenceService") == SERVING
    assert (
        state.model_ready("lenet5")
        and state.model_ready("lenet5", "2")
        and not state.model_ready("lenet5", "3")
    )
    state.set_model("lenet5", ())  # unloaded: still a known service, not serving
    assert state.status("lenet5") == NOT_SERVING


def test_a_stalled_event_loop_is_not_live():
    state = HealthState(stall_seconds=0.05)
    state.set_ready(True)
    state.beat(0.0)
    assert state.live and state.ready
    time.sleep(0.1)
    assert not state.live and not state.ready and state.status("liveness") == NOT_SERVING


def test_http_probe_paths():
    state = HealthState()
    state.set_ready(True)
    state.set_model("m", ("1",))
    probe = http_probe(state)
    assert probe("/v2/health/live") and probe("/v2/health/ready")
    assert probe("/v2/models/m/ready") and probe("/v2/models/m/versions/1/ready")
    assert probe("/v2/models/m/versions/2/ready") is False and probe("/v2/models/x/ready") is False
    assert probe("/metrics") is None and probe("/v2/models/m/wat/1/ready") is None


def test_restrictions_parse_and_check():
    restrictions = parse_restrictions(["model-repository,statistics:Admin-Key=s3cret", "inference:k=v"])
    assert set(restrictions) == {"model-repository", "statistics", "inference"}
    admin = restrictions["statistics"]
    admin.check({"admin-key": "s3cret"})
    with pytest.raises(Unauthenticated, match="send the header 'admin-key'"):
        admin.check({})
    with pytest.raises(PermissionDenied, match="is not the one required") as info:
        admin.check({"admin-key": "guess"})
    assert "s3cret" not in str(info.value)
    for bad, message in [
        ("model-repository", "expected GROUP"),
        ("nope:k=v", "unknown group"),
        ("inference:=v", "expected GROUP"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_restrictions([bad])
    with pytest.raises(ValueError, match="restricted twice"):
        parse_restrictions(["inference:a=1", "inference:b=2"])
    assert headers_of([("Admin-Key", "x"), ("trace-bin", b"\0")]) == {"admin-key": "x"}


def test_messages_lose_filesystem_paths():
    root = Path("/srv/models")
    message = "cannot read /srv/models/lenet5/config.pbtxt: [Errno 13] Permission denied: '/etc/secret/key'"
    assert (
        redact_paths(message, root) == "cannot read lenet5/config.pbtxt: [Errno 13] Permission denied: 'key'"
    )
    assert (
        redact_paths("see http://host:8000/v2 and image/png", root) == "see http://host:8000/v2 and image/png"
    )
