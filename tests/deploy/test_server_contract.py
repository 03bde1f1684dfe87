"""The server the deployment runs: docs/ARCHITECTURE.md's tables against service.settings and a live server,
and every series the Prometheus rules, the prometheus-adapter rule and the Grafana dashboard read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from protos import health_pb2, health_pb2_grpc
from service.client import InferenceServerError
from tests.deploy.deploy_contract import (
    DEPLOY,
    TARGET_LABELS,
    deploy_series_names,
    documented_settings,
    grouping_labels,
    health_services,
    selector_labels,
    series_names,
    server_metrics,
    server_settings,
)

pytestmark = pytest.mark.process

GPU_SERIES = re.compile(r"cnnserve_gpu_")  # only where NVML finds a GPU


def test_architecture_settings_table_matches_service_settings():
    documented, actual = documented_settings(), server_settings()
    assert set(documented) == set(actual), "docs/ARCHITECTURE.md and service.settings name other variables"
    for env, doc in documented.items():
        real = actual[env]
        assert doc.flag == real.flag, env
        assert doc.default == real.default, f"{env}: documented default {doc.default}, code {real.default}"
        if real.choices:
            assert set(doc.choices) <= set(real.choices), env
            if len(doc.choices) > 1:  # the table lists every choice
                assert set(doc.choices) == set(real.choices), env


@pytest.mark.parametrize("module", ["service", "service.healthcheck"])
def test_entrypoint_help(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m {module}" in done.stdout
    if module == "service":
        for setting in server_settings().values():
            assert setting.flag in done.stdout and setting.env in done.stdout, setting
    else:
        assert "--address" in done.stdout and "--service" in done.stdout


# ----------------------------------------------------------------------------- a live server


def deploy_expressions() -> list[str]:
    """The PromQL of the rules, the adapter's metrics query and the dashboard's panels."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "config.yaml").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "cnnserve-dashboard.json").read_text())
    return (
        [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
        + [rule["seriesQuery"] for rule in adapter["rules"]]
        + [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    )


@pytest.fixture(scope="module")
def live_metrics(lenet5_server) -> dict:
    """The live server's families after successful requests (tensor and image), an invalid request and one
    for an unknown model."""
    client = lenet5_server.client()
    client.infer("lenet5", np.zeros((2, 1, 32, 32), np.float32))
    client.infer("lenet5_int8", np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InferenceServerError) as info:
        client.infer("lenet5", np.zeros((1, 3, 32, 32), np.float32))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InferenceServerError) as info:
        client.infer("no_such_model", np.zeros((1, 1, 32, 32), np.float32))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with urllib.request.urlopen(lenet5_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def live_series(families: dict) -> dict[str, list[dict]]:
    """Sample name -> the label sets it is exported with."""
    series: dict[str, list[dict]] = {}
    for family in families.values():
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample.labels)
    return series


def test_live_server_exports_every_series_deploy_reads(live_metrics):
    exported = live_series(live_metrics)
    wanted = deploy_series_names()
    missing = {name for name in wanted - set(exported) if not GPU_SERIES.match(name)}
    assert not missing, f"the rules, adapter or dashboard read series the server does not export: {missing}"


def test_live_server_has_the_labels_and_values_deploy_selects(live_metrics):
    exported = live_series(live_metrics)
    for expr in deploy_expressions():
        read = {name for name in series_names(expr) if name in exported}
        for series, label, value in selector_labels(expr):
            if series not in exported or label in TARGET_LABELS or "$" in value:
                continue  # Prometheus' own labels, Grafana variables
            values = {labels.get(label) for labels in exported[series]}
            assert label in set().union(*exported[series]), f"{series} has no label {label!r}: {expr}"
            for alternative in value.split("|"):
                assert alternative in values, f"{series}{{{label}={alternative!r}}} is never exported"
        if read and not any(":" in name for name in series_names(expr)):
            carried = set().union(*(set().union(*exported[name]) for name in read))
            unknown = grouping_labels(expr) - carried - TARGET_LABELS - {"le"}
            assert not unknown, f"groups by labels the server does not export {unknown}: {expr}"


def test_live_server_matches_the_documented_metrics(live_metrics):
    for name, metric in server_metrics().items():
        family_name = name.removesuffix("_total")  # the parser names counters without it
        if GPU_SERIES.match(name) and family_name not in live_metrics:
            continue
        assert family_name in live_metrics, f"{name} is documented but not exported"
        family = live_metrics[family_name]
        assert family.type == metric.type, name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for sample in samples:
            assert set(sample.labels) - {"le"} == metric.labels, (name, sample.labels)
        for label, documented in metric.label_values.items():
            assert {s.labels[label] for s in samples} == documented, (name, label)


def test_live_server_answers_the_documented_health_services(lenet5_server):
    readiness, liveness = health_services()
    stub = health_pb2_grpc.HealthStub(lenet5_server.client().channel)
    for service in (*readiness, liveness):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_live_server_answers_on_its_http_port(lenet5_server):
    """The HTTP port of the settings (a free one here) answers Triton's HTTP health and inference routes,
    and its requests are counted with protocol="http"."""
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/lenet5/ready"):
        assert lenet5_server.http("GET", path).status == 200, path
    row = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}
    with urllib.request.urlopen(lenet5_server.metrics_url, timeout=10) as response:
        before = response.read().decode()
    assert lenet5_server.http("POST", "/v2/models/lenet5/infer", {"inputs": [row]}).status == 200
    with urllib.request.urlopen(lenet5_server.metrics_url, timeout=10) as response:
        after = response.read().decode()

    def http_successes(text: str) -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "cnnserve_requests_total"
            and s.labels == {"model": "lenet5", "version": "1", "protocol": "http", "outcome": "success"}
        )

    assert http_successes(after) - http_successes(before) == 1
