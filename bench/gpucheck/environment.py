"""What the machine has: versions of everything the check imports, and what is missing or too old.

Read from package metadata, before any heavy import, so that a missing wheel is named in the first
seconds (the lent GPU machine has no network: a missing package must travel as a wheel, docs/GPU.md says
how). Floors are the pyproject's where the generated stubs set them (grpcio, protobuf).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def generated_floors() -> dict[str, str]:
    """The grpcio and protobuf versions the checked-in stubs were generated for, read from their text
    (importing them under an older runtime raises)."""
    grpc_stub = (PROTOS / "grpc_service_pb2_grpc.py").read_text()
    messages = (PROTOS / "grpc_service_pb2.py").read_text()
    return {
        "grpcio": re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub).group(1),
        "protobuf": re.search(r"# Protobuf Python Version: ([\d.]+)", messages).group(1),
    }


# distribution -> (import name, floor, why the check needs it)
REQUIRED = {
    "numpy": ("numpy", "1.26", "everything"),
    "grpcio": ("grpc", generated_floors()["grpcio"], "the server and the load tester's generated stubs"),
    "protobuf": ("google.protobuf", generated_floors()["protobuf"], "the generated messages"),
    "pillow": ("PIL", "10.0", "image decoding"),
    "prometheus-client": ("prometheus_client", "0.20", "the server's metrics"),
    "onnxruntime": ("onnxruntime", "1.18", "export validation, the CPU backends"),
    "torch": ("torch", "2.5", "export, the torch backend"),
    "torchvision": ("torchvision", "0.20", "the model family, JPEG decoding on the GPU"),
    "onnx": ("onnx", "1.16", "export"),
    "onnxscript": ("onnxscript", "0.2", "torch's ONNX exporter"),
    "rich": ("rich", "13.0", "export and load-test output"),
    "matplotlib": ("matplotlib", "3.8", "the PNG"),
}
# distribution -> what is lost without it
OPTIONAL = {
    "nvidia-ml-py": "GPU utilization (NVML)",
    "tensorrt": "TensorRT plans (int8 on the GPU)",
    "onnxruntime-gpu": "onnxruntime's CUDA and TensorRT providers",
    "grpcio-reflection": "gRPC server reflection",
    "aiohttp": "the load tester's HTTP client (gRPC is used here)",
    "scikit-learn": "the digits data set (random calibration is used here)",
}


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version: ``2.11.0+cu130`` -> (2, 11, 0), ``1.75.1rc1`` -> (1, 75, 1)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


def installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Environment:
    versions: dict[str, str | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # required, absent or below the floor: fatal
    absent: list[str] = field(default_factory=list)  # optional, with what is lost
    gpu: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"versions": self.versions, "missing": self.missing, "absent": self.absent, "gpu": self.gpu}


def survey(need_cuda: bool) -> Environment:
    """Versions and gaps; the GPU as torch sees it (imported last, and only if present)."""
    env = Environment(versions={"python": platform.python_version()})
    for distribution, (_, floor, why) in REQUIRED.items():
        version = installed(distribution)
        if version is None and distribution == "onnxruntime":
            version = installed("onnxruntime-gpu")
        env.versions[distribution] = version
        if version is None:
            env.missing.append(f"{distribution}>={floor} is not installed (needed for {why})")
        elif _release(version) < _release(floor):
            env.missing.append(f"{distribution} {version} is older than {floor} (needed for {why})")
    for distribution, lost in OPTIONAL.items():
        env.versions[distribution] = version = installed(distribution)
        if version is None:
            env.absent.append(f"{distribution}: {lost}")
    if env.versions.get("torch"):
        env.gpu = gpu_facts()
        if need_cuda and not env.gpu.get("name"):
            env.missing.append(f"no CUDA GPU: {env.gpu.get('reason')}")
    return env


def gpu_facts() -> dict:
    import torch

    facts: dict = {"torch_cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        facts["reason"] = f"torch {torch.__version__} sees no CUDA GPU"
        return facts
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    facts.update(
        name=torch.cuda.get_device_name(0),
        capability=f"{major}.{minor}",
        memory_gib=round(props.total_memory / 2**30, 1),
        multiprocessors=props.multi_processor_count,
        cudnn=torch.backends.cudnn.version(),
    )
    try:
        import onnxruntime

        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return facts
