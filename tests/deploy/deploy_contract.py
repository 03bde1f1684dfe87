"""What the deployment files are checked against, and the tools that check them.

The server's settings (flags, ``SERVE_*`` variables, defaults, choices) come from ``service.settings``
itself; health service names and metrics from docs/ARCHITECTURE.md, whose tables test_server_contract.py
checks against the code and a live server. kubectl and promtool are used where installed; the tests that
need them skip otherwise.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

# Labels Prometheus attaches to every scraped series (kubernetes service discovery), on top of the
# labels the server exports.
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "container", "service", "endpoint"})
# Series Prometheus itself produces for each target.
PROMETHEUS_SERIES = frozenset({"up"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL (and Grafana's label_values) words that are not metric names.
PROMQL_WORDS = frozenset(
    """
    sum avg min max count count_values group stddev stdvar topk bottomk quantile
    rate irate increase delta idelta deriv predict_linear resets changes histogram_quantile
    avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time
    quantile_over_time present_over_time absent absent_over_time
    abs ceil floor round clamp clamp_min clamp_max exp ln log2 log10 sqrt sgn scalar vector time
    label_replace label_join sort sort_desc timestamp
    and or unless by without on ignoring group_left group_right bool offset
    label_values inf nan
    """.split()  # noqa: SIM905
)


# ----------------------------------------------------------------------------- the contract


def _architecture_section(title: str) -> str:
    text = ARCHITECTURE.read_text()
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise LookupError(f"docs/ARCHITECTURE.md has no section {title!r}")
    return match.group(1)


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # drop the header


def _code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


@dataclass(frozen=True)
class Setting:
    flag: str
    env: str
    default: str | None  # as an environment variable's value; None: unset (e.g. SERVE_LOAD_MODEL)
    choices: tuple[str, ...]  # the values it accepts, where it is a choice (device: auto, cpu, cuda)


def _env_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return ",".join(value) or None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@functools.cache
def server_settings() -> dict[str, Setting]:
    """SERVE_* variable -> its setting, from the server's own ``service.settings``."""
    from service.settings import CHOICES, OPTIONS, Settings

    defaults = Settings()
    return {
        opt.env: Setting(opt.flag, opt.env, _env_value(getattr(defaults, name)), CHOICES.get(name, ()))
        for name, opt in OPTIONS.items()
    }


@functools.cache
def documented_settings() -> dict[str, Setting]:
    """SERVE_* variable -> its setting as docs/ARCHITECTURE.md's "Server settings" table gives it (choices:
    the values its default column names, e.g. device: auto, cpu, cuda; default None where it is described
    in words)."""
    settings = {}
    for flag, env, default in _table_rows(_architecture_section("Server settings")):
        env_name = _code_spans(env)[0]
        values = _code_spans(default)
        settings[env_name] = Setting(
            flag=_code_spans(flag)[0],
            env=env_name,
            default=values[0] if values else None,
            choices=tuple(dict.fromkeys(values)),
        )
    return settings


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: frozenset[str]
    label_values: dict  # label -> values the table lists for it (outcome)


@functools.cache
def server_metrics() -> dict[str, Metric]:
    """Metric name -> Metric, from docs/ARCHITECTURE.md's "Metrics" table."""
    metrics = {}
    for name_cell, type_cell, labels_cell, meaning in _table_rows(_architecture_section("Metrics")):
        labels = frozenset(label.strip() for label in labels_cell.split(",") if label.strip())
        label_values = {}
        if "outcome" in labels:
            label_values["outcome"] = frozenset(_code_spans(meaning.split(":", 1)[1]))
        for name in _code_spans(name_cell):
            metrics[name] = Metric(name, type_cell, labels, label_values)
    return metrics


@functools.cache
def health_services() -> tuple[frozenset[str], str]:
    """(service names readiness/startup probes may use, the liveness service name)."""
    section = _architecture_section("Health")
    readiness: set[str] = set()
    liveness = None
    for bullet in re.findall(r"^- (.*?)(?=^- |^\S|\Z)", section, re.M | re.S):
        names = [span.strip('"') for span in re.findall(r'`("[^"`]*")`', bullet)]
        if "Readiness and startup probes use this" in bullet:
            readiness.update(names)
        elif "Liveness probes use this" in bullet:
            (liveness,) = names
    if not readiness or liveness is None:
        raise LookupError("docs/ARCHITECTURE.md's Health section names no readiness/liveness services")
    return frozenset(readiness), liveness


@functools.cache
def server_modules() -> tuple[str, str]:
    """(the server's module, the healthcheck module) as `python -m` names from the contract."""
    text = ARCHITECTURE.read_text()
    server = re.search(r"`python -m (service)`", text)
    healthcheck = re.search(r"`python -m (service\.healthcheck)\b", text)
    if server is None or healthcheck is None:
        raise LookupError("docs/ARCHITECTURE.md names no `python -m service` or its healthcheck module")
    return server.group(1), healthcheck.group(1)


# ----------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name!r} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"stage {self.name!r}: write ENV as KEY=VALUE, got {token!r}"
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a Dockerfile."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue  # comments, also inside a continued instruction
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"cannot read FROM {args!r}"
            current = Stage(name=(match.group(2) or str(len(stages))).lower(), base=match.group(1))
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may come before the first FROM, got {keyword}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((keyword, args))
    return global_args, stages


# ----------------------------------------------------------------------------- PromQL


def strip_promql(expr: str) -> str:
    """The expression without string literals, label matchers, ranges and grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", expr)


def series_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads."""
    return {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", strip_promql(expr))} - PROMQL_WORDS


def base_metric(series: str) -> str:
    """cnnserve_x_seconds_bucket -> cnnserve_x_seconds when that is a histogram of the contract."""
    metrics = server_metrics()
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in metrics and metrics[base].type == "histogram":
            return base
    return series


def selector_labels(expr: str) -> list[tuple[str, str, str]]:
    """(series, label, matched value) for each label matcher written on a series."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace("{", "(").replace("}", ")"), expr)
    found = []
    for series, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}", expr):
        for label, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
            found.append((series, label, value))
    return found


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in clause.split(",") if label.strip())
    return labels


def deploy_series_names() -> set[str]:
    """The series (as queried: histograms by their _bucket/_sum/_count names) that the Prometheus rules,
    the prometheus-adapter rule and the Grafana dashboard read, recording rules and `up` left out.

    Compare with the sample names of a live server's /metrics; the cnnserve_gpu_* gauges only appear
    where a GPU exists.
    """
    expressions = []
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "config.yaml").read_text())
    expressions += [rule["seriesQuery"] for rule in adapter["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "cnnserve-dashboard.json").read_text())
    expressions += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            expressions.append(selector.group(1))
    names = set().union(*(series_names(expr) for expr in expressions))
    return {name for name in names if ":" not in name} - PROMETHEUS_SERIES


# ----------------------------------------------------------------------------- tools


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (scripts/setup.sh installs Debian's kubectl as root)")
    return path


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; scripts/setup.sh installs it)")
    return path


@functools.cache
def kustomize(directory: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize deploy/<directory>` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/{directory} failed:\n{result.stderr}")
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False)


def check_promql(expressions: dict[str, str]) -> None:
    """Parse PromQL expressions with `promtool check rules` (each as a recording rule)."""
    rules = {
        "groups": [
            {
                "name": "syntax-check",
                "rules": [
                    {"record": f"check:expr:{i}", "expr": expr} for i, expr in enumerate(expressions.values())
                ],
            }
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exprs.yaml"
        path.write_text(yaml.safe_dump(rules))
        result = run_promtool("check", "rules", str(path), cwd=Path(tmp))
    if result.returncode != 0:
        numbered = "\n".join(f"  {i}: {where}" for i, where in enumerate(expressions))
        raise AssertionError(f"promtool rejects an expression:\n{result.stdout}{result.stderr}\n{numbered}")


# ----------------------------------------------------------------------------- images


def image_tag(target: str) -> str:
    """The image the ``target`` overlay deploys, without its registry (what ``docker build -t`` tags)."""
    overlay = yaml.safe_load((DEPLOY / "overlays" / target / "kustomization.yaml").read_text())
    (entry,) = overlay["images"]
    return f"{entry['newName'].rsplit('/', 1)[-1]}:{entry['newTag']}"


def without_registry(reference: str) -> str:
    """``registry.example.com/cnnserve:0.1.0-gpu`` -> ``cnnserve:0.1.0-gpu``."""
    return reference.rsplit("/", 1)[-1]
