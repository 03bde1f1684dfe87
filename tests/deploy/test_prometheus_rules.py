"""Prometheus rules (promtool check + unit tests), the operator copy, and the prometheus-adapter rule."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy import prometheusrule
from tests.deploy.deploy_contract import (
    DEPLOY,
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    base_metric,
    check_promql,
    deploy_series_names,
    grouping_labels,
    run_promtool,
    selector_labels,
    series_names,
    server_metrics,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
ADAPTER_CONFIG = DEPLOY / "prometheus-adapter" / "config.yaml"


def load(path):
    return yaml.safe_load(path.read_text())


def rules() -> list[dict]:
    return [rule for group in load(PROMETHEUS_DIR / "rules.yaml")["groups"] for rule in group["rules"]]


def assert_uses_contract_metrics(expr: str, where: str, recorded: set[str] = frozenset()) -> None:
    """Every series the expression reads is a contract metric (or a rule recorded from them), and its
    label matchers and groupings name labels those metrics carry."""
    metrics = server_metrics()
    known_labels = set(TARGET_LABELS) | {"le"} | {label for m in metrics.values() for label in m.labels}
    for series in series_names(expr):
        if ":" in series:
            assert series in recorded, f"{where}: {series} is not recorded by rules.yaml"
            continue
        assert base_metric(series) in metrics or series in PROMETHEUS_SERIES, (
            f"{where}: {series} is not a metric of docs/ARCHITECTURE.md"
        )
    for series, label, value in selector_labels(expr):
        if ":" in series or series in PROMETHEUS_SERIES:
            continue
        metric = metrics[base_metric(series)]
        allowed = metric.labels | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())
        assert label in allowed, f"{where}: {series} has no label {label!r}"
        if label in metric.label_values:
            for alternative in value.split("|"):
                assert alternative in metric.label_values[label], (
                    f"{where}: {label}={alternative!r} is not exported"
                )
    unknown = grouping_labels(expr) - known_labels
    assert not unknown, f"{where}: groups by unknown labels {unknown}"


def test_promtool_check_rules():
    result = run_promtool("check", "rules", "rules.yaml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    result = run_promtool("test", "rules", "rules_test.yaml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts
    cases = [
        case
        for test in load(PROMETHEUS_DIR / "rules_test.yaml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts:
        outcomes = [bool(case.get("exp_alerts")) for case in cases if case["alertname"] == alert]
        assert True in outcomes, f"{alert}: no test case where it fires"
        assert False in outcomes, f"{alert}: no test case where it stays quiet"


def test_rules_read_only_contract_metrics():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        assert_uses_contract_metrics(rule["expr"], rule.get("record") or rule["alert"], recorded)


def test_recording_rules_follow_the_naming_convention():
    for rule in rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and operations and metric.startswith("cnnserve_"), rule["record"]


def test_alerts_have_severity_and_summary():
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_prometheusrule_is_generated_from_the_rules_file():
    expected = prometheusrule.render(prometheusrule.RULES_FILE.read_text())
    assert prometheusrule.PROMETHEUSRULE_FILE.read_text() == expected, (
        "deploy/prometheus/prometheusrule.yaml is stale: run `python -m tests.deploy.prometheusrule`"
    )
    assert load(prometheusrule.PROMETHEUSRULE_FILE)["spec"] == load(prometheusrule.RULES_FILE)


def adapter_rules() -> list[dict]:
    return load(ADAPTER_CONFIG)["rules"]


def test_adapter_serves_contract_metrics_per_pod():
    for rule in adapter_rules():
        assert_uses_contract_metrics(rule["seriesQuery"], "seriesQuery")
        # The HPA asks for the metric by this name.
        assert_uses_contract_metrics(rule["name"]["as"], "name.as")
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"]["resource"] == "namespace" and overrides["pod"]["resource"] == "pod"
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]


@pytest.mark.parametrize("index", range(len(adapter_rules())))
def test_adapter_query_is_valid_promql(index):
    rule = adapter_rules()[index]
    (series,) = series_names(rule["seriesQuery"])
    # What prometheus-adapter substitutes for one HPA query over two pods.
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="cnnserve",pod=~"cnnserve-a|cnnserve-b"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert_uses_contract_metrics(query, "metricsQuery")
    check_promql({"metricsQuery": query})


def test_deploy_reads_only_contract_metrics_and_all_latencies():
    names = deploy_series_names()
    assert {base_metric(name) for name in names} <= set(server_metrics())
    for histogram in ("request", "queue", "compute"):
        assert f"cnnserve_{histogram}_duration_seconds_bucket" in names
