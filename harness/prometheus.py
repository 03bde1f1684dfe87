"""A real Prometheus server (Debian's ``prometheus`` package, or ``$CNNSERVE_PROMETHEUS``) for tests: it
scrapes local targets, evaluates rule files, and answers its HTTP API on a free 127.0.0.1 port.

    binary = find_binary()                       # None where Prometheus is not installed
    config = write_config(work_dir, targets=["127.0.0.1:8002"], labels={"namespace": "ci"},
                          rule_files=[rules], interval_s=1)
    with start(binary, config, work_dir) as prom:
        prom.query('up{job="cnnserve"}')           # /api/v1/query: the result vector
        prom.samples('up{job="cnnserve"}', 10)     # raw samples of the last 10 s, with their timestamps
        prom.alerts()                             # /api/v1/alerts: active (pending or firing) alerts
        prom.wait_for(lambda: prom.query("up") or None, timeout=20, what="a first scrape")

The server keeps its TSDB in ``work_dir`` and its log in ``work_dir/prometheus.log``; it stops with SIGTERM
then SIGKILL (and gets SIGTERM if the thread that started it exits first).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from harness.peers.common import PeerServer, PeerUnavailable, free_port, launch, tail

BINARY_ENV = "CNNSERVE_PROMETHEUS"
JOB = "cnnserve"  # the job name the rules' CnnserveTargetDown alert selects
START_ATTEMPTS = 3
POLL_S = 0.25

T = TypeVar("T")

# Straight to the loopback server, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


def find_binary() -> Path | None:
    """``$CNNSERVE_PROMETHEUS``, else ``prometheus`` on PATH, else None."""
    chosen = os.environ.get(BINARY_ENV) or shutil.which("prometheus")
    return Path(chosen) if chosen and os.access(chosen, os.X_OK) else None


def write_config(
    work_dir: Path,
    *,
    targets: Sequence[str],
    labels: Mapping[str, str],
    rule_files: Sequence[Path],
    interval_s: float = 1.0,
    job: str = JOB,
) -> Path:
    """``work_dir/prometheus.yml``: scrape ``targets`` (``HOST:PORT``, path /metrics) every ``interval_s``
    with ``labels`` added to every series, and evaluate ``rule_files`` at the same interval. Written as
    JSON, which is YAML."""
    interval = f"{int(interval_s * 1000)}ms"
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets), "labels": dict(labels)}],
            }
        ],
    }
    path = Path(work_dir) / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


@dataclass
class Prometheus:
    """A running Prometheus: its API at ``url``, its process (group) and log."""

    server: PeerServer

    @property
    def url(self) -> str:
        return self.server.http_url

    def log_tail(self) -> str:
        return self.server.log_tail()

    def api(self, path: str, **params: str) -> object:
        """GET ``/api/v1/<path>`` and return ``data``; PrometheusError when the API reports an error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with _OPENER.open(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"{path} {params}: HTTP {e.code}: {e.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise PrometheusError(f"{path} {params}: {e}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now: ``[{"metric": {labels}, "value": [t, "text"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return data["result"]

    def samples(self, selector: str, seconds: float) -> list[dict]:
        """The raw samples of ``selector`` over the last ``seconds``, with their own timestamps:
        ``[{"metric": {labels}, "values": [[t, "text"], ...]}, ...]``."""
        data = self.api("query", query=f"{selector}[{int(seconds * 1000)}ms]")
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{selector!r}[...] is a {data['resultType']}, not a range vector")
        return data["result"]

    def alerts(self) -> list[dict]:
        """Active alerts: ``[{"labels": ..., "annotations": ..., "state": "pending"|"firing", ...}]``."""
        return self.api("alerts")["alerts"]

    def rule_groups(self) -> list[dict]:
        return self.api("rules")["groups"]

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float, what: str) -> T:
        """Call ``probe`` until it returns something other than None (or ``timeout`` s pass:
        PrometheusError naming ``what`` and the log's tail)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.server.running():
                raise PrometheusError(f"prometheus exited while waiting for {what}:\n{self.log_tail()}")
            found = probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise PrometheusError(f"no {what} after {timeout:.0f}s; prometheus log:\n{self.log_tail()}")
            time.sleep(POLL_S)

    def stop(self) -> int:
        return self.server.stop()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(binary: Path, config: Path, work_dir: Path, *, ready_timeout: float = 60.0) -> Prometheus:
    """``prometheus`` with ``config`` on a free 127.0.0.1 port, its TSDB in ``work_dir/tsdb``; returns once
    ``/-/ready`` answers (the rule files have loaded by then: a bad one stops the server first)."""
    work_dir = Path(work_dir)
    log_path = work_dir / "prometheus.log"
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        cmd = [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={work_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ]
        proc = launch(cmd, log_path, env={**os.environ}, cwd=work_dir)
        server = PeerServer("prometheus", proc, "", f"http://127.0.0.1:{port}", None, log_path)
        try:
            server.wait_http("/-/ready", ready_timeout, "ready")
        except PeerUnavailable as e:
            server.stop()
            if "address already in use" in tail(log_path).lower() and attempt < START_ATTEMPTS:
                continue
            raise PrometheusError(str(e)) from None
        return Prometheus(server)
    raise AssertionError("unreachable")
