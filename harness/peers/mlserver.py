"""Seldon MLServer as a peer: ``mlserver`` 1.7.1 in a venv of its own, serving ONNX files through a small
custom runtime (``mlserver_runtime.py``: onnxruntime CPU), since MLServer has no maintained ONNX runtime.

    install = ensure()
    with serve_onnx([OnnxModel.from_onnx(path)], work_dir, declare_inputs=False) as server:
        server.grpc_address                 # KServe v2 gRPC; server.http_url is its REST API

One process (``parallel_workers: 0``: MLServer's inference pool off, the model runs in the server's event
loop), adaptive batching off unless asked, metrics on a port of their own or off.
"""

from __future__ import annotations

import json
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
    free_port,
    free_ports,
    http_ok,
    launch,
)
from harness.peers.install import BasePython, VenvSpec, ensure_venv

MLSERVER = "mlserver==1.7.1"
# uvloop 0.22 made asyncio.get_event_loop() raise where no loop runs yet, which MLServer 1.7.1's inference
# pool workers call at start: with a newer uvloop, parallel_workers >= 1 loads no model.
REQUIREMENTS = (MLSERVER, "onnxruntime==1.22.1", "uvloop<0.22")
LAYOUT = 1
RUNTIME_FILE = Path(__file__).with_name("mlserver_runtime.py")
RUNTIME_MODULE = "cnnserve_onnx_runtime"
IMPLEMENTATION = f"{RUNTIME_MODULE}.OnnxRuntimeModel"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
START_ATTEMPTS = 3


@dataclass(frozen=True)
class MLServerInstall:
    venv: Path
    python: BasePython
    record: dict

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env = {k: v for k, v in env.items() if not k.startswith("MLSERVER_")}  # settings come from files
        env.update(VIRTUAL_ENV=str(self.venv), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", os.defpath)])
        return env


def _post_install(spec: VenvSpec) -> dict:
    script = "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"
    done = subprocess.run(
        [str(spec.path / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"mlserver does not import in {spec.path}:\n{done.stderr[-2000:]}")
    mlserver_version, ort_version = done.stdout.split()
    return {"mlserver": mlserver_version, "onnxruntime": ort_version}


def ensure(log: Callable[[str], None] = lambda line: None) -> MLServerInstall:
    """The MLServer venv (built on first use); PeerUnavailable with the reason otherwise."""
    python = BasePython.find()
    spec = VenvSpec("mlserver", REQUIREMENTS, python, layout=LAYOUT)
    record = ensure_venv(spec, post_install=_post_install, log=log)
    return MLServerInstall(spec.path, python, record)


def model_settings(
    model: OnnxModel,
    *,
    declare_inputs: bool = True,
    adaptive_batch_size: int = 0,
    adaptive_batch_time_s: float = 0.0,
    intra_op_threads: int | None = None,
) -> dict:
    """model-settings.json for ``model``. ``declare_inputs``: list the input (and output) tensors, so
    ModelMetadata names their shapes; False leaves them out, as a bare MLServer model has them. Adaptive
    batching is on only with ``adaptive_batch_size`` > 1 and ``adaptive_batch_time_s`` > 0."""
    settings: dict = {
        "name": model.name,
        "implementation": IMPLEMENTATION,
        "platform": "onnxruntime",
        "parameters": {
            "uri": "./model.onnx",
            "version": "1",
            "extra": {
                "intra_op_threads": intra_op_threads or available_cpus(),
                "input_name": model.input_name,
                "output_name": model.output_name,
            },
        },
    }
    if declare_inputs:
        settings["inputs"] = [{"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.dims]}]
        settings["outputs"] = [{"name": model.output_name, "datatype": "FP32", "shape": [-1, model.classes]}]
    if adaptive_batch_size > 1 and adaptive_batch_time_s > 0:
        settings["max_batch_size"] = adaptive_batch_size
        settings["max_batch_time"] = adaptive_batch_time_s
    elif adaptive_batch_size > 1 or adaptive_batch_time_s > 0:
        raise ValueError("adaptive batching needs both adaptive_batch_size > 1 and adaptive_batch_time_s > 0")
    return settings


def write_model(model: OnnxModel, root: Path, **settings) -> Path:
    """``root/<name>/{model-settings.json, model.onnx (a link), cnnserve_onnx_runtime.py}``."""
    folder = Path(root) / model.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(model_settings(model, **settings), indent=2))
    shutil.copyfile(RUNTIME_FILE, folder / f"{RUNTIME_MODULE}.py")
    onnx = folder / "model.onnx"
    onnx.unlink(missing_ok=True)
    onnx.symlink_to(Path(model.path).resolve())
    return folder


def server_settings(
    root: Path, *, http: int, grpc: int, metrics: int | None, parallel_workers: int = 0
) -> dict:
    """settings.json: 127.0.0.1 only; ``metrics`` None turns the metrics endpoint off. MLServer 1.7.1
    starts its inference pool only for a truthy ``parallel_workers`` (its default is 1): 0 keeps the
    model in the server process."""
    return {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "grpc_max_message_length": MAX_MESSAGE_BYTES,
        "metrics_endpoint": "/metrics" if metrics else None,
        "metrics_port": metrics or free_port(),  # unused when off, but must not clash with a default
        "parallel_workers": parallel_workers,
        "model_repository_root": str(Path(root).resolve()),
        "load_models_at_startup": True,
    }


def start(
    install: MLServerInstall,
    root: Path,
    *,
    log_path: Path,
    metrics: bool = True,
    parallel_workers: int = 0,
    ready_timeout: float = 120.0,
) -> PeerServer:
    """``mlserver start ROOT`` (ROOT holds model folders with model-settings.json) on free 127.0.0.1 ports;
    writes ``ROOT/settings.json`` and returns once every model is ready."""
    root = Path(root).resolve()
    log_path = Path(log_path)
    for attempt in range(1, START_ATTEMPTS + 1):
        http, grpc, spare = free_ports(3)
        metrics_port = spare if metrics else None
        settings = server_settings(
            root, http=http, grpc=grpc, metrics=metrics_port, parallel_workers=parallel_workers
        )
        (root / "settings.json").write_text(json.dumps(settings, indent=2))
        cmd = [str(install.venv / "bin" / "mlserver"), "start", str(root)]
        options = {**_options(root), "parallel_workers": parallel_workers}
        server = PeerServer(
            peer="mlserver",
            proc=launch(cmd, log_path, env=install.env(), cwd=root),
            grpc_address=f"127.0.0.1:{grpc}",
            http_url=f"http://127.0.0.1:{http}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
            log_path=log_path,
            models=sorted(options["declared_inputs"]),
            options=options,
        )
        try:
            server.wait_http("/v2/health/ready", ready_timeout, "ready", check=_failed_models)
        except PeerUnavailable:
            server.stop()
            if "address already in use" not in server.log().lower() or attempt == START_ATTEMPTS:
                raise
            continue
        # a model that fails to load is dropped from the registry, and the server is ready without it
        missing = [m for m in server.models if not http_ok(f"{server.http_url}/v2/models/{m}/ready")]
        if missing:
            server.stop()
            raise PeerUnavailable(f"mlserver did not load {missing}; log {log_path}:\n{server.log_tail()}")
        return server
    raise AssertionError("unreachable")


def _options(root: Path) -> dict:
    """Per model, as its model-settings.json says: whether ModelMetadata lists the inputs, and the adaptive
    batching (max_batch_size, max_batch_time) or None."""
    declared, batching = {}, {}
    for path in sorted(root.glob("*/model-settings.json")):
        settings = json.loads(path.read_text())
        name = settings.get("name") or path.parent.name
        declared[name] = bool(settings.get("inputs"))
        size, time_s = settings.get("max_batch_size", 0), settings.get("max_batch_time", 0.0)
        batching[name] = (size, time_s) if size > 1 and time_s > 0 else None
    return {"declared_inputs": declared, "adaptive_batching": batching}


def _failed_models(server: PeerServer) -> str | None:
    """A reason when a model has failed to load while the server waits to be ready."""
    unready = server.unready_models() or {}
    failed = {name: reason for name, reason in unready.items() if reason}
    return f"mlserver did not load {failed}" if failed else None


def serve_onnx(
    models: Sequence[OnnxModel],
    work_dir: Path,
    *,
    install: MLServerInstall | None = None,
    declare_inputs: bool = True,
    adaptive_batch_size: int = 0,
    adaptive_batch_time_s: float = 0.0,
    intra_op_threads: int | None = None,
    metrics: bool = True,
    parallel_workers: int = 0,
    ready_timeout: float = 180.0,
) -> PeerServer:
    """MLServer serving each ONNX file with the onnxruntime runtime; writes ``work_dir/mlserver_models``
    and ``work_dir/mlserver.log``."""
    install = install or ensure()
    root = Path(work_dir) / "mlserver_models"
    for model in models:
        write_model(
            model,
            root,
            declare_inputs=declare_inputs,
            adaptive_batch_size=adaptive_batch_size,
            adaptive_batch_time_s=adaptive_batch_time_s,
            intra_op_threads=intra_op_threads,
        )
    return start(
        install,
        root,
        log_path=Path(work_dir) / "mlserver.log",
        metrics=metrics,
        parallel_workers=parallel_workers,
        ready_timeout=ready_timeout,
    )
