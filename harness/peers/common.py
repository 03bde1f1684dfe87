"""What both peers share: the error, the model description, the running server, ports, readiness waits."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.ports import free_port, free_ports  # noqa: F401 (the peers import them from here)

LOG_TAIL_LINES = 40


class PeerUnavailable(Exception):
    """A peer server cannot be installed or started here; ``reason`` says why in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class OnnxModel:
    """One ONNX classifier to serve: FP32 ``input_name`` [N, *dims] -> FP32 ``output_name`` [N, classes]."""

    name: str
    path: Path
    dims: tuple[int, ...]
    classes: int
    max_batch_size: int = 32
    input_name: str = "input"
    output_name: str = "logits"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"{self.name}: max_batch_size must be at least 1 (the batch dim is implicit)")
        if not self.dims or any(d < 1 for d in self.dims) or self.classes < 1:
            raise ValueError(f"{self.name}: dims {self.dims} and classes {self.classes} must be positive")

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, *, name: str | None = None, max_batch_size: int = 32
    ) -> OnnxModel:
        """Names and shapes read from the file's graph (the first input and output; batch dim dynamic)."""
        import onnx  # only where the ONNX file is read: the harness runs in the project's environment

        path = Path(path).resolve()
        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]

        def static_dims(value) -> tuple[int, ...]:
            return tuple(d.dim_value for d in value.type.tensor_type.shape.dim[1:])

        (out,) = graph.output[:1]
        in_version_folder = path.parent.name.isdigit()  # <repo>/<model>/<version>/model.onnx
        return cls(
            name=name or (path.parent.parent.name if in_version_folder else path.stem),
            path=path,
            dims=static_dims(inputs[0]),
            classes=static_dims(out)[0],
            max_batch_size=max_batch_size,
            input_name=inputs[0].name,
            output_name=out.name,
        )


PR_SET_PDEATHSIG = 1


def _death_signal_setter() -> Callable[[], None] | None:
    """A function for the child, between fork and exec, that asks Linux to SIGTERM it when the thread
    that started it dies, so no server outlives a crashed test run. libc is resolved here, in the parent:
    loading a library in the child of a threaded process could deadlock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(cmd: Sequence[str], log_path: Path, *, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own (so its helpers can be stopped with it), stdout and
    stderr into ``log_path``. It gets SIGTERM if the calling thread exits first: start servers from a
    thread that outlives them (the main thread, in tests and benchmarks)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_death_signal_setter(),
        )


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class PeerServer:
    """A running peer: its addresses, its log and its process (group). Stop it with ``stop()`` or use it
    as a context manager."""

    peer: str  # "triton" or "mlserver"
    proc: subprocess.Popen
    grpc_address: str  # 127.0.0.1:PORT
    http_url: str  # http://127.0.0.1:PORT
    metrics_url: str | None  # the Prometheus endpoint, None where metrics are off
    log_path: Path
    models: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # how it was configured (MLServer: declared_inputs, ...)
    stop_timeout: float = 15.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def processes(self) -> list[int]:
        """Pids of the server's process group: the server and its helpers (Triton's Python-backend stubs,
        MLServer's inference-pool workers). Linux /proc; empty elsewhere."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
                if int(fields[2]) == self.proc.pid:  # pgrp
                    pids.append(int(stat.parent.name))
        return sorted(pids)

    def repository_index(self) -> list[dict]:
        """The repository extension over HTTP (Triton and MLServer both have it): name, version, state
        and reason of every model the server knows."""
        request = urllib.request.Request(
            self.http_url + "/v2/repository/index", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def unready_models(self) -> dict[str, str] | None:
        """Model name -> reason for every model not READY (None if the server does not answer)."""
        try:
            index = self.repository_index()
        except (OSError, ValueError):
            return None
        return {
            m["name"]: m.get("reason", "") for m in index if m.get("state") not in ("READY", "State.READY")
        }

    def wait_http(
        self,
        path: str,
        timeout: float,
        what: str,
        check: Callable[[PeerServer], str | None] | None = None,
    ) -> None:
        """Until GET ``http_url + path`` answers 200; PeerUnavailable (with the log's tail) if the process
        exits first, ``check`` returns a reason, or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PeerUnavailable(
                    f"{self.peer} exited with {self.proc.returncode} before it was {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if http_ok(self.http_url + path):
                return
            reason = check(self) if check is not None else None
            if reason:
                self.stop()
                raise PeerUnavailable(f"{reason}; log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailable(
                    f"{self.peer} not {what} after {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM to the server's process group, SIGKILL after ``timeout`` s; returns the exit code."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        # helpers of the server (Triton's Python-backend stubs) that outlived it
        self._signal(signal.SIGKILL)
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # the group launch() created, led by our child

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        metrics = self.metrics_url or "off"
        return (
            f"{self.peer} pid {self.proc.pid}: gRPC {self.grpc_address}, HTTP {self.http_url}, "
            f"metrics {metrics}, log {self.log_path}"
        )
