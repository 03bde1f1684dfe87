"""The container image, built and run for real: a Docker daemon of the test's own, a local Debian base where
no registry can be reached, and ``docker build`` of the Dockerfile we ship.

- :class:`DockerDaemon`: ``dockerd`` (Debian's ``docker.io``) with its data, exec root and socket in a
  folder of its own, ``--iptables=false`` and the ``vfs`` storage driver (no kernel module needed), stopped
  with the context. Containers run with ``--network host``.
- :func:`local_base`: ``debootstrap`` makes a Debian bookworm root file system with python3 and a venv at
  ``/opt/python`` first on PATH (what the Dockerfile assumes of ``python:3.11-slim``: a ``python`` that may
  install packages), cached as a tarball, and ``docker import`` turns it into an image.
- :func:`build`: the Dockerfile's target with the classic builder (``DOCKER_BUILDKIT=0``: what Debian's
  Docker 20.10 runs), the base as the ``CPU_BASE_IMAGE`` build argument, and the CA bundle the host's pip
  uses copied to ``build-ca/ca.pem`` for the build's pip only (removed after; no shipped stage reads it).

:func:`unavailable` says why any of this cannot run here (then the tests skip with that reason).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CNNSERVE_IMAGE_CACHE", Path.home() / ".cache" / "cnnserve" / "image"))
BASE_TAG = "cnnserve-base:bookworm-python"
BASE_PATH = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_MIRROR = os.environ.get("CNNSERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DAEMON_START_S = 60


def unavailable() -> str | None:
    """Why the image cannot be built and run here (None: it can)."""
    if os.geteuid() != 0:
        return "building and running the image needs root (dockerd and debootstrap)"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package}; scripts/setup.sh does it as root)"
    return None


def run(command: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600, **kwargs):
    """``command``, its output captured; a failure raises with the output's tail."""
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}:\n{tail}")
    return done


@dataclass
class DockerDaemon:
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment in which ``docker`` talks to this daemon."""
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.folder / 'docker.sock'}", "DOCKER_BUILDKIT": "0"}
        env.pop("DOCKER_CONTEXT", None)
        return env

    def docker(self, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=self.env, timeout=timeout, **kwargs)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "dockerd.log").open("w")
        self.process = subprocess.Popen(
            [
                "dockerd",
                f"--host=unix://{self.folder / 'docker.sock'}",
                f"--data-root={self.folder / 'data'}",
                f"--exec-root={self.folder / 'exec'}",
                f"--pidfile={self.folder / 'dockerd.pid'}",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + DAEMON_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.process.returncode}: {self.log()[-2000:]}")
            probe = subprocess.run(["docker", "info"], env=self.env, capture_output=True, timeout=30)
            if probe.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd did not answer within {DAEMON_START_S} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.folder / "dockerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def docker_daemon(folder: Path | None = None) -> Iterator[DockerDaemon]:
    """A daemon of its own for the duration of the context; its data go with the folder (a temporary one
    by default), containers and images included."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnnserve-docker-")))
        daemon = DockerDaemon(folder)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()
            unmount_below(folder)  # a network namespace dockerd left mounted would keep the folder busy
            # vfs layers are plain folders; their files may be read-only
            shutil.rmtree(folder / "data", ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """Unmount whatever is still mounted below ``folder`` (deepest first)."""
    prefix = str(folder.resolve()) + "/"
    lines = Path("/proc/mounts").read_text().splitlines()
    mounts = [fields[1] for fields in (line.split() for line in lines) if len(fields) > 1]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def base_tarball(log: Path | None = None) -> Path:
    """A Debian bookworm root file system with python3 and a venv at /opt/python, as a tarball (cached)."""
    tarball = CACHE / "bookworm-python.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE) as work:
        rootfs = Path(work) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            timeout=900,
        )
        run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/python"])
        run(["chroot", str(rootfs), "apt-get", "clean"])
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)
    return tarball


def local_base(daemon: DockerDaemon) -> str:
    """The local base imported into ``daemon``; its tag."""
    tarball = base_tarball()
    daemon.docker(
        "import",
        "--change",
        f"ENV PATH={BASE_PATH}",
        "--change",
        'CMD ["python3"]',
        str(tarball),
        BASE_TAG,
    )
    return BASE_TAG


def host_ca_bundle() -> Path | None:
    """The CA bundle the host's pip uses, where it names one (PIP_CERT, then SSL_CERT_FILE)."""
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


@contextlib.contextmanager
def build_ca() -> Iterator[None]:
    """The host's CA bundle at build-ca/ca.pem for the duration of a build (the wheel and install stages'
    pip read it; no shipped stage does)."""
    bundle = host_ca_bundle()
    target = ROOT / "build-ca" / "ca.pem"
    if bundle is None:
        yield
        return
    shutil.copyfile(bundle, target)
    try:
        yield
    finally:
        target.unlink(missing_ok=True)


def build(daemon: DockerDaemon, target: str, tag: str, base: str, timeout: float = 1800) -> float:
    """``docker build --target TARGET -t TAG`` of the repository's Dockerfile with ``base`` as its CPU base
    image (the classic builder, host network); returns the seconds it took."""
    started = time.monotonic()
    with build_ca():
        daemon.docker(
            "build",
            "--network",
            "host",
            "--target",
            target,
            "--build-arg",
            f"CPU_BASE_IMAGE={base}",
            "-t",
            tag,
            str(ROOT),
            timeout=timeout,
        )
    return time.monotonic() - started
