"""The Grafana dashboard: its variables, panels and queries (valid PromQL over the contract's metrics)."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.deploy_contract import DEPLOY, check_promql, series_names
from tests.deploy.test_prometheus_rules import assert_uses_contract_metrics

DASHBOARD = DEPLOY / "grafana" / "cnnserve-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What each panel topic must show, as the metrics its queries read.
REQUIRED = {
    "throughput": {"cnnserve_requests_total", "cnnserve_inference_rows_total"},
    "latency": {"cnnserve_request_duration_seconds_bucket"},
    "queue vs compute": {
        "cnnserve_queue_duration_seconds_bucket",
        "cnnserve_compute_duration_seconds_bucket",
    },
    "batch size": {"cnnserve_batch_size_bucket"},
    "errors": {"cnnserve_requests_total"},
    "in flight": {"cnnserve_inflight_requests"},
    "model ready": {"cnnserve_model_ready"},
    "gpu utilization": {"cnnserve_gpu_utilization_ratio"},
    "gpu memory": {"cnnserve_gpu_memory_used_bytes", "cnnserve_gpu_memory_total_bytes"},
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in panels(dashboard) for target in panel["targets"]]


def as_promql(expr: str) -> str:
    """A query with Grafana's variables replaced by what Grafana sends to Prometheus."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "30s")
    return re.sub(r"\$\{?(namespace|model)\}?", ".*", expr)


def test_template_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("namespace", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"] and variables[name]["includeAll"]
        query = variables[name]["query"]["query"]
        (metric,) = re.findall(r"label_values\((\w+)", query)
        assert_uses_contract_metrics(metric, f"variable {name}")


def test_panels_have_ids_positions_and_the_datasource_variable(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_queries_are_valid_promql_over_contract_metrics(dashboard):
    expressions = {}
    for title, target in targets(dashboard):
        expr = as_promql(target["expr"])
        assert "$" not in expr, f"{title}: unknown variable in {target['expr']}"
        assert_uses_contract_metrics(expr, title)
        expressions[f"{title} {target['refId']}"] = expr
    check_promql(expressions)


def test_model_panels_follow_the_variables(dashboard):
    for title, target in targets(dashboard):
        if "gpu" in target["expr"]:
            continue  # GPU series carry no model label
        assert 'model=~"$model"' in target["expr"] and 'namespace=~"$namespace"' in target["expr"], title


def test_required_panels(dashboard):
    read_by_panel = {panel["title"].lower(): set() for panel in panels(dashboard)}
    for title, target in targets(dashboard):
        read_by_panel[title.lower()] |= series_names(target["expr"])
    for topic, metrics in REQUIRED.items():
        covering = [title for title, read in read_by_panel.items() if metrics <= read]
        assert covering, f"no panel shows {topic} ({sorted(metrics)})"
    (heatmap,) = [p for p in panels(dashboard) if p["type"] == "heatmap"]
    assert "cnnserve_batch_size_bucket" in heatmap["targets"][0]["expr"]
    assert heatmap["targets"][0]["format"] == "heatmap"
