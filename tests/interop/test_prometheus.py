"""deploy/prometheus/rules.yaml in a real Prometheus (Debian's ``prometheus`` package) scraping a live
``python -m service``.

Issue, word for word: "A test starts Prometheus (Debian's `prometheus` package ships the server) scraping a
live `python -m service` with `deploy/prometheus/rules.yaml` loaded, sends traffic, and checks through
Prometheus's HTTP API that the recording rules yield the p50/p99, throughput and queue series and that the
error-ratio alert fires when errors are induced. Bounded, loopback only, skipped with the reason where the
package is missing."

What is shortened, and only that: the rules keep their ``[5m]`` windows, but alerts wait ``for:`` minutes
and a CI test cannot. Prometheus loads a copy of rules.yaml in which every ``for:`` line reads
``for: 2s`` and nothing else differs (checked line by line, and every ``expr`` is byte-identical to the
original's); the evaluation interval (not set in rules.yaml: the server's global one, one minute by
default) is 1 s in the test's prometheus.yml, as is the scrape interval. A ``namespace`` label is added
to every scraped series there, as the ServiceMonitor's relabeling does, since the rules aggregate by it.

The server serves ``lenet5`` (the session's export) and ``faulty`` (``harness.repository.faulty_onnx``:
onnxruntime fails on inputs >= 1, an ``internal`` outcome, which the error-ratio rule counts). Traffic
starts only after Prometheus has scraped the idle server once, so every rate covers all of it. Good
requests first: the recording rules must yield finite p50/p99, throughput and queue series for lenet5,
and the error-ratio alert must not be active. Then failing requests to ``faulty``: its alert must fire,
and lenet5's must not. Every wait polls Prometheus's API with a deadline; the whole test takes about
20 s besides the session's LeNet-5 export.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from harness import prometheus
from harness.repository import add_model, copy_entry, faulty_onnx
from harness.server import ROOT, start_server
from models.lenet import DIGIT_LABELS, DIGITS_INPUT
from service.client import InferenceServerError

pytestmark = pytest.mark.peers

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
NAMESPACE = "interop"
SHORT_FOR = "2s"
INTERVAL_S = 1.0
RATE_WINDOW_S = 300.0  # the rules' [5m]: rate() divides the window's increase by it
WAIT_S = 30.0

LENET_REQUESTS, LENET_ROWS = 30, 2  # good traffic to lenet5: 30 requests of 2 rows
FAULTY_GOOD, FAULTY_BAD = 20, 20  # faulty: good requests first, then failing ones (ratio 0.5 > 0.05)

RECORDED = {
    "p50": "namespace_model:cnnserve_request_duration_seconds:p50_rate5m",
    "p99": "namespace_model:cnnserve_request_duration_seconds:p99_rate5m",
    "queue_p99": "namespace_model:cnnserve_queue_duration_seconds:p99_rate5m",
    "compute_p99": "namespace_model:cnnserve_compute_duration_seconds:p99_rate5m",
    "requests": "namespace_model:cnnserve_requests:rate5m",
    "rows": "namespace_model:cnnserve_inference_rows:rate5m",
    "error_ratio": "namespace_model:cnnserve_requests_errors:ratio_rate5m",
}
ERROR_ALERT = "CnnserveHighErrorRatio"
FOR_LINE = re.compile(r"^(\s*)for: \S+$", re.MULTILINE)


def shortened_rules(original: str) -> str:
    """rules.yaml with every ``for:`` duration replaced by ``SHORT_FOR``, every other byte unchanged."""
    return FOR_LINE.sub(rf"\1for: {SHORT_FOR}", original)


def assert_only_for_changed(original: str, copy: str) -> None:
    before, after = original.splitlines(), copy.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed and all(FOR_LINE.fullmatch(a) and b.endswith(f"for: {SHORT_FOR}") for a, b in changed)
    rules = [
        (r, c)
        for g, h in zip(yaml.safe_load(original)["groups"], yaml.safe_load(copy)["groups"], strict=True)
        for r, c in zip(g["rules"], h["rules"], strict=True)
    ]
    alerts = [c for r, c in rules if "alert" in r]
    assert alerts and all(c["for"] == SHORT_FOR for c in alerts)
    for rule, copied in rules:
        assert copied["expr"].encode() == rule["expr"].encode(), rule.get("record") or rule["alert"]
        assert {k: v for k, v in copied.items() if k != "for"} == {
            k: v for k, v in rule.items() if k != "for"
        }


def test_rule_copy_differs_only_in_for_durations():
    original = RULES.read_text()
    assert_only_for_changed(original, shortened_rules(original))
    # the check catches a changed expression
    tampered = shortened_rules(original).replace("> 0.05", "> 0.5", 1)
    with pytest.raises(AssertionError):
        assert_only_for_changed(original, tampered)


@pytest.fixture(scope="session")  # session scope: skips before the session's LeNet-5 export is made
def prometheus_binary() -> Path:
    binary = prometheus.find_binary()
    if binary is None:
        pytest.skip(
            f"no prometheus server on PATH (Debian's prometheus package, or ${prometheus.BINARY_ENV})"
        )
    return binary


@pytest.fixture(scope="module")
def live_server(lenet5_export, tmp_path_factory):
    """``python -m service`` over lenet5 (as exported) and faulty, on free 127.0.0.1 ports."""
    work = tmp_path_factory.mktemp("prometheus_rules")
    repo = work / "repo"
    copy_entry(lenet5_export["fp32"].model_dir, repo)
    faulty_onnx(work / "faulty.onnx", DIGITS_INPUT)
    add_model(
        repo, "faulty", work / "faulty.onnx", spec=DIGITS_INPUT, labels=DIGIT_LABELS, source_model="faulty"
    )
    server = start_server(repo, work)
    yield server
    server.terminate()


def selector(name: str, model: str, **labels: str) -> str:
    matchers = {"namespace": NAMESPACE, "model": model, **labels}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in matchers.items()) + "}"


def recorded_together(prom: prometheus.Prometheus, model: str, after: float) -> dict[str, float] | None:
    """The RECORDED series of ``model`` from one rule-group evaluation later than ``after`` (unix s), or
    None while there is none. Every rule of a group is evaluated at the same timestamp, so values from one
    evaluation read the same scraped samples."""
    series = {}
    for key, name in RECORDED.items():
        result = prom.samples(selector(name, model), 10)
        if not result:
            return None
        (only,) = result  # one series per namespace and model
        assert set(only["metric"]) == {"__name__", "namespace", "model"}, only["metric"]
        series[key] = {float(t): float(v) for t, v in only["values"]}
    common = [t for t in set.intersection(*(set(s) for s in series.values())) if t > after]
    if not common:
        return None
    return {key: values[max(common)] for key, values in series.items()}


def counter(prom: prometheus.Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def error_alerts(prom: prometheus.Prometheus) -> dict[str, dict]:
    return {a["labels"]["model"]: a for a in prom.alerts() if a["labels"]["alertname"] == ERROR_ALERT}


def digits(rng: np.random.Generator, rows: int, high: float) -> np.ndarray:
    return rng.uniform(0, high, (rows, *DIGITS_INPUT.shape)).astype(np.float32)


@pytest.mark.timeout(240)
def test_rules_record_and_alert_on_a_live_server(prometheus_binary, live_server, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(shortened_rules(RULES.read_text()))
    assert_only_for_changed(RULES.read_text(), rules.read_text())
    target = urllib.parse.urlsplit(live_server.metrics_url).netloc
    config = prometheus.write_config(
        tmp_path, targets=[target], labels={"namespace": NAMESPACE}, rule_files=[rules], interval_s=INTERVAL_S
    )
    rng = np.random.default_rng(0)
    with prometheus.start(prometheus_binary, config, tmp_path) as prom:
        groups = {g["name"]: [r["name"] for r in g["rules"]] for g in prom.rule_groups()}
        want = {
            g["name"]: [r.get("record") or r["alert"] for r in g["rules"]]
            for g in yaml.safe_load(rules.read_text())["groups"]
        }
        assert groups == want
        # A first scrape of the idle server: every rate below starts from it.
        up = f'up{{job="{prometheus.JOB}",namespace="{NAMESPACE}"}}'
        prom.wait_for(lambda: counter(prom, f"{up} == 1"), timeout=WAIT_S, what="first successful scrape")

        client = live_server.client(timeout=30)
        for _ in range(LENET_REQUESTS):
            assert client.infer("lenet5", digits(rng, LENET_ROWS, 1.0)).shape == (LENET_ROWS, 10)
        for _ in range(FAULTY_GOOD):
            client.infer("faulty", digits(rng, 1, 0.9))
        # Every request scraped: rule evaluations after this moment cover all of them.
        scraped = {
            selector("cnnserve_requests_total", "lenet5", outcome="success"): LENET_REQUESTS,
            selector("cnnserve_inference_rows_total", "lenet5"): LENET_REQUESTS * LENET_ROWS,
            selector("cnnserve_requests_total", "faulty", outcome="success"): FAULTY_GOOD,
        }
        for expr, count in scraped.items():
            prom.wait_for(
                lambda e=expr, c=count: counter(prom, f"{e} == {c}"),
                timeout=WAIT_S,
                what=f"{expr} == {count}",
            )
        all_scraped = time.time()  # Prometheus timestamps are unix time

        lenet = prom.wait_for(
            lambda: recorded_together(prom, "lenet5", all_scraped),
            timeout=WAIT_S,
            what="recorded lenet5 series",
        )
        latencies = [lenet[k] for k in ("p50", "p99", "queue_p99", "compute_p99")]
        assert all(math.isfinite(v) and 0 < v < 30 for v in latencies), lenet
        assert lenet["p50"] <= lenet["p99"], lenet
        # rate() over [5m]: the increase, extrapolated by at most one scrape interval, over 300 s
        in_window = lenet["requests"] * RATE_WINDOW_S
        assert LENET_REQUESTS * (1 - 1e-9) <= in_window <= 2.2 * LENET_REQUESTS, lenet
        assert lenet["rows"] / lenet["requests"] == pytest.approx(LENET_ROWS, rel=1e-9), lenet
        assert lenet["error_ratio"] == 0, lenet
        faulty = prom.wait_for(
            lambda: recorded_together(prom, "faulty", all_scraped),
            timeout=WAIT_S,
            what="recorded faulty series",
        )
        assert faulty["error_ratio"] == 0 and faulty["requests"] > 0, faulty
        assert error_alerts(prom) == {}  # evaluated after the good traffic: nothing pending or firing

        for _ in range(FAULTY_BAD):
            with pytest.raises(InferenceServerError) as failure:
                client.infer("faulty", np.full((1, *DIGITS_INPUT.shape), 5.0, np.float32))
            assert failure.value.code == grpc.StatusCode.INTERNAL

        def firing() -> dict | None:
            alert = error_alerts(prom).get("faulty")
            return alert if alert and alert["state"] == "firing" else None

        alert = prom.wait_for(firing, timeout=WAIT_S, what=f"{ERROR_ALERT} firing for faulty")
        assert alert["labels"] == {
            "alertname": ERROR_ALERT,
            "namespace": NAMESPACE,
            "model": "faulty",
            "severity": "critical",
        }
        assert 0.05 < float(alert["value"]) <= 1, alert
        assert "faulty" in alert["annotations"]["summary"]
        assert "lenet5" not in error_alerts(prom)
        outcomes = "namespace_model_outcome:cnnserve_requests:rate5m"
        internal = counter(prom, selector(outcomes, "faulty", outcome="internal"))
        assert internal is not None and internal > 0
        active = {a["labels"]["alertname"] for a in prom.alerts()}
        assert not active & {"CnnserveTargetDown", "CnnserveModelNotReady"}, prom.alerts()
