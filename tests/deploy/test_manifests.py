"""Kubernetes manifests: they render, match the Kubernetes schemas, and agree with the server's contract."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.deploy_contract import (
    DEPLOY,
    ROOT,
    health_services,
    kustomize,
    parse_dockerfile,
    server_settings,
)

RENDERED = (
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "kserve",
    "prometheus",
    "prometheus-adapter",
    "model-repository",
    "grafana",
)
OVERLAYS = ("overlays/cpu", "overlays/gpu")
WORKLOADS = (*OVERLAYS, "kserve")

# Custom resources are not in the Kubernetes schemas; each is checked by hand in this module.
CUSTOM_KINDS = {
    "ServiceMonitor": "Prometheus operator CRD: test_servicemonitor_scrapes_the_metrics_service",
    "PodMonitor": "Prometheus operator CRD: test_kserve_predictor",
    "PrometheusRule": "Prometheus operator CRD: test_prometheusrule_carries_the_rules_file",
    "InferenceService": "KServe CRD: test_kserve_predictor (its pod spec is validated as a Pod)",
}
# Variables KServe's controller reads from a custom predictor's container (not server settings).
KSERVE_VARIABLES = {
    "PROTOCOL": "inference protocol of a custom predictor (v1 or v2)",
    "STORAGE_URI": "where KServe gets the model repository and mounts it at /mnt/models",
}
# InferenceService predictor fields that are KServe's, not the pod spec's.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "autoScaling",
}


def kubernetes_validate():
    """The schema validator (PyPI kubernetes-validate), with the schemas of a current Kubernetes release."""
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


def validate(obj: dict) -> None:
    validator = kubernetes_validate()
    version = validator.latest_version()
    try:
        validator.validate(obj, version, strict=True)
    except validator.ValidationError as error:
        raise AssertionError(
            f"{obj['kind']}/{obj['metadata']['name']} does not match the Kubernetes {version} schema at "
            f"{'.'.join(map(str, error.path))}: {error.message}"
        ) from None


def objects(directory: str, kind: str) -> list[dict]:
    return [obj for obj in kustomize(directory) if obj["kind"] == kind]


def one(directory: str, kind: str) -> dict:
    found = objects(directory, kind)
    assert len(found) == 1, f"deploy/{directory}: expected one {kind}, found {len(found)}"
    return found[0]


def server_pod(directory: str) -> tuple[dict, dict]:
    """(pod spec, server container) of the workload a directory deploys."""
    if directory == "kserve":
        spec = one(directory, "InferenceService")["spec"]["predictor"]
        name = "kserve-container"
    else:
        spec = one(directory, "Deployment")["spec"]["template"]["spec"]
        name = "cnnserve"
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    return spec, container


def container_env(directory: str, container: dict) -> dict[str, str]:
    """The variables a container gets: its env and the ConfigMaps it imports (env wins)."""
    env: dict[str, str] = {}
    configmaps = {cm["metadata"]["name"]: cm for cm in objects(directory, "ConfigMap")}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"only ConfigMaps feed the environment, got {source}"
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: settings are plain values"
        env[variable["name"]] = variable["value"]
    return env


def setting(env: dict[str, str], name: str) -> str:
    value = env.get(name, server_settings()[name].default)
    assert value is not None, f"{name} has no default: set it"
    return value


def port_named(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def prestop_seconds(container: dict) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop should be `sleep N`, got {command}"
    return int(command[1])


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ----------------------------------------------------------------------------- rendering and schemas


@pytest.mark.parametrize("directory", RENDERED)
def test_kustomize_renders(directory):
    rendered = kustomize(directory)
    assert rendered, f"deploy/{directory} renders nothing"
    for obj in rendered:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj


@pytest.mark.parametrize("directory", RENDERED)
def test_objects_match_the_kubernetes_schemas(directory):
    for obj in kustomize(directory):
        if obj["kind"] not in CUSTOM_KINDS:
            validate(obj)


def test_every_custom_kind_is_accounted_for():
    kinds = {obj["kind"] for directory in RENDERED for obj in kustomize(directory)}
    unknown_custom = {kind for kind in kinds if kind not in CUSTOM_KINDS} - {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    }
    assert not unknown_custom, f"add these kinds to the checks: {unknown_custom}"


# ----------------------------------------------------------------------------- the server's contract


@pytest.mark.parametrize("directory", WORKLOADS)
def test_ports_and_probes_follow_the_server_settings(directory):
    _, container = server_pod(directory)
    env = container_env(directory, container)
    grpc_name = "h2c" if directory == "kserve" else "grpc"
    grpc_port = port_named(container, grpc_name)
    assert grpc_port == int(setting(env, "SERVE_GRPC_PORT"))
    assert port_named(container, "metrics") == int(setting(env, "SERVE_METRICS_PORT"))
    assert port_named(container, "http") == int(setting(env, "SERVE_HTTP_PORT"))
    health_port = port_named(container, "health")
    assert health_port == int(setting(env, "SERVE_HEALTH_PORT"))
    # The kubelet probes the pod IP, so the server must not listen on loopback only.
    assert setting(env, "SERVE_HOST") == "0.0.0.0"

    readiness_services, liveness_service = health_services()
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{probe_name}: native gRPC"
        assert probe["grpc"]["port"] == health_port, (
            f"{probe_name}: the health port answers apart from inference"
        )
        service = probe["grpc"].get("service", "")
        if probe_name == "livenessProbe":
            assert service == liveness_service
        else:
            assert service in readiness_services, f"{probe_name} probes {service!r}"


@pytest.mark.parametrize("directory", WORKLOADS)
def test_settings_come_only_through_serve_variables(directory):
    spec, container = server_pod(directory)
    settings = server_settings()
    assert "args" not in container and "command" not in container, "settings go through SERVE_* variables"
    env = container_env(directory, container)
    allowed = KSERVE_VARIABLES if directory == "kserve" else {}
    unknown = {name for name in env if name not in settings and name not in allowed}
    assert not unknown, f"variables the server does not read: {sorted(unknown)}"
    for name in ("SERVE_DEVICE", "SERVE_MODEL_CONTROL_MODE"):
        assert setting(env, name) in settings[name].choices, f"{name}={setting(env, name)}"

    repo = setting(env, "SERVE_REPO")
    if directory == "kserve":
        assert env["PROTOCOL"] == "v2"
        assert env["STORAGE_URI"].startswith("pvc://") and repo == "/mnt/models"
    else:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repo]
        assert mount.get("readOnly") is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert (
            volume["persistentVolumeClaim"]["claimName"]
            == one(directory, "PersistentVolumeClaim")["metadata"]["name"]
        )


@pytest.mark.parametrize("directory", WORKLOADS)
def test_shutdown_outlasts_prestop_and_drain(directory):
    spec, container = server_pod(directory)
    drain = int(setting(container_env(directory, container), "SERVE_GRACE_PERIOD_SECONDS"))
    pre_stop = prestop_seconds(container)
    assert pre_stop > 0
    # Kubernetes counts preStop inside the grace period, then SIGTERM starts the server's drain.
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain, (
        spec["terminationGracePeriodSeconds"],
        pre_stop,
        drain,
    )


@pytest.mark.parametrize("directory", WORKLOADS)
def test_pod_runs_locked_down_as_the_image_user(directory):
    spec, container = server_pod(directory)
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    _, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    image_uid = int(stages["cpu"].last("USER").split(":")[0])
    assert pod_security["runAsUser"] == image_uid
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


@pytest.mark.parametrize("directory", ("overlays/gpu", "kserve"))
def test_gpu_workloads_request_a_gpu(directory):
    spec, container = server_pod(directory)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert spec["nodeSelector"] and spec["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert container["image"].endswith("-gpu")
    assert setting(container_env(directory, container), "SERVE_DEVICE") == "cuda"


def test_cpu_overlay_runs_without_a_gpu():
    spec, container = server_pod("overlays/cpu")
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "nodeSelector" not in spec
    assert container["image"].endswith("-cpu")
    assert setting(container_env("overlays/cpu", container), "SERVE_DEVICE") == "cpu"


# ----------------------------------------------------------------------------- services, scaling


@pytest.mark.parametrize("directory", OVERLAYS)
def test_services_reach_the_pods(directory):
    deployment = one(directory, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    _, container = server_pod(directory)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = objects(directory, "Service")
    for service in services:
        assert matches(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{service['metadata']['name']}: {port}"
    grpc_services = [s for s in services if any(p["targetPort"] == "grpc" for p in s["spec"]["ports"])]
    headless = [s for s in grpc_services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "one headless Service for client-side balancing of gRPC"
    assert len(grpc_services) == 2, "a ClusterIP and a headless Service for gRPC"
    http_services = [s for s in services if any(p["targetPort"] == "http" for p in s["spec"]["ports"])]
    assert [s.get("spec", {}).get("clusterIP") for s in http_services] == [None], (
        "a ClusterIP Service for HTTP"
    )
    assert http_services[0] in grpc_services, "HTTP and gRPC on one Service name"
    assert any(p["targetPort"] == "metrics" for s in services for p in s["spec"]["ports"])
    pdb = one(directory, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_hpa_scales_on_the_adapter_metric_with_a_cpu_fallback(directory):
    hpa = one(directory, "HorizontalPodAutoscaler")
    deployment = one(directory, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "config.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    metrics = hpa["spec"]["metrics"]
    pods_metrics = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
    assert pods_metrics and set(pods_metrics) <= served, (pods_metrics, served)
    cpu = [m for m in metrics if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    _, container = server_pod(directory)
    assert container["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"

    pdb = one(directory, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a drain must leave a replica serving"


# ----------------------------------------------------------------------------- custom resources


def _alert_job() -> str:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    (expr,) = [
        r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "CnnserveTargetDown"
    ]
    return re.search(r'job="([^"]+)"', expr).group(1)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_servicemonitor_scrapes_the_metrics_service(directory):
    monitor = one(directory, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in objects(directory, "Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(selected) == 1, "the ServiceMonitor selects exactly the metrics Service"
    (service,) = selected
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "no endpoints to scrape"
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # job = the value of the Service label named by jobLabel, which the TargetDown alert selects.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == _alert_job()


@pytest.mark.parametrize("directory", OVERLAYS)
def test_prometheusrule_carries_the_rules_file(directory):
    rule = one(directory, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == rules


def test_kserve_predictor():
    service = one("kserve", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = service["spec"]["predictor"]
    first = predictor["containers"][0]
    assert first["name"] == "kserve-container", "KServe finds a custom predictor by this container name"
    assert first["ports"][0]["name"] == "h2c", (
        "the predictor Service's port; h2c = gRPC over cleartext HTTP/2"
    )
    # RawDeployment adds the further container ports to the predictor Service: HTTP/REST among them
    assert port_named(first, "http") == int(setting(container_env("kserve", first), "SERVE_HTTP_PORT"))
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]

    pod_spec = {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    validate(pod)

    claim = one("kserve", "PersistentVolumeClaim")["metadata"]["name"]
    env = container_env("kserve", first)
    assert env["STORAGE_URI"].removeprefix("pvc://").split("/")[0] == claim

    monitor = one("kserve", "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    # KServe labels predictor pods serving.kserve.io/inferenceservice=<name>.
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": service["metadata"]["name"]
    }
    assert monitor["spec"]["jobLabel"] == "serving.kserve.io/inferenceservice"
    assert service["metadata"]["name"] == _alert_job()
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert port_named(first, endpoint["port"]) == int(setting(env, "SERVE_METRICS_PORT"))
