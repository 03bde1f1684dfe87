"""``python -m export MODEL``: ONNX fp32 / fp16 / int8 and TensorRT plans, checked, in Triton's layout.

``export_model(...)`` is the Python API (the CLI is a thin wrapper over it).
"""

from export.errors import (
    CalibrationError,
    ExportError,
    TensorRTUnavailableError,
    ValidationError,
    VersionExistsError,
)
from export.pipeline import ExportResult, WrittenEntry, export_model

__all__ = [
    "CalibrationError",
    "ExportError",
    "ExportResult",
    "TensorRTUnavailableError",
    "ValidationError",
    "VersionExistsError",
    "WrittenEntry",
    "export_model",
]
