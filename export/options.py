"""The parameters of one export, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export import calibration as cal
from export.errors import ExportError
from export.int8 import CALIBRATION_METHODS
from export.onnx_export import DEFAULT_OPSET, MIN_OPSET
from export.tensorrt import TENSORRT_MODES
from modelrepo.batching import DEFAULT_LATENCY_BUDGET_MS

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_CALIB_SAMPLES = 256
DEFAULT_MAX_INT8_DROP = 1.0  # accuracy points, checked where labels exist and weights are trained


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export.export_model` takes besides the model name (the CLI's flags, one for one)."""

    weights: str = "random"  # random (seeded), imagenet, or a checkpoint path
    fp16: bool = False
    int8: bool = False
    calib: str = cal.DIGITS
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = "entropy"
    eval_data: str = "auto"
    eval_samples: int | None = None
    repo: Path = Path("model_repository")
    version: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    opset: int = DEFAULT_OPSET
    force: bool = False  # replace an existing version
    tensorrt: str = "auto"
    torch: bool = True  # also write torch.export programs (fp32, fp16) for the torch backend
    max_int8_drop: float = DEFAULT_MAX_INT8_DROP
    seed: int = 0
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS  # the batching fitted to the measured latencies

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo", Path(self.repo))
        if self.max_batch_size < 1:
            self._bad("max_batch_size", f"must be at least 1, got {self.max_batch_size}")
        if self.version < 1:
            self._bad("version", f"must be a positive integer, got {self.version}")
        if self.opset < MIN_OPSET:
            self._bad("opset", f"must be >= {MIN_OPSET} (the torch.export-based exporter's minimum)")
        if self.calib_samples < 1:
            self._bad("calib_samples", f"must be at least 1, got {self.calib_samples}")
        if self.eval_samples is not None and self.eval_samples < 1:
            self._bad("eval_samples", f"must be at least 1, got {self.eval_samples}")
        if self.calib_method not in CALIBRATION_METHODS:
            self._bad(
                "calib_method", f"must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calib_method!r}"
            )
        if not self.latency_budget_ms > 0:
            self._bad("latency_budget_ms", f"must be > 0 milliseconds, got {self.latency_budget_ms}")
        if self.tensorrt not in TENSORRT_MODES:
            self._bad("tensorrt", f"must be one of {', '.join(TENSORRT_MODES)}, got {self.tensorrt!r}")

    @staticmethod
    def _bad(option: str, problem: str) -> None:
        raise ExportError(f"{{option}} {problem}", option=option)

    @property
    def precisions(self) -> list[str]:
        return ["fp32"] + ["fp16"] * self.fp16 + ["int8"] * self.int8
