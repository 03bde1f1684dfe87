"""onnxruntime: CPU execution provider here; CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from service.backends.base import Backend
from service.errors import ModelLoadError

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(
        self,
        path: Path,
        data: bytes,
        *,
        input_name: str,
        output_name: str,
        device: str = "cpu",
        threads: int = 0,
        spinning: bool = True,
        accelerator: str | None = None,
        fp16: bool = False,
        cache_key: str = "model",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # batch failures are logged by the batcher, with the model name
        # Spinning intra-op threads pick up the next op without a wake-up (ResNet-18 on 2 cores: ~20% faster)
        # but burn CPU while waiting; the config parameter allow_spinning "0" turns it off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if threads > 0:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise ModelLoadError(
                    f"{path}: device {device} requested but onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu)"
                )
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            if accelerator == "tensorrt":
                if "TensorrtExecutionProvider" in available:
                    cache = Path(tempfile.gettempdir()) / "cnnserve-trt-cache" / cache_key
                    cache.mkdir(parents=True, exist_ok=True)
                    trt_options = {
                        "device_id": index,
                        "trt_fp16_enable": fp16,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    }
                    providers.insert(0, ("TensorrtExecutionProvider", trt_options))
                else:
                    log.warning(
                        "%s: TensorRT execution provider requested but not available; using CUDA", path
                    )
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {e}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if input_name not in inputs:
            raise ModelLoadError(f"{path} has inputs {inputs}, but the config names input {input_name!r}")
        if output_name not in outputs:
            raise ModelLoadError(f"{path} has outputs {outputs}, but the config names output {output_name!r}")
        self.input_name, self.output_names = input_name, [output_name]
        self.device = device
        self.threads = threads
        self.providers = self.session.get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names, {self.input_name: batch})[0]

    @property
    def label(self) -> str:
        if "TensorrtExecutionProvider" in self.providers:
            return "onnxruntime_tensorrt"
        return "onnxruntime_cuda" if "CUDAExecutionProvider" in self.providers else "onnxruntime"

    def describe(self) -> str:
        threads = f", {self.threads} intra-op threads" if self.threads else ""
        return f"onnxruntime on {self.device} ({', '.join(self.providers)}{threads})"
