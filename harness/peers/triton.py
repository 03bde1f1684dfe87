"""NVIDIA Triton as a peer: ``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel, in a venv of its own.

The wheel ships Triton's C++ server and its Python backend but no ONNX Runtime backend, so the ONNX files
are served the way a Python user of Triton serves them: a Python-backend model (``triton_model.py``) that
runs the file on onnxruntime CPU, behind Triton's gRPC/HTTP front end and dynamic batcher.

    install = ensure()                                   # cached venv; PeerUnavailable with the reason
    with serve_onnx([OnnxModel.from_onnx(path)], work_dir) as server:
        server.grpc_address                              # 127.0.0.1:PORT, KServe v2 / Triton gRPC
    start(install, repo_dir, wait="live")                # any repository, e.g. one python -m export wrote
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.peers.common import (
    OnnxModel,
    PeerServer,
    PeerUnavailable,
    available_cpus,
    free_ports,
    http_ok,
    launch,
)
from harness.peers.install import BasePython, VenvSpec, ensure_venv

PYTRITON = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"  # the tritonserver that nvidia-pytriton 0.7.0 ships
REQUIREMENTS = (PYTRITON, "numpy<2", "onnxruntime==1.22.1")
LAYOUT = 1  # bump when _post_install changes what it writes into the venv
STUB = "triton_python_backend_stub"
MODEL_FILE = Path(__file__).with_name("triton_model.py")
START_ATTEMPTS = 3


@dataclass(frozen=True)
class TritonInstall:
    venv: Path
    python: BasePython
    record: dict

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{self.python.version}" / "site-packages"

    @property
    def root(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def library_path(self) -> str:
        """Triton's bundled shared libraries, then the libpython the Python-backend stub embeds."""
        return os.pathsep.join([str(self.site_packages / "nvidia_pytriton.libs"), str(self.python.libdir)])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = self.library_path + (os.pathsep + previous if previous else "")
        # The stub's embedded interpreter ignores PYTHON* variables and finds its prefix by looking up
        # "python3" on PATH: the venv's bin first makes it start inside the venv (pyvenv.cfg), so the numpy
        # it imports at startup, before model.py runs, is the venv's numpy<2 that the stub was built
        # against, not the system Python's.
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", os.defpath)])
        return env


def _spec(python: BasePython) -> VenvSpec:
    return VenvSpec("triton", REQUIREMENTS, python, layout=LAYOUT)


def _check_stub(install: TritonInstall) -> None:
    """The stub must load the system libpython it was built for; ``ldd`` says whether it resolves."""
    stub = install.backends / "python" / STUB
    if not stub.is_file():
        raise PeerUnavailable(f"the Python-backend stub is missing: {stub}")
    if shutil.which("ldd") is None:
        return
    out = subprocess.run(
        ["ldd", str(stub)], capture_output=True, text=True, timeout=30, env=install.env()
    ).stdout
    missing = [line.strip() for line in out.splitlines() if "not found" in line]
    wanted = f"libpython{install.python.version}.so"
    if missing or wanted not in out:
        raise PeerUnavailable(
            f"the Python-backend stub does not match Python {install.python.full_version} "
            f"({install.python.libdir}): unresolved {missing or [wanted]}"
        )


def _post_install(python: BasePython) -> Callable[[VenvSpec], dict]:
    def finish(spec: VenvSpec) -> dict:
        install = TritonInstall(spec.path, python, {})
        stubs = install.root / "python_backend_stubs"
        stub = stubs / python.version / STUB
        if not stub.is_file():
            have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
            raise PeerUnavailable(
                f"{PYTRITON} has no Python-backend stub for Python {python.version}: {have}"
            )
        shutil.copy2(stub, install.backends / "python" / STUB)
        _check_stub(install)
        return {"triton": TRITON_VERSION, "stub": python.version}

    return finish


def ensure(log: Callable[[str], None] = lambda line: None) -> TritonInstall:
    """The Triton venv (built on first use: about a minute); PeerUnavailable with the reason otherwise."""
    python = BasePython.find()
    if not python.shared or not (python.libdir / f"libpython{python.version}.so.1.0").exists():
        raise PeerUnavailable(
            f"Python {python.full_version} at {python.executable} has no shared libpython in "
            f"{python.libdir}, which Triton's Python-backend stub embeds"
        )
    spec = _spec(python)
    record = ensure_venv(spec, post_install=_post_install(python), log=log)
    install = TritonInstall(spec.path, python, record)
    if not os.access(install.binary, os.X_OK):
        raise PeerUnavailable(f"tritonserver is missing or not executable: {install.binary}")
    return install


def _text(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def python_model_config(
    model: OnnxModel,
    *,
    site_packages: Path,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 0,
    instances: int = 1,
    intra_op_threads: int | None = None,
) -> str:
    """config.pbtxt of a Python-backend model with ``model``'s input/output names, dims and batch size."""
    too_big = [b for b in preferred_batch_sizes if not 1 <= b <= model.max_batch_size]
    if too_big:
        raise ValueError(f"preferred batch sizes {too_big} outside 1..{model.max_batch_size}")
    params = {
        "site_packages": str(site_packages),
        "onnx_file": "model.onnx",
        "intra_op_threads": str(intra_op_threads or available_cpus()),
    }
    preferred = "".join(f"  preferred_batch_size: {b}\n" for b in preferred_batch_sizes)
    parameters = "".join(
        f"parameters {{\n  key: {_text(k)}\n  value {{ string_value: {_text(v)} }}\n}}\n"
        for k, v in params.items()
    )
    return (
        f"name: {_text(model.name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {model.max_batch_size}\n"
        f"input {{\n  name: {_text(model.input_name)}\n  data_type: TYPE_FP32\n"
        f"  dims: [{', '.join(map(str, model.dims))}]\n}}\n"
        f"output {{\n  name: {_text(model.output_name)}\n  data_type: TYPE_FP32\n"
        f"  dims: [{model.classes}]\n}}\n"
        f"instance_group {{\n  count: {instances}\n  kind: KIND_CPU\n}}\n"
        f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"{parameters}"
    )


def write_python_model(
    model: OnnxModel, repo_dir: Path, install: TritonInstall, *, version: int = 1, **config
) -> Path:
    """``<repo>/<name>/config.pbtxt`` + ``<version>/{model.py, model.onnx}`` (a link to the file); ``config``
    goes to :func:`python_model_config`. Returns the model folder."""
    model_dir = Path(repo_dir) / model.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    text = python_model_config(model, site_packages=install.site_packages, **config)
    (model_dir / "config.pbtxt").write_text(text)
    shutil.copyfile(MODEL_FILE, version_dir / "model.py")
    onnx = version_dir / "model.onnx"
    onnx.unlink(missing_ok=True)
    onnx.symlink_to(Path(model.path).resolve())
    return model_dir


def start(
    install: TritonInstall,
    repo_dirs: Path | Sequence[Path],
    *,
    log_path: Path,
    wait: str | None = "ready",
    ready_timeout: float = 120.0,
    exit_on_error: bool = False,
    extra_args: Sequence[str] = (),
) -> PeerServer:
    """``tritonserver`` on ``repo_dirs`` with free 127.0.0.1 ports, every config checked as written
    (``--disable-auto-complete-config``), strict readiness. ``wait``: "ready" (every model loaded),
    "live" (the server up, every model tried: Triton loads the repository before it listens) or None."""
    if wait not in ("ready", "live", None):
        raise ValueError(f"wait must be 'ready', 'live' or None, not {wait!r}")
    repos = [repo_dirs] if isinstance(repo_dirs, (str, os.PathLike)) else list(repo_dirs)
    log_path = Path(log_path)
    for attempt in range(1, START_ATTEMPTS + 1):
        http, grpc, metrics = free_ports(3)
        cmd = [
            str(install.binary),
            *(f"--model-repository={Path(r).resolve()}" for r in repos),
            f"--backend-directory={install.backends}",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            f"--exit-on-error={str(exit_on_error).lower()}",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            # shared-memory regions of concurrent servers must not collide
            f"--backend-config=python,shm-region-prefix-name=cnnserve_{os.getpid()}_{grpc}_",
            *extra_args,
        ]
        proc = launch(cmd, log_path, env=install.env(), cwd=log_path.parent)
        server = PeerServer(
            peer="triton",
            proc=proc,
            grpc_address=f"127.0.0.1:{grpc}",
            http_url=f"http://127.0.0.1:{http}",
            metrics_url=f"http://127.0.0.1:{metrics}/metrics",
            log_path=log_path,
            models=sorted(p.name for r in repos for p in Path(r).iterdir() if p.is_dir()),
        )
        if wait is None:
            return server
        try:
            # Triton loads the whole repository before it listens: once live, every model has been tried
            server.wait_http("/v2/health/live", ready_timeout, "live")
        except PeerUnavailable:
            server.stop()
            lost_port = "address already in use" in server.log().lower()
            if not lost_port or attempt == START_ATTEMPTS:
                raise
            continue
        if wait == "ready" and not http_ok(server.http_url + "/v2/health/ready"):
            failed = server.unready_models()
            server.stop()
            raise PeerUnavailable(f"triton did not load {failed}; log {log_path}:\n{server.log_tail()}")
        return server
    raise AssertionError("unreachable")


def serve_onnx(
    models: Sequence[OnnxModel],
    work_dir: Path,
    *,
    install: TritonInstall | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 0,
    instances: int = 1,
    intra_op_threads: int | None = None,
    ready_timeout: float = 180.0,
) -> PeerServer:
    """Triton serving each ONNX file through a Python-backend model (onnxruntime CPU) with the dynamic
    batcher; returns once every model is ready. Writes ``work_dir/triton_repository`` and ``triton.log``."""
    install = install or ensure()
    work_dir = Path(work_dir)
    repo = work_dir / "triton_repository"
    for model in models:
        write_python_model(
            model,
            repo,
            install,
            preferred_batch_sizes=preferred_batch_sizes,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            intra_op_threads=intra_op_threads,
        )
    return start(install, repo, log_path=work_dir / "triton.log", ready_timeout=ready_timeout)
