"""Virtual environments for the peers, built once and cached under ``$CNNSERVE_PEERS_CACHE``.

Each venv lives in a folder named by the peer and a hash of what it pins (requirements, the base Python,
the layout version of the post-install steps). A venv counts as installed only once its completion marker
exists; the marker is written last, so an interrupted build is rebuilt by the next caller. Builders are
serialized per venv with an ``fcntl`` lock, so concurrent test sessions wait for one install.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.peers.common import PeerUnavailable

CACHE_ENV = "CNNSERVE_PEERS_CACHE"
PYTHON_ENV = "CNNSERVE_PEERS_PYTHON"  # the interpreter the venvs are made from (default: this one's base)
MARKER = ".cnnserve-installed.json"
PIP_SOCKET_TIMEOUT_S = 20  # per connection attempt; an unreachable registry fails in well under a minute
PIP_RETRIES = 1
INSTALL_TIMEOUT_S = 900.0
LOCK_TIMEOUT_S = 1200.0  # a concurrent caller may be installing: wait at most this long for it


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cnnserve" / "peers").expanduser()


@dataclass(frozen=True)
class BasePython:
    """The interpreter a peer venv is created from (and whose libpython Triton's stub embeds)."""

    executable: Path
    version: str  # "3.11"
    full_version: str  # "3.11.7"
    libdir: Path
    ldlibrary: str  # "libpython3.11.so" when built shared
    shared: bool

    @classmethod
    def find(cls) -> BasePython:
        chosen = os.environ.get(PYTHON_ENV)
        if not chosen:  # this interpreter's base: a venv's sysconfig answers for it
            info = _python_info()
            exe = getattr(sys, "_base_executable", "") or sys.executable
        else:
            exe = chosen
            script = (
                "import json,sys,sysconfig\n"
                + inspect.getsource(_python_info)
                + "print(json.dumps(_python_info()))"
            )
            try:
                out = subprocess.run(
                    [exe, "-c", script], capture_output=True, text=True, timeout=60, check=True
                ).stdout
            except (OSError, subprocess.SubprocessError) as e:
                raise PeerUnavailable(f"cannot run the base Python {exe} (${PYTHON_ENV}): {e}") from None
            info = json.loads(out)
        return cls(executable=Path(exe), **{**info, "libdir": Path(info["libdir"])})


def _python_info() -> dict:
    return {
        "version": "{}.{}".format(*sys.version_info[:2]),
        "full_version": sys.version.split()[0],
        "libdir": sysconfig.get_config_var("LIBDIR") or "",
        "ldlibrary": sysconfig.get_config_var("LDLIBRARY") or "",
        "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    }


@dataclass(frozen=True)
class VenvSpec:
    """What one peer venv holds. ``layout`` is bumped when ``post_install`` changes what it writes."""

    peer: str
    requirements: tuple[str, ...]
    python: BasePython
    layout: int = 1

    @property
    def key(self) -> str:
        pinned = json.dumps(
            [self.requirements, self.python.full_version, str(self.python.executable), self.layout]
        )
        return f"{self.peer}-py{self.python.version}-{hashlib.sha256(pinned.encode()).hexdigest()[:12]}"

    @property
    def path(self) -> Path:
        return cache_root() / self.key

    def site_packages(self) -> Path:
        return self.path / "lib" / f"python{self.python.version}" / "site-packages"

    def installed(self) -> dict | None:
        """The completion marker's record, or None while the venv is missing or half-built."""
        try:
            return json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path``; PeerUnavailable after ``timeout`` s of waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PeerUnavailable(
                        f"another process has held {path} for over {timeout:.0f}s (installing?)"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"{what}: no result after {timeout:.0f}s ({' '.join(cmd)})") from None
    if done.returncode != 0:
        lines = (done.stdout + "\n" + done.stderr).strip().splitlines()
        # pip's errors and retries say why; other warnings (ignored mirrors, ...) would bury them
        telling = [line for line in lines if line.startswith(("ERROR", "WARNING: Retrying"))]
        output = "\n".join((telling or lines)[-25:])
        raise PeerUnavailable(f"{what} failed (exit {done.returncode}):\n{output}")


def ensure_venv(
    spec: VenvSpec,
    *,
    post_install: Callable[[VenvSpec], dict] | None = None,
    log: Callable[[str], None] = lambda line: None,
    timeout: float = INSTALL_TIMEOUT_S,
) -> dict:
    """The venv of ``spec``, built if missing; returns its completion record (``seconds`` it took to
    build, ``built_now``). ``post_install`` runs inside the lock before the marker and may add to the
    record; a PeerUnavailable from it leaves the venv uninstalled."""
    record = spec.installed()
    if record is not None:
        return {**record, "built_now": False}
    with _locked(spec.path.with_name(spec.key + ".lock"), LOCK_TIMEOUT_S):
        record = spec.installed()  # another caller may have finished while we waited
        if record is not None:
            return {**record, "built_now": False}
        started = time.monotonic()
        if spec.path.exists():
            log(f"removing the half-built {spec.path}")
            shutil.rmtree(spec.path)
        log(f"creating {spec.path} from Python {spec.python.full_version} ({spec.python.executable})")
        _run([str(spec.python.executable), "-m", "venv", str(spec.path)], "python -m venv", 300)
        pip = [str(spec.path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input"]
        pip += ["--timeout", str(PIP_SOCKET_TIMEOUT_S), "--retries", str(PIP_RETRIES)]
        log(f"pip install {' '.join(spec.requirements)}")
        remaining = max(60.0, timeout - (time.monotonic() - started))
        _run([*pip, *spec.requirements], f"installing {spec.peer} ({' '.join(spec.requirements)})", remaining)
        record = {
            "peer": spec.peer,
            "requirements": list(spec.requirements),
            "python": spec.python.full_version,
        }
        if post_install is not None:
            record.update(post_install(spec))
        record["seconds"] = round(time.monotonic() - started, 1)
        marker = spec.path / MARKER
        marker.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
        marker.with_suffix(".tmp").replace(marker)
        log(f"installed {spec.peer} in {record['seconds']:.0f}s")
        return {**record, "built_now": True}
