"""The container image, built from the Dockerfile we ship and run as users run it (harness.image): a Docker
daemon of the test's own, a local Debian base where no registry is reachable, the classic builder.

The image runs locked down as the manifests run it (read-only root file system with a tmpfs at /tmp, all
capabilities dropped, no new privileges, uid 10001, the exported demo repository mounted read-only at
/models), classifies the held-out digits through gRPC and HTTP from the host, exposes its metrics, turns
healthy by Docker's own HEALTHCHECK, and drains on ``docker stop``: requests in flight answered, exit 0.
Where the image cannot be built (not root, no Docker or debootstrap), every test skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness import image
from harness.ports import free_ports
from harness.repository import copy_entry
from harness.waiting import wait_for
from service.client import InferenceClient
from tests.deploy.deploy_contract import image_tag

pytestmark = pytest.mark.image

TAG = image_tag("cpu")  # what the cpu overlay deploys, as the Dockerfile tags it
USER = "10001:10001"
HEALTHY_WITHIN_S = 150  # the HEALTHCHECK's first probe comes after its 15 s interval
SLOW = "lenet5_slow"  # waits 3 s for a batch it never fills: requests are in flight when stop comes


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    reason = image.unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        context = image.docker_daemon(tmp_path_factory.mktemp("docker"))
        running = context.__enter__()
    except RuntimeError as e:  # no cgroups, no privileges: this machine cannot run containers
        pytest.skip(f"dockerd cannot run here: {str(e)[-500:]}")
    try:
        yield running
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def built(daemon) -> dict:
    """The cpu target, built on the local base (the build's figures for the report)."""
    started = time.monotonic()
    try:
        base = image.local_base(daemon)
    except RuntimeError as e:  # debootstrap could not reach a Debian mirror
        pytest.skip(f"no base image: none can be pulled and debootstrap failed: {str(e)[-500:]}")
    base_s = time.monotonic() - started
    seconds = image.build(daemon, "cpu", TAG, base)
    inspected = json.loads(daemon.docker("image", "inspect", TAG).stdout)[0]
    return {"tag": TAG, "base_s": base_s, "build_s": seconds, "inspect": inspected}


@pytest.fixture(scope="module")
def repository(lenet5_export, tmp_path_factory):
    """The demo's repository (lenet5 and lenet5_int8 as exported) and a slow copy of lenet5, readable by
    the image's uid (it is mounted read-only)."""
    repo = tmp_path_factory.mktemp("image_repo")
    for entry in lenet5_export.entries:
        if entry.model_dir.name in ("lenet5", "lenet5_int8"):
            shutil.copytree(entry.model_dir, repo / entry.model_dir.name)
    copy_entry(
        lenet5_export["fp32"].model_dir,
        repo,
        SLOW,
        max_batch_size=8,
        preferred_batch_sizes=(),
        max_queue_delay_microseconds=3_000_000,
    )
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in repo.parents:  # the image's uid must reach the mount's source through its parents
        if parent == parent.parent:
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return repo


def test_the_image_is_what_the_manifests_assume(built):
    """The ports, probes, user and settings the Deployment assumes are what the built image does (read
    from ``docker image inspect``, not the Dockerfile); its read-only root file system is exercised by
    the next test, which runs the image that way."""
    import yaml

    from tests.deploy.deploy_contract import DEPLOY

    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = built["inspect"]["Config"]
    uid, _, gid = config["User"].partition(":")
    assert (int(uid), int(gid)) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert config["Entrypoint"] == ["python", "-m", "service"]
    exposed = {int(port.split("/")[0]) for port in config["ExposedPorts"]}
    assert exposed == {p["containerPort"] for p in container["ports"]}
    env = dict(item.split("=", 1) for item in config["Env"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(env["SERVE_HEALTH_PORT"]), probe
    assert env["SERVE_REPO"] == "/models" and env["SERVE_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/cnnserve/bin:")
    assert "PIP_CERT" not in env and "SSL_CERT_FILE" not in env
    assert "python -m service.healthcheck" in " ".join(config["Healthcheck"]["Test"])


def test_the_image_serves_digits_locked_down_and_drains_on_stop(daemon, built, repository):
    from examples.classify_digits import heldout_digits
    from models.lenet import DIGITS_INPUT

    http, grpc_port, metrics, health = free_ports(4)
    name = "cnnserve-under-test"
    settings = {
        "SERVE_HOST": "127.0.0.1",  # the host network: loopback only
        "SERVE_HTTP_PORT": http,
        "SERVE_GRPC_PORT": grpc_port,
        "SERVE_METRICS_PORT": metrics,
        "SERVE_HEALTH_PORT": health,
        "SERVE_GRACE_PERIOD_SECONDS": 20,
    }
    command = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
    command += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", USER]
    command += ["-v", f"{repository}:/models:ro"]
    for key, value in settings.items():
        command += ["-e", f"{key}={value}"]
    daemon.docker(*command, built["tag"])
    try:
        state = lambda: json.loads(daemon.docker("inspect", name).stdout)[0]["State"]  # noqa: E731
        wait_for(
            lambda: state()["Health"]["Status"] == "healthy" or not state()["Running"],
            HEALTHY_WITHIN_S,
            "Docker's health check to report the container healthy",
        )
        assert state()["Running"], daemon.docker("logs", name).stderr[-3000:]

        digits = heldout_digits(DIGITS_INPUT)
        with InferenceClient(f"127.0.0.1:{grpc_port}", timeout=30) as client:
            predicted = np.concatenate(
                [client.infer("lenet5", digits.tensors[i : i + 8]).argmax(1) for i in range(0, 360, 8)]
            )
        grpc_accuracy = float((predicted == digits.labels).mean())
        http_predicted = []
        for i in range(0, len(digits.labels), 8):
            rows = digits.tensors[i : i + 8]
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape)}]}
            body["inputs"][0]["data"] = rows.ravel().tolist()
            request = urllib.request.Request(
                f"http://127.0.0.1:{http}/v2/models/lenet5_int8/infer", json.dumps(body).encode()
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                output = json.loads(answer.read())["outputs"][0]
            http_predicted.append(np.asarray(output["data"]).reshape(output["shape"]).argmax(1))
        http_accuracy = float((np.concatenate(http_predicted) == digits.labels).mean())
        assert grpc_accuracy >= 0.97 and http_accuracy >= 0.97, (grpc_accuracy, http_accuracy)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as scrape:
            text = scrape.read().decode()
        assert 'cnnserve_requests_total{model="lenet5"' in text and 'model="lenet5_int8"' in text

        # docker stop with requests in flight: each waits 3 s in the slow model's queue
        answered: list[tuple[int, ...]] = []
        with InferenceClient(f"127.0.0.1:{grpc_port}", timeout=30) as client, ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(client.infer, SLOW, digits.tensors[i : i + 1]) for i in range(4)]
            gauge = f'cnnserve_inflight_requests{{model="{SLOW}",version="1"}} 4.0'
            wait_for(lambda: gauge in _scrape(metrics), 20, "four requests in flight")
            stopper = threading.Thread(target=daemon.docker, args=("stop", "-t", "40", name))
            stopper.start()
            answered = [f.result(timeout=40).shape for f in in_flight]
            stopper.join(60)
        assert answered == [(1, 10)] * 4
        final = state()
        assert not final["Running"] and final["ExitCode"] == 0, final
        logs = daemon.docker("logs", name).stderr
        assert "shutting down: draining" in logs and "Traceback" not in logs, logs[-3000:]
    finally:
        daemon.docker("rm", "-f", name)


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return ""
