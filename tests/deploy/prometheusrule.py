"""deploy/prometheus/prometheusrule.yaml is deploy/prometheus/rules.yaml wrapped in a PrometheusRule.

Regenerate after editing rules.yaml: ``python -m tests.deploy.prometheusrule``. The rules file stays the
single source (promtool reads it); the wrapper is its text indented under ``spec:``, comments included.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules.yaml"
PROMETHEUSRULE_FILE = PROMETHEUS_DIR / "prometheusrule.yaml"

HEADER = """\
# GENERATED from rules.yaml by `python -m tests.deploy.prometheusrule`: edit rules.yaml, then rerun.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: cnnserve
  labels:
    app.kubernetes.io/name: cnnserve
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest for a Prometheus rules file's text."""
    return HEADER + textwrap.indent(rules_text, "  ")


def main() -> None:
    PROMETHEUSRULE_FILE.write_text(render(RULES_FILE.read_text()))
    print(f"wrote {PROMETHEUSRULE_FILE}")


if __name__ == "__main__":
    main()
